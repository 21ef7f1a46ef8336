"""The profile's prediction in the units people use: the KLD to the unquantized model (nats
per token) ± a 95 % interval, with what it rests on.

Once finished runs measured KLD, from the calibration line the trust panel fits
(:func:`~mixviz.report.trust.kld_trust`: measured KLD ≈ a + b × predicted) with its
prediction interval for one more run; before that, from one measured anchor
(:mod:`~mixviz.runs.evaluation.anchor`) scaled by the ratio of Σ scores; else nothing, and
:func:`how_to_get` says what would give one.

>>> pts = [{"predicted_loss": x, "kld": 0.1 * x + 0.01} for x in (1.0, 2.0, 4.0)]
>>> p = from_line(pts, 3.0); round(p.value, 3), p.source
(0.31, 'calibration line over 3 runs')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mixviz.runs.evaluation.anchor import Anchor


@dataclass(frozen=True)
class PredictedKLD:
    """A predicted KLD (nats per token) and the half-width of its 95 % interval."""

    value: float
    half: float
    source: str
    basis: str  # "line" | "anchor"
    n: int  # the runs (line) or windows (anchor) it rests on

    @property
    def lo(self) -> float:
        return max(self.value - self.half, 0.0)  # a KLD is never negative

    @property
    def hi(self) -> float:
        return self.value + self.half

    def text(self) -> str:
        """``'0.0312 ± 0.0051 nats/token (calibration line over 5 runs)'``"""
        return f"{self.value:.3g} ± {self.half:.2g} nats/token ({self.source})"

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "lo": self.lo,
            "hi": self.hi,
            "half_width_95": self.half,
            "source": self.source,
            "basis": self.basis,
            "n": self.n,
            "unit": "nats per token (mean KLD to the unquantized model)",
        }


def _t95(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def from_line(points: list[dict], predicted: float) -> PredictedKLD | None:
    """The least-squares line of measured KLD on Σ score over ``points`` (``predicted_loss``,
    ``kld``) at ``predicted``, ± the 95 % prediction interval of one more run
    (``t · s · √(1 + 1/n + (x − x̄)²/Sxx)``); None below 3 points or without spread."""
    pts = [p for p in points if p.get("kld") is not None and p["kld"] == p["kld"]]
    xs = [float(p["predicted_loss"]) for p in pts]
    ys = [float(p["kld"]) for p in pts]
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    resid = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    s = math.sqrt(resid / (n - 2))
    half = _t95(n - 2) * s * math.sqrt(1 + 1 / n + (predicted - mx) ** 2 / sxx)
    value = max(intercept + slope * predicted, 0.0)  # a KLD is never negative
    return PredictedKLD(value, half, f"calibration line over {n} runs", "line", n)


def from_anchor(anchor: Anchor, predicted: float) -> PredictedKLD:
    """The anchor's KLD scaled by ``predicted ÷`` its Σ score (a line through zero and the
    anchor), ± its 95 % t interval over windows scaled alike. That ± is the anchor's
    measurement only: away from the anchor (``predicted`` ≠ its Σ score) the line through zero
    is assumed, not measured, and the source says so.

    >>> a = Anchor(5.0, 2.0, 0.04, 0.005, 8, 512, {})
    >>> p = from_anchor(a, 2.0); round(p.value, 3), round(p.half, 4), p.source
    (0.04, 0.0118, 'one measured anchor at 5.00 bits (8×512 calibration tokens)')
    >>> from_anchor(a, 1.0).source.endswith("± its measurement only")
    True
    """
    ratio = predicted / anchor.predicted_loss if anchor.predicted_loss > 0 else 1.0
    half = _t95(max(anchor.windows - 1, 1)) * anchor.kld_se * ratio
    source = (
        f"one measured anchor at {anchor.avg_bits:.2f} bits "
        f"({anchor.windows}×{anchor.seqlen} calibration tokens)"
    )
    if abs(ratio - 1) > 0.01:
        source += f", scaled ×{ratio:.2f} by Σ score (KLD ∝ score assumed): ± its measurement only"
    return PredictedKLD(anchor.kld * ratio, half, source, "anchor", anchor.windows)


def nearest_anchor(anchors: list[Anchor], predicted: float) -> Anchor | None:
    """The anchor whose Σ score is closest to ``predicted`` (by ratio): the least scaling."""
    good = [a for a in anchors if a.predicted_loss > 0]
    if not good or predicted <= 0:
        return good[0] if good else None
    return min(good, key=lambda a: abs(math.log(predicted / a.predicted_loss)))


def predict_kld(predicted: float, points: list[dict], anchors: list[Anchor]) -> PredictedKLD | None:
    """From the calibration line when the runs give one, else from the nearest anchor."""
    line = from_line(points, predicted)
    if line is not None:
        return line
    anchor = nearest_anchor(anchors, predicted) if predicted > 0 else None
    return None if anchor is None else from_anchor(anchor, predicted)  # no scaling from 0


def how_to_get(have_runs: int, command: str) -> str:
    """What the page or CLI says with no prediction yet: what would give one."""
    runs = "no runs yet" if not have_runs else f"{have_runs} run(s) with KLD, 3 needed"
    return f"— {runs}: run {command}"


def run_points_for(profile, store=None) -> list[dict]:
    """The trust panel's points (:func:`~mixviz.report.trust.run_points`) of the profile's
    model: its finished quantized runs whose every layer the profile scores."""
    from mixviz.report.tables import results_frame
    from mixviz.report.trust import run_points
    from mixviz.runs.store import Store

    frame = results_frame(store or Store(), profile.model)
    if frame.empty:
        return []
    quant = frame[frame["strategy"] != "bf16"]
    return run_points(profile, quant) if not quant.empty else []
