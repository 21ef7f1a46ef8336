"""Refinement: correct the additive loss model from measured losses, re-solve, repeat.

Every allocator adds up per-layer scores as if layers did not interact. They do, so the sum
misprices a group of layers by a factor that depends on where the rest of the model sits.
:func:`refine` measures it: solve; measure the allocation's loss; for each *group* of layers
(one module kind, or one block) measure the allocation with that group moved to the other
extreme (raised to its highest option, or lowered to its lowest when it is already there);
rescale the group's scores by measured ÷ predicted change; re-solve; measure; repeat until a
round no longer lowers the measured loss beyond its interval (95 %, Student-t with windows − 1
degrees of freedom: 2.13 s.e. over 16 windows). Measuring is the caller's
(:data:`Measure`): this module never touches a model, so each step is tested on synthetic
losses with a known optimum.

The first round's scale is one global factor (measured ÷ predicted of the first allocation), so
every corrected prediction is in the measured loss's units (KLD, nats per token) and sits on
the same axis as the measurement.

**Selected on one set of windows, scored on another.** ``measure`` is what refine selects on
(calibration windows); ``score``, when given, measures every round's allocation on windows it
never selects on (held-out), so the answer — the round best on the selection windows — carries
an unbiased figure: the lowest of several noisy measurements on the windows that chose it is
optimistic, its held-out one is not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mixviz.allocation.problem import Problem, budget_bits
from mixviz.allocation.strategies import allocate_bits
from mixviz.errors import MixvizError

GROUPINGS = ("kind", "block", "context")
MAX_STEP = 8.0  # one round changes a group's scale by at most this factor either way


@dataclass(frozen=True)
class Measurement:
    """A measured loss: its mean, standard error and the per-window values it came from
    (the same windows every time, so two measurements can be compared pairwise)."""

    mean: float
    se: float
    windows: tuple[float, ...] = ()

    @property
    def df(self) -> int | None:
        """Degrees of freedom of its interval: windows − 1 (None: no windows, se taken as
        known)."""
        return len(self.windows) - 1 if len(self.windows) > 1 else None

    def minus(self, other: Measurement) -> tuple[float, float]:
        """The paired difference ``self − other`` and its standard error over the windows.

        >>> a = Measurement(2.0, 0.5, (1.0, 3.0)); b = Measurement(1.5, 0.5, (0.5, 2.5))
        >>> a.minus(b)
        (0.5, 0.0)
        """
        d = [x - y for x, y in zip(self.windows, other.windows, strict=True)]
        if len(d) < 2:
            return self.mean - other.mean, math.hypot(self.se, other.se)
        mean = sum(d) / len(d)
        var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
        return mean, math.sqrt(var / len(d))


def t95(df: float | None) -> float:
    """The two-sided 95 % Student-t quantile (normal for ``df=None``: a known se).

    >>> round(t95(15), 3), round(t95(None), 3)
    (2.131, 1.96)
    """
    from scipy.stats import norm, t

    return float(norm.ppf(0.975) if df is None else t.ppf(0.975, df))


Measure = Callable[[dict[str, str]], Measurement]
"""Quantize to an option per layer, return the measured loss (never on evaluation text)."""


@dataclass(frozen=True)
class Round:
    """One solve and its measurement; ``scales`` are the group factors it solved with."""

    index: int
    layers: dict[str, str]
    avg_bits: float
    predicted: float  # the plain additive prediction (the profile's own units)
    corrected: float  # with this round's scales (in the measured loss's units)
    measured: float
    measured_se: float
    scales: dict[str, float]
    probes: int  # measurements this round made, its own included
    gain: float | None = None  # paired change of measured loss against the best before it
    gain_se: float | None = None
    avg_bits_no_scale: float | None = None
    measured_df: int | None = None  # the t interval's degrees of freedom (windows − 1)
    gain_df: int | None = None
    heldout: float | None = None  # the same allocation on windows never selected on
    heldout_se: float | None = None
    heldout_df: int | None = None

    def half(self, which: str = "measured") -> float | None:
        """The 95 % t half-width of ``measured``, ``gain`` or ``heldout`` (None: not measured).

        >>> r = Round(0, {}, 4.0, 1.0, 1.0, 0.5, 0.01, {}, 1, measured_df=15)
        >>> round(r.half(), 4), r.half("heldout")
        (0.0213, None)
        """
        se, df = getattr(self, f"{which}_se"), getattr(self, f"{which}_df")
        return None if se is None else t95(df) * se


@dataclass(frozen=True)
class Refinement:
    """All rounds, which was best (lowest measured loss on the selection windows) and why
    refining stopped; each round's held-out KLD, where scored, is on windows never selected
    on."""

    rounds: tuple[Round, ...]
    best: int
    stopped: str
    grouping: str
    seconds: float
    budget_avg_bits: float
    measurements: int = field(default=0)

    @property
    def layers(self) -> dict[str, str]:
        """The best round's allocation."""
        return self.rounds[self.best].layers

    def to_dict(self) -> dict:
        return {
            "format": "mixviz.refinement",
            "version": 1,
            "budget_avg_bits": self.budget_avg_bits,
            "grouping": self.grouping,
            "best": self.best,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "measurements": self.measurements,
            "interval": "95 %, Student-t, df = windows - 1 (paired for the gain)",
            "selected_on": "calibration windows (measured)",
            "scored_on": "held-out windows never selected on (heldout)",
            "best_measured": self.rounds[self.best].measured,
            "best_heldout": self.rounds[self.best].heldout,
            "rounds": [vars(r).copy() for r in self.rounds],
        }


