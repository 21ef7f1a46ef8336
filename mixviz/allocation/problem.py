"""The allocation problem, its integer bit budget, and the answer.

The problem is a multiple-choice knapsack: pick one option per *unit* (a layer, or a group of
layers that must share a format such as q/k/v) to minimise the summed sensitivity score with
total bits ≤ budget. :class:`Problem` holds the layers, their costs both ways (with and without
scale bits) and scores, and the units; :func:`budget_bits` turns an average into the exact
integer budget; :class:`Allocation` is one option per layer with what it achieves, built by
:func:`make_allocation`. The solvers live in :mod:`~mixviz.allocation.strategies`.

>>> problem = Problem.from_profile(profile)                       # doctest: +SKIP
>>> budget_bits(problem, 5.0)                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction

from mixviz.errors import MixvizError
from mixviz.models.schemes import SCHEMES, get_scheme, layer_bits


@dataclass(frozen=True)
class Unit:
    """Layers that take one option together, with each option's summed cost and score."""

    names: tuple[str, ...]
    options: tuple[str, ...]  # sorted by cost
    cost: tuple[int, ...]  # bits in the chosen accounting
    score: tuple[float, ...]
    pinned: bool = False


@dataclass(frozen=True)
class Problem:
    """Everything the solvers need: layers, their blocks/kinds/sizes, units and costs."""

    layers: tuple[str, ...]
    block: dict[str, int | None]
    kind: dict[str, str]
    numel: dict[str, int]
    bits: dict[tuple[str, str], int]  # with scale bits
    bits_no_scale: dict[tuple[str, str], int]
    scores: dict[tuple[str, str], float]
    options: tuple[str, ...]  # profile options, sorted by bits
    units: tuple[Unit, ...]
    ignore_scale_bits: bool = False
    profile_key: str = ""
    metric: str = ""
    pins: dict[str, str] = field(default_factory=dict)
    target: str = ""
    """The runtime whose rules the problem carries (:mod:`mixviz.models.targets`), or ``""``."""
    model: str = ""
    model_hash: str = ""

    @property
    def total_numel(self) -> int:
        return sum(self.numel.values())

    def feasible_bits(self) -> tuple[int, int]:
        """The lowest and highest total bits any allocation can reach (exact integers)."""
        return sum(min(u.cost) for u in self.units), sum(max(u.cost) for u in self.units)

    def feasible_range(self) -> tuple[float, float]:
        """The lowest and highest average bits any allocation can reach."""
        lo, hi = self.feasible_bits()
        return lo / self.total_numel, hi / self.total_numel

    def cost(self, name: str, option: str) -> int:
        table = self.bits_no_scale if self.ignore_scale_bits else self.bits
        return table[(name, option)]

    def expand(self, picked: list[int]) -> dict[str, str]:
        """Per-unit option indices (in :attr:`units` order) → the option of every layer."""
        return {n: u.options[j] for u, j in zip(self.units, picked, strict=True) for n in u.names}

    @classmethod
    def from_profile(
        cls,
        profile,
        *,
        ignore_scale_bits: bool = False,
        shared: list[str] | None = None,
        pins: dict[str, str] | None = None,
        include_lm_head: bool = False,
        target: str | None = None,
    ) -> Problem:
        """Build the allocation problem from a :class:`~mixviz.sensitivity.profile.Profile`.

        ``target`` (``vllm``, ``sglang``, ``llamacpp``, ``transformers``) adds that runtime's
        rules: its fused groups share one option, and a layer is offered only the options the
        runtime serves at its width."""
        layers = [
            x
            for x in profile.layers
            if x.block is not None or (include_lm_head and x.kind == "lm_head")
        ]
        if include_lm_head and not any(x.kind == "lm_head" for x in layers):
            raise MixvizError(
                "this profile has no lm_head scores: profile with "
                "--include-lm-head to put lm_head in the budget"
            )
        options = tuple(profile.options)
        bits, nos, scores = {}, {}, {}
        for r in profile.rows:
            bits[(r.layer, r.option)] = r.bits
            nos[(r.layer, r.option)] = r.bits_no_scale
            scores[(r.layer, r.option)] = r.score
        by_name = {x.name: x for x in layers}
        pins = _check_pins(pins, by_name, options)
        tables = _Tables(bits, nos, scores, nos if ignore_scale_bits else bits)
        runtime = None
        if target:
            from mixviz.models.targets import get_runtime

            runtime = get_runtime(target)
            shared = [*(shared or []), *(s for s in runtime.shared if s not in (shared or []))]
            _check_pins_serve(pins, by_name, runtime)
            tables = _served(tables, by_name, runtime)
        if runtime is None or runtime.name != "llamacpp":
            _check_pins_native(pins, by_name, layers)
            tables = _native(tables, by_name)
        units = tuple(
            _unit(group, pins, by_name, options, tables) for group in _groups(layers, shared or [])
        )
        return cls(
            tuple(x.name for x in layers),
            {x.name: x.block for x in layers},
            {x.name: x.kind for x in layers},
            {x.name: x.numel for x in layers},
            bits,
            nos,
            tables.scores,  # without what the target runtime cannot serve
            options,
            units,
            ignore_scale_bits,
            profile.key,
            profile.metric,
            pins,
            runtime.name if runtime else "",
            profile.model,
            profile.model_hash,
        )


