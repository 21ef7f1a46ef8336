"""Paired comparisons of two runs of the same model on the same items, with 95 % intervals.

Two runs scored on the same items differ item by item far less than their separate standard
errors suggest (the hard items are hard for both), so comparing them item by item decides what
separate intervals cannot. For an accuracy the difference ``b − a`` of the per-item scores has
mean Δ and standard error ``sd(d) / √n``, and its interval is Student-t's with ``n − 1`` degrees
of freedom (with 0/1 scores McNemar's exact test on the discordant items gives the p-value).
The average accuracy over tasks is a mean of independent task means: its Δ's standard error
is ``√(Σ se_t²) / T`` (df by Welch–Satterthwaite). For KLD the per-token differences are
averaged per window (tokens within a window are correlated) and the interval is that of the
windows' mean (t, windows − 1 df). A run compared with itself gives Δ = 0 with a
zero-width interval; fewer than two paired units give no interval (``—`` and the reason), and
never a significant difference.

>>> d = paired_items({"doc_id": [0, 1, 2, 3], "acc": [1, 0, 1, 1]},
...                  {"doc_id": [0, 1, 2, 3], "acc": [1, 1, 1, 1]}, "acc")
>>> round(d.delta, 2), d.n, d.significant
(0.25, 4, False)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from mixviz.runs.evaluation.stats import t95

Z95 = 1.959963984540054  # Fisher's z of Spearman's ρ only; means take t (:func:`t95`)


@dataclass(frozen=True)
class Paired:
    """``b − a``: mean difference, its standard error, the tokens or items it rests on
    (``n``), McNemar's p-value where it applies, and the t interval's degrees of freedom:
    ``df = units − 1`` (windows for KLD, items for a task; Welch–Satterthwaite for an average
    over tasks). ``why`` says why there is no interval (fewer than two paired units)."""

    delta: float
    se: float
    n: int
    p: float | None = None
    df: float | None = None  # None: a large-sample (normal) interval
    why: str | None = None

    @property
    def lo(self) -> float:
        return self.delta - self._half()

    @property
    def hi(self) -> float:
        return self.delta + self._half()

    def _half(self) -> float:
        return (Z95 if self.df is None else t95(self.df)) * self.se

    @property
    def has_interval(self) -> bool:
        """A finite interval: two paired units or more, and a finite standard error."""
        return self.why is None and math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def significant(self) -> bool:
        """The 95 % interval is finite and excludes zero (and McNemar agrees where it applies).

        >>> Paired(0.5, float("nan"), 1, df=0, why="1 paired item").significant
        False
        """
        if not self.has_interval or self.lo <= 0.0 <= self.hi:
            return False
        return self.p is None or self.p < 0.05

    def reason(self) -> str:
        """Why there is no interval ("" when there is one)."""
        if self.has_interval:
            return ""
        return self.why or "no finite interval"

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [−0.5, +2.9]`` (in points for ``scale=100``), ``*`` when significant;
        ``— (why)`` without an interval.

        >>> Paired(0.012, 0.008, 500, df=499).format()
        '+1.2 [-0.4, +2.8]'
        >>> Paired(0.0, float("nan"), 511, df=0, why="1 paired window: no interval").format()
        '— (1 paired window: no interval)'
        """
        if not self.has_interval:
            return f"— ({self.reason()})"
        f = f"{{:+.{digits}f}}"
        text = f"{f.format(scale * self.delta)} [{f.format(scale * self.lo)}, "
        text += f"{f.format(scale * self.hi)}]"
        return text + (" *" if self.significant else "")

    def to_dict(self) -> dict:
        """JSON-ready: ``delta, se, lo, hi, df, n, p, significant, why`` (NaN → None)."""

        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "delta": num(self.delta),
            "se": num(self.se),
            "lo": num(self.lo),
            "hi": num(self.hi),
            "df": num(self.df),
            "n": self.n,
            "p": num(self.p),
            "significant": self.significant,
            "why": self.reason() or None,
        }


def _unpaired(units: int, unit: str) -> str | None:
    """The reason a mean over ``units`` paired ``unit``s has no interval, or None."""
    if units >= 2:
        return None
    return f"{units} paired {unit}{'' if units == 1 else 's'}: no interval"


def _se_of_mean(d: np.ndarray) -> float:
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def paired_items(a: dict, b: dict, metric: str) -> Paired:
    """``b − a`` for one task's per-item ``metric`` (``{"doc_id": [...], metric: [...]}``),
    over the items both runs scored."""
    ia = {str(i): v for i, v in zip(a["doc_id"], a[metric], strict=True)}
    ib = {str(i): v for i, v in zip(b["doc_id"], b[metric], strict=True)}
    common = [i for i in ia if i in ib]
    if not common:
        return Paired(float("nan"), float("nan"), 0, why="no item scored by both runs")
    x = np.array([ia[i] for i in common], dtype=float)
    y = np.array([ib[i] for i in common], dtype=float)
    d = y - x
    p = None
    if set(np.unique(x)) <= {0.0, 1.0} and set(np.unique(y)) <= {0.0, 1.0}:
        p = mcnemar(int(((x == 0) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum()))
    n = len(d)
    return Paired(float(d.mean()), _se_of_mean(d), n, p, n - 1, _unpaired(n, "item"))


def mcnemar(b_wins: int, a_wins: int) -> float:
    """McNemar's exact two-sided p-value from the discordant counts (1.0 when there are none).

    >>> round(mcnemar(10, 2), 4)
    0.0386
    """
    n = b_wins + a_wins
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b_wins, n, 0.5).pvalue)