# --------------------------------------------------------------------------- pieces


def groups_of(problem: Problem, grouping: str = "kind") -> dict[str, tuple[int, ...]]:
    """Free (unpinned) units of ``problem`` by group: module kind or block of their first layer
    (``context`` rescales nothing by group: no groups).

    Groups are over units, so layers that must share an option (q/k/v) stay together.
    """
    if grouping not in GROUPINGS:
        raise MixvizError(f"unknown grouping {grouping!r}; use {' or '.join(GROUPINGS)}")
    if grouping == "context":
        return {}
    out: dict[str, list[int]] = {}
    for i, u in enumerate(problem.units):
        if u.pinned or len(u.options) < 2:
            continue
        first = u.names[0]
        key = problem.kind[first] if grouping == "kind" else f"block {problem.block[first]}"
        out.setdefault(key, []).append(i)
    return {k: tuple(v) for k, v in out.items()}


def scaled(problem: Problem, scale: dict[str, float], groups: dict[str, tuple[int, ...]]):
    """``problem`` with every free unit's scores times its group's factor (pinned units and
    ungrouped ones take the ``"*"`` factor, 1 when absent)."""
    factor = {i: scale.get(g, 1.0) for g, units in groups.items() for i in units}
    base = scale.get("*", 1.0)
    units, scores = [], dict(problem.scores)
    for i, u in enumerate(problem.units):
        f = factor.get(i, base)
        units.append(replace(u, score=tuple(s * f for s in u.score)))
        for n in u.names:
            for o in problem.options:
                if (n, o) in scores and scores[(n, o)] is not None:
                    scores[(n, o)] = problem.scores[(n, o)] * f
    return replace(problem, units=tuple(units), scores=scores)


def predicted(problem: Problem, choice: dict[str, str]) -> float:
    """The additive prediction of ``choice`` on ``problem``: Σ of its layers' scores."""
    return float(sum(problem.scores[(n, o)] for n, o in choice.items()))


def moved(problem: Problem, choice: dict[str, str], units: tuple[int, ...]) -> dict[str, str]:
    """``choice`` with ``units`` at the other extreme: all at their highest-cost option, or all
    at their lowest when every one of them is already highest."""
    picked = {i: problem.units[i] for i in units}
    at_top = all(choice[u.names[0]] == u.options[-1] for u in picked.values())
    out = dict(choice)
    for u in picked.values():
        target = u.options[0] if at_top else u.options[-1]
        out.update({n: target for n in u.names})
    return out


def rescale(
    step_measured: float, step_predicted: float, se: float, df: int | None = None
) -> float | None:
    """The factor that makes the prediction of one move match its measurement, or None when
    the move says nothing: a measured change inside its 95 % t interval (``t95(df)·se``),
    opposite signs, or no prediction.

    >>> rescale(0.2, 0.1, 0.01)
    2.0
    >>> rescale(0.01, 0.1, 0.01) is None
    True
    """
    if step_predicted == 0 or abs(step_measured) <= t95(df) * se:
        return None
    ratio = step_measured / step_predicted
    if ratio <= 0:
        return None
    return min(max(ratio, 1 / MAX_STEP), MAX_STEP)


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class RefineSettings:
    """How to refine: rounds at most, the grouping of layers, and the budget."""

    avg_bits: float
    rounds: int = 3
    grouping: str = "kind"

    def __post_init__(self):
        if not 1 <= self.rounds <= 50:
            raise MixvizError(f"rounds must be 1..50 (got {self.rounds})")
        if self.grouping not in GROUPINGS:
            raise MixvizError(f"unknown grouping {self.grouping!r}; use {' or '.join(GROUPINGS)}")


Reprofile = Callable[[dict[str, str]], Problem]
"""The problem re-scored around an allocation (``profile --around`` that recipe)."""


