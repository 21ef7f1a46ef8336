"""Figures over strategies and runs: the loss–bits frontier (a Vega-Lite spec), accuracy vs
bits, predicted loss vs accuracy. Pure functions of library objects; no Streamlit.

The block × module figures are :mod:`mixviz.report.heatmaps` and the colours
:mod:`mixviz.report.colours`; both are re-exported here, so ``charts.X`` reaches every figure.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from mixviz.allocation.strategies import STRATEGIES
from mixviz.report.colours import (
    FORMAT_COLOURS,
    SERIES_COLOURS,
    format_colour,
    format_legend_html,
    strategy_colour,
    text_colour,
)
from mixviz.report.heatmaps import (
    LOCK_MARK,
    MOVE_MARK,
    allocation_grid,
    allocation_heatmap,
    score_range,
    sensitivity_heatmap,
)

__all__ = [
    "DISPLAY_NAMES",
    "FORMAT_COLOURS",
    "LOCK_MARK",
    "MOVE_MARK",
    "SERIES_COLOURS",
    "accuracy_chart",
    "allocation_grid",
    "allocation_heatmap",
    "error_column",
    "format_colour",
    "format_legend_html",
    "frontier_chart",
    "loss_vs_accuracy",
    "padded_range",
    "predicted_loss_title",
    "score_range",
    "sensitivity_heatmap",
    "strategy_colour",
    "text_colour",
]


def frontier_chart(
    front: dict[str, list[dict]],
    marker: float | None = None,
    no_scale: bool = False,
    x_min: float | None = None,
    metric: str | None = None,
) -> dict:
    """Predicted loss vs average bits per strategy, and a dashed marker at the slider: a
    Vega-Lite spec for ``st.vega_lite_chart``.

    A solver's points (one per budget) are joined by a line; a baseline's are drawn as points
    only — it reaches those allocations and nothing between them. The x axis starts at
    ``x_min`` (the feasible minimum) when given; the y axis says what the loss is: the sum
    over layers of ``metric``'s score, in its unit. The lines and the marker are separate named
    datasets, so when the slider moves only the one-row ``marker`` dataset changes and the chart
    is updated in place, not re-embedded (a plotly figure would be redrawn whole on every step).
    """
    key = "avg_bits_no_scale" if no_scale else "avg_bits"
    baseline = {s for s in front if s in STRATEGIES and STRATEGIES[s].baseline}
    rows = [
        {"strategy": s, "bits": p[key], "loss": p["predicted_loss"], "solver": s not in baseline}
        for s, pts in front.items()
        for p in sorted(pts, key=lambda p: p[key])
        if p["predicted_loss"] > 0
    ]
    scale = {"zero": False, "nice": False}
    if x_min is not None:
        scale["domainMin"] = x_min
    x = {
        "field": "bits",
        "type": "quantitative",
        "title": "average bits" + (" (no scale bits)" if no_scale else ""),
        "scale": scale,
    }
    drawn = [s for s in front if front[s]]
    encoding = _frontier_encoding(x, drawn, predicted_loss_title(metric))
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        # room above the plot for the budget's label (MARKER_LABEL_Y), clear of every marker
        "title": {"text": "Predicted loss of each strategy's allocations", "offset": 22},
        "height": 380,
        "datasets": {
            "frontier": rows,
            "marker": [] if marker is None else [{"bits": marker, "label": f"{marker:.2f} bits"}],
        },
        "layer": [
            {
                "data": {"name": "frontier"},
                "transform": [{"filter": "datum.solver"}],
                "mark": {"type": "line", "point": True},
                "encoding": encoding,
            },
            {
                "data": {"name": "frontier"},
                "transform": [{"filter": "!datum.solver"}],
                "mark": {"type": "point", "filled": True, "size": 70},
                "encoding": {**encoding, "shape": _frontier_shapes(drawn, baseline)},
            },
            {
                "data": {"name": "marker"},
                "mark": {"type": "rule", "strokeDash": [6, 4], "color": "grey"},
                "encoding": {"x": x},
            },
            {
                "data": {"name": "marker"},
                # above the plot area, where no marker is drawn
                "mark": {
                    "type": "text",
                    "align": "center",
                    "baseline": "bottom",
                    "y": MARKER_LABEL_Y,
                    "color": "grey",
                },
                "encoding": {"x": x, "text": {"field": "label"}},
            },
        ],
    }


MARKER_LABEL_Y = -6
"""The budget label's baseline, in pixels above the plot's top edge: a point marker (size 70,
radius under 5 px) drawn at the top edge reaches no higher than that."""

BASELINE_SHAPES = ("square", "triangle-up", "diamond", "cross", "triangle-down", "wedge")


def _frontier_shapes(strategies: list[str], baseline: set[str]) -> dict:
    """One shape per curve over the same domain as the colours, so the merged legend names
    every curve (a shape scale over the baselines alone hid the solvers' entries): solvers are
    circles (their lines tell them apart), each baseline its own shape."""
    shapes, i = [], 0
    for s in strategies:
        if s in baseline:
            shapes.append(BASELINE_SHAPES[i % len(BASELINE_SHAPES)])
            i += 1
        else:
            shapes.append("circle")
    return {
        "field": "strategy",
        "type": "nominal",
        "scale": {"domain": strategies, "range": shapes},
    }


def predicted_loss_title(metric: str | None) -> str:
    """What a predicted loss is, for an axis: Σ over layers of the metric's score, its unit.

    >>> predicted_loss_title("kl")
    'predicted loss: Σ over layers of the kl score (nats per token), log scale'
    """
    if not metric:
        return "predicted loss (Σ score, log scale)"
    from mixviz.sensitivity.metrics import score_unit

    unit = score_unit(metric)
    return f"predicted loss: Σ over layers of the {metric} score" + (
        f" ({unit}), log scale" if unit else ", log scale"
    )


def _frontier_encoding(x: dict, strategies: list[str], y_title: str) -> dict:
    """The frontier's Vega-Lite encoding: bits (``x``) against log loss (titled ``y_title``),
    a colour per strategy (in ``strategies``' order), tooltips."""
    return {
        "x": x,
        "y": {
            "field": "loss",
            "type": "quantitative",
            "scale": {"type": "log"},
            "title": y_title,
        },
        "color": {
            "field": "strategy",
            "type": "nominal",
            "scale": {
                "domain": strategies,
                "range": [strategy_colour(s) or "#7f7f7f" for s in strategies],
            },
        },
        "order": {"field": "bits", "type": "quantitative"},
        "tooltip": [
            {"field": "strategy"},
            {"field": "bits", "format": ".3f"},
            {"field": "loss", "format": ".4g"},
        ],
    }


def error_column(frame, y: str) -> str | None:
    """The column holding ``y``'s standard error, when the results carry one: ``accuracy_se``
    for the average, ``<task>:<metric>_stderr`` for a task's primary metric.

    >>> import pandas as pd
    >>> error_column(pd.DataFrame(columns=["accuracy", "accuracy_se"]), "accuracy")
    'accuracy_se'
    >>> error_column(pd.DataFrame(columns=["t", "t:acc", "t:acc_stderr"]), "t"), error_column(
    ...     pd.DataFrame(columns=["accuracy"]), "accuracy")
    ('t:acc_stderr', None)
    """
    candidates = [f"{y}_se"] + [
        f"{y}:{m}_stderr" for m in ("acc", "acc_norm") if f"{y}:{m}" in frame
    ]
    return next((c for c in candidates if c in frame), None)


COUNTS = {"accuracy": ("fewest_items", "item per task"), "kld": ("kld_windows", "window")}
"""The column counting what each chart's ``y`` rests on (a task's: ``<task>:items``)."""


def interval_notes(frame, y: str) -> list[str]:
    """Each point's ± as the tables write it: ``'± 0.0200'``, or a dash and why there is none
    (:func:`~mixviz.report.tables.no_interval`: 1 item or window, or no standard error).

    >>> import pandas as pd
    >>> interval_notes(pd.DataFrame({"accuracy": [0.6, 0.5], "accuracy_se": [0.02, None],
    ...     "fewest_items": [50, 1]}), "accuracy")
    ['± 0.0200', '± — (1 item per task: no interval)']
    """
    from mixviz.report.tables import no_interval

    err = error_column(frame, y)
    count, unit = COUNTS.get(y, (f"{y}:items", "item"))
    ses = frame[err].tolist() if err else [None] * len(frame)
    ns = frame[count].tolist() if count in frame else [None] * len(frame)
    return [
        f"± {se:.4f}" if se is not None and se == se else f"± — ({no_interval(n, unit)})"
        for se, n in zip(ses, ns, strict=True)
    ]


def missing_intervals(frame, y: str) -> str:
    """The caption under a chart with points that have no ±, saying why as the tables do:
    ``'No error bar on 2 of 3 points: ± — (1 item: no interval)'``; ``''`` when all have one.

    >>> import pandas as pd
    >>> missing_intervals(pd.DataFrame({"kld": [0.1, 0.2], "kld_windows": [1, 1]}), "kld")
    'No error bar on 2 of 2 points: ± — (1 window: no interval)'
    """
    notes = interval_notes(frame, y)
    missing = [n for n in notes if n.startswith("± —")]
    if not missing:
        return ""
    why = "; ".join(sorted(set(missing)))
    return f"No error bar on {len(missing)} of {len(notes)} points: {why}"


def padded_range(values, pad: float) -> list[float] | None:
    """``[min - p, max + p]`` with ``p`` = 8 % of the span, at least ``pad``; None if empty.

    >>> padded_range([4.25, 8.25], 0.25)
    [3.93, 8.57]
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    p = max(pad, 0.08 * (hi - lo))
    return [round(lo - p, 4), round(hi + p, 4)]


def accuracy_chart(
    frame,
    bf16: float | None = None,
    y: str = "accuracy",
    *,
    y_title: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """``y`` vs average bits, one series per strategy (points joined when it has several),
    error bars where the results carry a standard error (the hover gives each point's ±, or
    ``± — (why)`` where it has none: :func:`interval_notes`), BF16 as a dotted reference line
    (in the legend too); axes fitted to the data with some padding."""
    err = error_column(frame, y)
    y_title = y_title or y
    fig = go.Figure()
    ys: list[float] = [] if bf16 is None else [bf16]
    for strategy, part in frame.groupby("strategy", sort=False):
        part = part.sort_values("avg_bits")
        se = part[err].astype(float).fillna(0).tolist() if err else None
        vals = part[y].astype(float).tolist()
        ys += [v + d * e for v, e in zip(vals, se or [0] * len(vals), strict=True) for d in (-1, 1)]
        fig.add_trace(
            go.Scatter(
                x=part["avg_bits"],
                y=part[y],
                name=DISPLAY_NAMES.get(strategy, strategy),
                mode="lines+markers" if len(part) > 1 else "markers",
                line={"color": strategy_colour(strategy)},
                marker={"size": 9},
                error_y={"type": "data", "array": se, "visible": True} if se else None,
                customdata=interval_notes(part, y),
                hovertemplate="%{x:.3f} bits<br>%{y:.4f} %{customdata}<extra>"
                + str(strategy)
                + "</extra>",
            )
        )
    if bf16 is not None:
        fig.add_hline(y=bf16, line_dash="dot", line_color="black")
        fig.add_trace(  # the reference line's legend entry
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name="BF16",
                line={"dash": "dot", "color": "black"},
            )
        )
    fig.update_layout(
        title=title or f"{y_title} vs average bits",
        xaxis_title="average bits per weight",
        yaxis_title=y_title,
        xaxis_range=padded_range(frame["avg_bits"], 0.25),
        yaxis_range=padded_range(ys, 0.02),
        showlegend=True,
        height=420,
        margin={"t": 50, "b": 40},
    )
    return fig


DISPLAY_NAMES = {"bf16": "BF16"}  # one name per series in every chart and table


FEW_RUNS = 10
"""Below this many runs, ρ's 95 % interval spans most of [−1, 1]: the title says so."""


def _rho_interval(rho: float, ci: tuple[float, float] | None, n: int) -> str:
    """ρ's 95 % interval, or why there is none (``[no interval: under 4 runs]``).

    >>> _rho_interval(0.9, (0.4, 0.99), 8), _rho_interval(1.0, (math.nan, math.nan), 3)
    ('[0.40, 0.99]', '[no interval: under 4 runs]')
    """
    if ci is not None and all(c == c for c in ci):
        return f"[{ci[0]:.2f}, {ci[1]:.2f}]"
    if n < 4:
        return "[no interval: under 4 runs]"
    return "[no interval at |ρ| = 1]" if abs(rho) >= 1 else "[no interval]"


def loss_vs_accuracy(
    frame,
    rho: float | None,
    y_title: str = "accuracy",
    y: str = "accuracy",
    ci: tuple[float, float] | None = None,
) -> go.Figure:
    """A measured column (``accuracy``, ``kld``) against the profile's predicted loss, one
    point per run (error bars from ``<y>_se`` when present); the title gives Spearman's ρ
    and its 95 % interval ``ci``."""
    err = f"{y}_se" if f"{y}_se" in frame and frame[f"{y}_se"].notna().any() else None
    fig = go.Figure(
        go.Scatter(
            x=frame["predicted_loss"],
            y=frame[y],
            error_y={"type": "data", "array": frame[err], "visible": True} if err else None,
            mode="markers+text",
            text=frame["label"],
            textposition="top center",
            name="quantized runs",
            customdata=interval_notes(frame, y),
            hovertemplate="%{text}<br>loss %{x:.4g}<br>%{y:.4f} %{customdata}<extra></extra>",
        )
    )
    what = "KLD" if y == "kld" else "accuracy"
    title = f"Predicted loss vs measured {what}"
    if rho is not None:
        title += f": Spearman ρ = {rho:.3f} {_rho_interval(rho, ci, len(frame))}"
        few = "; few runs: the interval is wide" if len(frame) < FEW_RUNS else ""
        title += f" ({len(frame)} runs{few})"
    fig.update_layout(
        title=title,
        xaxis_title="predicted loss (Σ score, log scale)",
        yaxis_title=y_title,
        yaxis_range=padded_range(frame[y], 0.02 if y == "accuracy" else 0.0),
        xaxis_type="log",
        showlegend=True,
        height=380,
        margin={"t": 50, "b": 40},
    )
    return fig