def paired_average(parts: list[Paired]) -> Paired:
    """Δ of a mean over tasks from each task's paired Δ (tasks have disjoint items); its df is
    Welch–Satterthwaite's ``(Σ se²)² / Σ (se⁴ / df)``. A task without an interval leaves the
    average without one."""
    parts = [p for p in parts if p.n]
    if not parts:
        return Paired(float("nan"), float("nan"), 0, why="no task scored by both runs")
    t = len(parts)
    delta, n = sum(p.delta for p in parts) / t, sum(p.n for p in parts)
    lacking = [p for p in parts if not p.has_interval]
    if lacking:
        return Paired(delta, float("nan"), n, why=f"a task has {lacking[0].reason()}")
    var = sum(p.se**2 for p in parts)
    dfs = [math.inf if p.df is None else p.df for p in parts]
    quartic = sum(p.se**4 / d for p, d in zip(parts, dfs, strict=True))
    df = var**2 / quartic if quartic > 0 else sum(dfs)
    return Paired(delta, math.sqrt(var) / t, n, df=None if math.isinf(df) else df)


def paired_kld(a: np.ndarray, b: np.ndarray) -> Paired:
    """``b − a`` of per-token KLD ``[windows, positions]``, interval from the windows' means."""
    w = min(len(a), len(b))
    d = (b[:w].astype(np.float64) - a[:w].astype(np.float64)).mean(axis=1)
    return Paired(
        float(d.mean()), _se_of_mean(d), int(b[:w].size), None, w - 1, _unpaired(w, "window")
    )


# --------------------------------------------------------------------------- runs on disk


def run_items(run_id: str) -> dict:
    """A finished run's per-item scores (``samples.json``), ``{}`` when it has none."""
    from mixviz.runs.store import runs_dir

    path = runs_dir() / run_id / "samples.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_scores(run_id: str):
    """A finished run's per-token :class:`~mixviz.runs.evaluation.kld.TokenScores`, or None."""
    from mixviz.runs.evaluation.kld import TokenScores
    from mixviz.runs.store import runs_dir

    path = runs_dir() / run_id / "kld.npz"
    return TokenScores.load(path) if path.is_file() else None


def run_kld(run_id: str) -> np.ndarray | None:
    """A finished run's per-token KLD ``[windows, positions]``, or None."""
    s = run_scores(run_id)
    return None if s is None else s.kld


def kld_positions(a_id: str, b_id: str, score_from: str | None = None) -> str | None:
    """The positions two runs' KLD is compared on: ``score_from``, or (None) every position
    when both were scored on all, llama.cpp's half when either was; None without both."""
    a, b = run_scores(a_id), run_scores(b_id)
    if a is None or b is None:
        return None
    return score_from or ("half" if "half" in (a.positions, b.positions) else "all")


def compare_runs(
    a_id: str, b_id: str, tasks: list[str], primary: dict[str, str], score_from: str | None = None
) -> dict:
    """``{task: Paired, "average": Paired, "kld": Paired}`` of run ``b`` against run ``a``:
    each task's primary metric (``primary[task]``), their average, and KLD where both have it,
    on :func:`kld_positions` (a run scored on llama.cpp's half is never paired with all of
    another's positions)."""
    from mixviz.runs.evaluation.kld import scored_from

    a, b = run_items(a_id), run_items(b_id)
    out: dict[str, Paired] = {}
    for task in tasks:
        m = primary.get(task)
        if m and m in a.get(task, {}) and m in b.get(task, {}):
            out[task] = paired_items(a[task], b[task], m)
    if out:
        out["average"] = paired_average([out[t] for t in tasks if t in out])
    where = kld_positions(a_id, b_id, score_from)
    if where is not None:
        ka, kb = (scored_from(run_scores(i), where).kld for i in (a_id, b_id))
        out["kld"] = paired_kld(ka, kb)
    return out


def spearman_ci(x, y) -> tuple[float, float, float]:
    """Spearman's ρ with a 95 % interval (Fisher's z with the Bonett–Wright variance
    ``(1 + ρ²/2) / (n − 3)``); NaN bounds below 4 points.

    >>> rho, lo, hi = spearman_ci([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    >>> round(rho, 3), lo < rho < hi
    (0.829, True)
    """
    from scipy.stats import spearmanr

    n = len(x)
    rho = float(spearmanr(x, y).statistic) if n >= 2 else float("nan")
    if n < 4 or not math.isfinite(rho) or abs(rho) >= 1:
        return rho, float("nan"), float("nan")
    z, se = math.atanh(rho), math.sqrt((1 + rho**2 / 2) / (n - 3))
    return rho, math.tanh(z - Z95 * se), math.tanh(z + Z95 * se)