def _served(t: _Tables, by_name: dict, runtime) -> _Tables:
    """The tables without the (layer, option) pairs ``runtime`` cannot serve: no score, so no
    unit offers them."""
    scores = {
        (n, o): v
        for (n, o), v in t.scores.items()
        if n not in by_name or not runtime.why_not(get_scheme(o), by_name[n].in_features)
    }
    return _Tables(t.bits, t.nos, scores, t.cost)


def _native(t: _Tables, by_name: dict) -> _Tables:
    """The tables without GGML types where only llama.cpp's fallback takes them (a profile
    scores ``Q4_K`` on a 576-wide row as the ``Q5_0`` llama.cpp writes; only ``--target
    llamacpp`` accepts that substitution)."""
    scores = {
        (n, o): v
        for (n, o), v in t.scores.items()
        if n not in by_name or get_scheme(o).available_for(by_name[n].in_features)
    }
    return _Tables(t.bits, t.nos, scores, t.cost)


def _check_pins_native(pins: dict[str, str], by_name: dict, layers) -> None:
    """A pinned GGML type that only llama.cpp's fallback can take: say how many layers, which,
    the super-block and the fallback, and that ``--target llamacpp`` accepts it."""
    for name, opt in pins.items():
        s = get_scheme(opt)
        if s.ggml and not s.available_for(by_name[name].in_features):
            bad = [x.name for x in layers if not s.available_for(x.in_features)]
            raise MixvizError(
                f"pin {name}={opt}: {s.why_unavailable(by_name[name].in_features)}; "
                f"{len(bad)} layers are like it ({', '.join(bad[:3])}"
                f"{', …' if len(bad) > 3 else ''})"
            )


def _check_pins_serve(pins: dict[str, str], by_name: dict, runtime) -> None:
    for name, opt in pins.items():
        why = runtime.why_not(get_scheme(opt), by_name[name].in_features)
        if why:
            raise MixvizError(f"pin {name}={opt}: {runtime.label} cannot serve it ({why})")


def _check_pins(pins: dict[str, str] | None, by_name: dict, options: tuple[str, ...]):
    """Pins with canonical scheme names, each on an allocated layer and a known option."""
    pins = {k: get_scheme(v).name for k, v in (pins or {}).items()}
    for name, opt in pins.items():
        if name not in by_name:
            raise MixvizError(f"pinned layer {name!r} is not among the allocated layers")
        if opt not in options and opt != "BF16":
            raise MixvizError(
                f"pin {name}={opt}: {opt} is not among the profile's options "
                f"({', '.join(options)}) or BF16"
            )
    return pins


@dataclass(frozen=True)
class _Tables:
    """The per-(layer, option) tables :meth:`Problem.from_profile` fills; ``cost`` is the one
    the budget counts (``bits`` or ``bits_no_scale``)."""

    bits: dict[tuple[str, str], int]
    nos: dict[tuple[str, str], int]
    scores: dict[tuple[str, str], float]
    cost: dict[tuple[str, str], int]


