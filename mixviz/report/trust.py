"""How far to trust a profile's prediction: its predicted loss against measured KLD.

Over the finished runs whose every layer the profile scores: Spearman's ρ with its 95 %
interval (:func:`~mixviz.report.paired.spearman_ci`) and the calibration line — measured KLD ≈
``intercept + slope · predicted`` by least squares, with the slope's standard error — so a
person reads both whether the ordering holds and what a predicted number means in nats.

>>> t = prediction_trust([1.0, 2.0, 3.0, 4.0, 5.0], [0.11, 0.19, 0.32, 0.41, 0.48])
>>> round(t.rho, 2), round(t.slope, 3), t.n
(1.0, 0.096, 5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Trust:
    """ρ (with its interval, NaN below 4 points), the calibration line and what it rests on."""

    n: int
    rho: float
    rho_lo: float
    rho_hi: float
    slope: float
    slope_se: float
    intercept: float

    def sentence(self, what: str = "runs") -> str:
        """One line for a caption.

        >>> Trust(5, 0.9, 0.4, 0.99, 0.1, 0.01, 0.0).sentence()
        'Spearman ρ = 0.90 [0.40, 0.99] over 5 runs; measured KLD ≈ 0 + 0.1 (± 0.02) × predicted'
        """
        ci = "" if math.isnan(self.rho_lo) else f" [{self.rho_lo:.2f}, {self.rho_hi:.2f}]"
        return (
            f"Spearman ρ = {self.rho:.2f}{ci} over {self.n} {what}; measured KLD ≈ "
            f"{self.intercept:.3g} + {self.slope:.3g} (± {2 * self.slope_se:.1g}) × predicted"
        )


def prediction_trust(predicted, measured) -> Trust | None:
    """:class:`Trust` of ``predicted`` against ``measured`` (paired sequences), or None with
    fewer than 3 points or no spread in either."""
    from scipy.stats import linregress

    from mixviz.report.paired import spearman_ci

    x, y = [float(v) for v in predicted], [float(v) for v in measured]
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rho, lo, hi = spearman_ci(x, y)
    fit = linregress(x, y)
    return Trust(len(x), rho, lo, hi, float(fit.slope), float(fit.stderr), float(fit.intercept))


def run_points(profile, runs) -> list[dict]:
    """``{label, predicted_loss, kld, kld_se, accuracy, accuracy_se, n_items, kld_windows}``
    for every distinct
    recipe among the runs (rows of the runs frame, with a ``recipe`` map) whose every layer and
    option the profile scores. Runs of one recipe (a quantize job and the run it came from) are
    one point, named by all their labels, measured by the run whose KLD rests on most tokens:
    two points of one recipe would count it twice in ρ."""
    scores = {(r.layer, r.option): r.score for r in profile.rows}
    by_recipe: dict[frozenset, dict] = {}
    for row in runs.itertuples():
        recipe = getattr(row, "recipe", None) or {}
        vals = [scores.get((n, o)) for n, o in recipe.items()]
        if not vals or any(v is None for v in vals):
            continue
        point = {
            "label": row.label,
            "predicted_loss": sum(vals),
            "accuracy": getattr(row, "accuracy", None),
            "accuracy_se": getattr(row, "accuracy_se", None),
            "kld": getattr(row, "kld", None),
            "kld_se": getattr(row, "kld_se", None),
            "n_items": getattr(row, "n_items", None),
            "fewest_items": getattr(row, "fewest_items", None),
            "kld_windows": getattr(row, "kld_windows", None),
            "_weight": _tokens(row),
        }
        key = frozenset(recipe.items())
        seen = by_recipe.get(key)
        if seen is None:
            by_recipe[key] = point
            continue
        labels = f"{seen['label']} = {point['label']}"
        by_recipe[key] = {
            **(point if point["_weight"] > seen["_weight"] else seen),
            "label": labels,
        }
    return [{k: v for k, v in p.items() if k != "_weight"} for p in by_recipe.values()]


def _tokens(row) -> float:
    """What a run's KLD rests on (its scored tokens; 0 when it has none)."""
    n = getattr(row, "tokens", None)
    return float(n) if n is not None and n == n else 0.0