def refine(
    problem: Problem,
    settings: RefineSettings,
    measure: Measure,
    progress: Callable[[str], None] | None = None,
    reprofile: Reprofile | None = None,
    score: Measure | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> Refinement:
    """Solve, measure, correct the additive model, re-solve — ``settings.rounds`` corrections
    at most; stop early when a round's allocation is the one before, or its measured loss is
    not lower than the best so far beyond the paired 95 % t interval. ``score`` (optional)
    measures each round's allocation on held-out windows, never used to select; ``on_round``
    is handed each round as it finishes.

    The correction, by ``settings.grouping``: ``kind``/``block`` rescale each group's scores by
    measured ÷ predicted change of moving it (one measurement per group); ``context`` scores
    the layers afresh around the allocation just measured (``reprofile``: the metric at that
    operating point) and solves on those, with one global factor to the measured units."""
    if settings.grouping == "context" and reprofile is None:
        raise MixvizError("refining in context needs a way to profile around an allocation")
    t0 = time.perf_counter()
    budget = budget_bits(problem, settings.avg_bits)
    groups = groups_of(problem, settings.grouping)
    say = progress or (lambda msg: None)
    choice = allocate_bits(problem, budget).layers
    say("round 0: measuring the additive optimum")
    m = measure(choice)
    p0 = predicted(problem, choice)
    f0 = m.mean / p0 if p0 > 0 and m.mean > 0 else 1.0  # the profile's units → measured units
    scale = {**{g: f0 for g in groups}, "*": f0}
    first = _round(0, problem, scaled(problem, scale, groups), choice, m, scale, 1)
    rounds = [replace(first, **_held(score, choice, say, 0))]
    done = on_round or (lambda r: None)
    done(rounds[0])
    best, best_m, count, stopped = 0, m, 1, f"{settings.rounds} rounds done"
    for k in range(1, settings.rounds + 1):
        if reprofile is not None and settings.grouping == "context":
            say(f"round {k}: profiling around the allocation")
            around = reprofile(choice)
            p = predicted(around, choice)
            scale, probes = {"*": m.mean / p if p > 0 and m.mean > 0 else 1.0}, 0
            corrected = scaled(around, scale, {})
        else:
            scale, probes = _correct(problem, choice, m, scale, groups, measure, say, k)
            corrected = scaled(problem, scale, groups)
        count += probes
        new = allocate_bits(corrected, budget).layers
        if new == choice:
            stopped = f"round {k}: the corrected model keeps the same allocation"
            break
        say(f"round {k}: measuring the re-solved allocation")
        m_new = measure(new)
        count += 1
        gain, se = m_new.minus(best_m)
        gain_df = m_new.df if m_new.df == best_m.df else None
        r = _round(k, problem, corrected, new, m_new, scale, probes + 1, (gain, se, gain_df))
        rounds.append(replace(r, **_held(score, new, say, k)))
        done(rounds[-1])
        choice, m = new, m_new
        if gain < -t95(gain_df) * se:
            best, best_m = k, m_new
        else:
            stopped = f"round {k} did not lower the measured loss beyond its interval"
            break
    return Refinement(
        tuple(rounds),
        best,
        stopped,
        settings.grouping,
        time.perf_counter() - t0,
        settings.avg_bits,
        count,
    )


def _correct(problem, choice, m, scale, groups, measure, say, k):
    """Each group moved once from ``choice``; its scale times measured ÷ predicted change."""
    current = scaled(problem, scale, groups)
    new, probes = dict(scale), 0
    for g, units in groups.items():
        alt = moved(problem, choice, units)
        if alt == choice:
            continue
        say(f"round {k}: measuring {g} moved")
        m_alt = measure(alt)
        step, se = m_alt.minus(m)
        probes += 1
        df = m.df if m_alt.df == m.df else None
        factor = rescale(step, predicted(current, alt) - predicted(current, choice), se, df)
        if factor is not None:
            new[g] = scale[g] * factor
    return new, probes


def _held(score: Measure | None, choice: dict[str, str], say, k: int) -> dict:
    """A round's held-out fields: ``choice`` measured on windows never selected on."""
    if score is None:
        return {}
    say(f"round {k}: scoring on held-out windows")
    held = score(choice)
    return {"heldout": held.mean, "heldout_se": held.se, "heldout_df": held.df}


def _round(k, problem, corrected, choice, m, scale, probes, gain=(None, None, None)) -> Round:
    n = problem.total_numel
    return Round(
        k,
        dict(choice),
        sum(problem.bits[(name, o)] for name, o in choice.items()) / n,
        predicted(problem, choice),
        predicted(corrected, choice),
        m.mean,
        m.se,
        dict(scale),
        probes,
        gain[0],
        gain[1],
        sum(problem.bits_no_scale[(name, o)] for name, o in choice.items()) / n,
        m.df,
        gain[2],
    )