def _unit(group: list[str], pins: dict[str, str], by_name: dict, options, t: _Tables) -> Unit:
    """One unit: the options every member can take (only the pin if one is pinned), by cost.

    A BF16 pin on one member holds its whole group: BF16 rows are added for the members.
    """
    group_pins = {pins[n] for n in group if n in pins}
    if len(group_pins) > 1:
        raise MixvizError(
            f"conflicting pins inside the shared group {', '.join(group)} "
            f"({_split(group, pins, by_name)}): the group takes one option"
        )
    if group_pins == {"BF16"}:
        for name in group:
            if (name, "BF16") not in t.bits:
                x = by_name[name]
                b = layer_bits(SCHEMES["BF16"], x.in_features, x.out_features)
                t.bits[(name, "BF16")] = t.nos[(name, "BF16")] = b
                t.scores[(name, "BF16")] = 0.0
    candidates = list(group_pins) if group_pins else list(options)
    opts = sorted(
        (sum(t.cost[(n, o)] for n in group), sum(t.scores[(n, o)] for n in group), o)
        for o in candidates
        if all(t.scores.get((n, o)) is not None for n in group)
    )
    if not opts:
        raise MixvizError(
            f"no option is available for every layer of {group[0]}"
            + (f" (+{len(group) - 1} shared)" if len(group) > 1 else "")
            + " (the target runtime's rules and group sizes included)"
        )
    return Unit(
        tuple(group),
        tuple(o for _, _, o in opts),
        tuple(c for c, _, _ in opts),
        tuple(s for _, s, _ in opts),
        pinned=bool(group_pins),
    )


def _split(group: list[str], pins: dict[str, str], by_name: dict) -> str:
    """How pins split a group, as a user reads it: ``block 5: q_proj W8A16G64 vs k_proj
    W4A16G64``."""
    by_option: dict[str, list[str]] = {}
    for n in group:
        if n in pins:
            by_option.setdefault(pins[n], []).append(n.rsplit(".", 1)[-1])
    block = by_name[group[0]].block
    said = " vs ".join(f"{'/'.join(names)} {o}" for o, names in by_option.items())
    return f"block {block}: {said}" if block is not None else said


def _groups(layers, shared: list[str]) -> list[list[str]]:
    """Partition layers into units. ``qkv``/``gate_up`` use the fused group of the inventory;
    any other entry is a regex whose matches are tied together within each block.

    >>> # with shared=["qkv"], q/k/v of one block form one unit; o_proj stays alone
    """
    specs = []
    for s in shared:
        s = s.strip()
        if not s:
            continue
        if s in ("qkv", "gate_up"):
            specs.append(("group", s))
        else:
            try:
                specs.append(("regex", re.compile(s)))
            except re.error as e:
                raise MixvizError(f"bad --shared regex {s!r}: {e}") from None
    out: dict[tuple, list[str]] = {}
    for x in layers:
        key: tuple = ("own", x.name)
        for i, (how, what) in enumerate(specs):
            if how == "group" and x.group == what:
                key = ("spec", i, x.block)
                break
            if how == "regex" and what.search(x.name):
                key = ("spec", i, x.block)
                break
        out.setdefault(key, []).append(x.name)
    return list(out.values())