def kld_trust(points: list[dict]) -> Trust | None:
    """:func:`prediction_trust` over the points that measured KLD."""
    have = [p for p in points if p.get("kld") is not None and p["kld"] == p["kld"]]
    return prediction_trust([p["predicted_loss"] for p in have], [p["kld"] for p in have])


def refinement_chart(refinement):
    """Each refine round: the KLD measured on the selection windows and on held-out ones (± the
    95 % t interval) beside what the corrected additive model predicted for it, so a person
    sees the correction converge (the best round ringed). The hover gives each point's ±, or
    ``± — (why)`` where it has none, as the Results charts do (:func:`_round_notes`)."""
    import plotly.graph_objects as go

    rounds = refinement.rounds
    x = [r.index for r in rounds]
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=[r.corrected for r in rounds],
                mode="lines+markers",
                line={"dash": "dash", "color": "#7f7f7f"},
                name="predicted (corrected)",
                hovertemplate="round %{x}<br>predicted %{y:.4f}<extra></extra>",
            ),
            go.Scatter(
                x=x,
                y=[r.measured for r in rounds],
                error_y={"type": "data", "array": [r.half() for r in rounds]},
                mode="lines+markers",
                line={"color": "#1f77b4"},
                name="measured KLD (selection: calibration windows)",
                customdata=[
                    [n, r.avg_bits] for n, r in zip(_round_notes(rounds), rounds, strict=True)
                ],
                hovertemplate="round %{x}<br>measured %{y:.4f} %{customdata[0]}"
                "<br>%{customdata[1]:.3f} bits<extra></extra>",
            ),
            *_heldout_trace(rounds),
            go.Scatter(
                x=[rounds[refinement.best].index],
                y=[rounds[refinement.best].measured],
                mode="markers",
                marker={"size": 16, "symbol": "circle-open", "color": "#d62728"},
                name="best",
            ),
        ]
    )
    fig.update_layout(
        title=f"Refinement at {refinement.budget_avg_bits:g} bits: {refinement.stopped}",
        xaxis={"title": "round (0 = the additive optimum)", "dtick": 1},
        yaxis_title="KLD from the unquantized model (nats/token)",
        height=340,
        margin={"t": 50, "b": 40},
    )
    return fig


def _heldout_trace(rounds) -> list:
    """The held-out KLD of each round (windows never selected on), when scored."""
    import plotly.graph_objects as go

    have = [r for r in rounds if r.heldout is not None]
    if not have:
        return []
    return [
        go.Scatter(
            x=[r.index for r in have],
            y=[r.heldout for r in have],
            error_y={"type": "data", "array": [r.half("heldout") for r in have]},
            mode="lines+markers",
            line={"color": "#2ca02c"},
            name="held-out KLD (never selected on)",
            customdata=_round_notes(have, "heldout"),
            hovertemplate="round %{x}<br>held-out %{y:.4f} %{customdata}<extra></extra>",
        )
    ]


def _round_notes(rounds, which: str = "measured") -> list[str]:
    """Each round's ``which`` (``measured`` or ``heldout``) ± as the Results charts write it
    (:func:`~mixviz.report.charts.interval_notes`): the 95 % t half-width its error bar draws,
    or a dash and why there is none (1 window, or no standard error)."""
    import pandas as pd

    from mixviz.report.charts import interval_notes

    dfs = [getattr(r, f"{which}_df") for r in rounds]
    frame = pd.DataFrame(
        {
            "kld": [getattr(r, which) for r in rounds],
            "kld_se": [r.half(which) for r in rounds],
            "kld_windows": [None if df is None else df + 1 for df in dfs],
        },
        dtype=float,
    )
    return interval_notes(frame, "kld")


def refinement_points(refinement) -> list[dict]:
    """The rounds as frontier points (``avg_bits``, ``predicted_loss``: the plain additive
    prediction, the frontier's own axis), to draw beside the strategies' curves."""
    return [
        {
            "budget": refinement.budget_avg_bits,
            "avg_bits": r.avg_bits,
            "avg_bits_no_scale": r.avg_bits_no_scale or r.avg_bits,
            "predicted_loss": r.predicted,
        }
        for r in refinement.rounds
    ]