def budget_bits(problem: Problem, avg_bits: float) -> int:
    """The integer bit budget for an average: ``⌊avg · numel⌋``, exactly.

    An average within float tolerance (1e-12 relative) of a whole number of bits is that
    number, so the averages this module reports — the ends of :meth:`Problem.feasible_range`
    included — map back to the bit sums they came from. Outside the feasible range (beyond
    that tolerance) is an error naming the range.

    >>> p = Problem((), {}, {}, {"a": 3}, {}, {}, {}, (), (Unit(("a",), ("X", "Y"), (4, 8),
    ...     (1.0, 0.0)),))
    >>> budget_bits(p, 4 / 3), budget_bits(p, 8 / 3), budget_bits(p, 2.0)
    (4, 8, 6)
    """
    if isinstance(avg_bits, bool) or not isinstance(avg_bits, (int, float)):
        raise MixvizError(f"average bits must be a number, got {avg_bits!r}")
    if not math.isfinite(avg_bits):
        raise MixvizError(f"average bits must be a finite number, got {avg_bits}")
    lo, hi = problem.feasible_bits()
    exact = Fraction(avg_bits) * problem.total_numel
    nearest = round(exact)
    bits = nearest if abs(exact - nearest) <= 1e-12 * max(abs(exact), 1) else math.floor(exact)
    if bits < lo or bits > hi:
        n = problem.total_numel
        raise MixvizError(
            f"average bits {avg_bits:g} is outside the feasible range "
            f"{lo / n:.4f}–{hi / n:.4f} for these options"
        )
    return bits


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """A file size as llama.cpp users write it, in bytes (GB = 10⁹, GiB = 2³⁰).

    >>> parse_size("4.2GB"), parse_size("100 MiB"), parse_size("123")
    (4200000000, 104857600, 123)
    """
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m[2].upper() if m else None
    if m is None or unit not in _UNITS:
        raise MixvizError(f"not a size: {text!r} (e.g. 4.2GB, 300MB, 1.5GiB)")
    return int(float(m[1]) * _UNITS[unit])


def size_budget(
    problem: Problem,
    size_bytes: int,
    other_params: int = 0,
    other_bits: int = 16,
    *,
    overhead_bytes: int | None = None,
) -> float:
    """The average bits (with scale bits) over the allocated layers that make a file of
    ``size_bytes``: what is left after ``overhead_bytes`` (everything else in the file, as
    :mod:`mixviz.models.file_size` prices it), or else after ``other_params`` parameters at
    ``other_bits`` each."""
    if problem.ignore_scale_bits:
        raise MixvizError("a file size counts scale bits: drop --ignore-scale-bits")
    other = overhead_bytes * 8 if overhead_bytes is not None else other_params * other_bits
    left = size_bytes * 8 - other
    if left <= 0:
        raise MixvizError(
            f"{size_bytes / 1e6:.1f} MB does not even hold the rest of the file "
            f"({other / 8e6:.1f} MB outside the allocation)"
        )
    return left / problem.total_numel


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Allocation:
    """One option per layer, its achieved bits both ways and its predicted loss."""

    strategy: str
    budget_avg_bits: float
    avg_bits: float
    avg_bits_no_scale: float
    predicted_loss: float
    layers: dict[str, str]
    seconds: float
    profile_key: str = ""
    metric: str = ""
    ignore_scale_bits: bool = False
    pins: dict[str, str] = field(default_factory=dict)
    model: str = ""
    """The model the profile was measured on, and its hash: a recipe needs nothing else."""
    model_hash: str = ""

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "budget_avg_bits": self.budget_avg_bits,
            "avg_bits": self.avg_bits,
            "avg_bits_no_scale": self.avg_bits_no_scale,
            "predicted_loss": self.predicted_loss,
            "layers": dict(self.layers),
            "seconds": self.seconds,
            "profile_key": self.profile_key,
            "metric": self.metric,
            "ignore_scale_bits": self.ignore_scale_bits,
            "pins": dict(self.pins),
        }


def make_allocation(
    problem: Problem, strategy: str, budget: float, choice: dict[str, str], t0: float
) -> Allocation:
    """The :class:`Allocation` of ``choice`` (an option for every layer) on ``problem``.

    ``budget`` is the requested average bits; ``t0`` the :func:`time.perf_counter` reading when
    solving began (``seconds`` is the time since). Achieved bits are counted both ways, layers
    come in problem order, and the problem's profile key, metric, accounting and pins are kept.
    """
    n = problem.total_numel
    return Allocation(
        strategy=strategy,
        budget_avg_bits=budget,
        avg_bits=sum(problem.bits[(k, o)] for k, o in choice.items()) / n,
        avg_bits_no_scale=sum(problem.bits_no_scale[(k, o)] for k, o in choice.items()) / n,
        predicted_loss=float(sum(problem.scores[(k, o)] for k, o in choice.items())),
        layers={name: choice[name] for name in problem.layers},
        seconds=time.perf_counter() - t0,
        profile_key=problem.profile_key,
        metric=problem.metric,
        ignore_scale_bits=problem.ignore_scale_bits,
        pins=dict(problem.pins),
        model=problem.model,
        model_hash=problem.model_hash,
    )
