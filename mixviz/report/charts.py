"""Figures: the sensitivity heatmap, the allocation as a plotly heatmap or a coloured grid
(block × module), the loss–bits frontier (a Vega-Lite spec), accuracy vs bits, predicted loss vs
accuracy. Pure functions of library objects; no Streamlit.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from mixviz.allocation.strategies import STRATEGIES
from mixviz.models.inventory import KINDS, grid_columns
from mixviz.models.schemes import get_scheme

PALETTE = [
    "#d62728",
    "#ff7f0e",
    "#bcbd22",
    "#2ca02c",
    "#17becf",
    "#1f77b4",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
]
SERIES_COLOURS = {"bf16": "#000000", "autoscheme": "#e377c2"}  # series that are no strategy


def strategy_colour(name: str) -> str | None:
    """The line colour of a strategy (its :data:`~mixviz.allocation.strategies.STRATEGIES`
    entry) or of another series in :data:`SERIES_COLOURS`; None for any other name."""
    if name in STRATEGIES:
        return STRATEGIES[name].colour
    return SERIES_COLOURS.get(name)


def _grid(layers):
    """(blocks, columns in order, {(block, column): layer}) for the block linears.

    A column is a module kind, or a layer's path in its block where one block has several
    layers of a kind (:func:`~mixviz.models.inventory.grid_columns`): every layer is one cell.
    """
    column = grid_columns(layers)
    cells = {(x.block, column[x.name]): x for x in layers if x.block is not None}
    blocks = sorted({b for b, _ in cells})
    present = {k for _, k in cells}
    kinds = [k for k in KINDS if k in present]
    kinds += sorted(present - set(kinds))
    return blocks, kinds, cells


def _format_order(options, allocation) -> list[str]:
    """The formats an allocation heatmap or grid colours, fewest bits first (one palette)."""
    return sorted(
        set(options) | set(allocation.layers.values()), key=lambda o: (get_scheme(o).bits, o)
    )


def _grid_layout(fig: go.Figure, title: str) -> go.Figure:
    """Block × module axes, block 0 on top."""
    fig.update_layout(
        title=title,
        xaxis_title="module",
        yaxis_title="block",
        yaxis_autorange="reversed",
        yaxis_dtick=max(1, len(fig.data[0].y) // 16) if fig.data else 1,
        height=520,
        margin={"t": 50, "b": 40},
    )
    return fig


def sensitivity_heatmap(profile, option: str) -> go.Figure:
    """Score per (block, module) for one option, on a log colour scale."""
    blocks, kinds, cells = _grid(profile.layers)
    z, text, custom = [], [], []
    for b in blocks:
        zr, cr = [], []
        for k in kinds:
            x = cells.get((b, k))
            s = profile.score(x.name, option) if x else None
            zr.append(math.log10(s) if s and s > 0 else None)
            cr.append(
                [
                    x.name if x else "",
                    x.numel if x else 0,
                    "unavailable" if x and s is None else f"{s:.4g}" if s is not None else "",
                ]
            )
        z.append(zr)
        custom.append(cr)
        text.append(None)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=kinds,
            y=blocks,
            customdata=custom,
            colorscale="Viridis",
            colorbar={"title": "log₁₀ score"},
            hovertemplate="%{customdata[0]}<br>numel %{customdata[1]:,}<br>score "
            "%{customdata[2]}<extra></extra>",
        )
    )
    return _grid_layout(fig, f"{profile.metric} sensitivity — {option}")


def allocation_heatmap(
    layers,
    allocation,
    options: list[str],
    title: str = "",
    highlight: set[str] | None = None,
    locked: set[str] | None = None,
    selectable: bool = False,
    highlight_label: str = "differs",
) -> go.Figure:
    """The option of every (block, module).

    ``highlight`` rings the given layers (legend ``highlight_label``), ``locked`` marks them with
    a cross; ``selectable`` lays a transparent marker on every cell so that a click, box or lasso
    selects layers (their names are ``customdata[0]`` of the selected points).
    """
    blocks, kinds, cells = _grid(layers)
    order = _format_order(options, allocation)
    n = max(len(order), 1)
    z, custom, text = _allocation_cells(blocks, kinds, cells, allocation, order)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=kinds,
            y=blocks,
            zmin=0,
            zmax=n,
            colorscale=_format_scale(order),
            customdata=None if selectable else custom,  # the cell markers carry the hover
            text=text,
            texttemplate="%{text}" if len(blocks) <= 16 else None,
            textfont={"size": 9},
            colorbar={
                "tickvals": [i + 0.5 for i in range(n)],
                "ticktext": order,
                "title": "format",
            },
            hovertemplate=None if selectable else _CELL_HOVER,
            hoverinfo="skip" if selectable else None,
            xgap=1,
            ygap=1,
        )
    )
    for trace in _cell_mark_traces(
        cells, allocation, selectable, highlight, locked, highlight_label
    ):
        fig.add_trace(trace)
    # Markers would pad the autorange: pin the axes to the grid. (Leave dragmode and clickmode
    # to Streamlit: it makes a click select a cell unless box / lasso is picked.)
    _grid_layout(fig, title or f"{allocation.strategy}: {allocation.avg_bits:.3f} bits")
    return fig.update_layout(
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        xaxis_range=[-0.5, len(kinds) - 0.5],
        yaxis_autorange=False,
        yaxis_range=[max(blocks, default=0) + 0.5, min(blocks, default=0) - 0.5],
    )


_CELL_HOVER = "%{customdata[0]}<br>%{customdata[1]}<br>numel %{customdata[2]:,}<extra></extra>"


def _format_scale(order: list[str]) -> list[list]:
    """A stepped plotly colour scale: format ``i`` of ``order`` fills ``[i, i + 1) / n``."""
    n = max(len(order), 1)
    scale = []
    for i, _ in enumerate(order):
        c = PALETTE[i % len(PALETTE)]
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def _allocation_cells(blocks, kinds, cells, allocation, order: list[str]):
    """Per block row: the heatmap values (format index + ½), the hover data (name, option,
    numel) and the cell labels; empty cells are None / blank."""
    idx = {o: i for i, o in enumerate(order)}
    z, custom, text = [], [], []
    for b in blocks:
        zr, cr, tr = [], [], []
        for k in kinds:
            x = cells.get((b, k))
            o = allocation.layers.get(x.name) if x else None
            zr.append(idx[o] + 0.5 if o else None)
            cr.append([x.name if x else "", o or "", x.numel if x else 0])
            tr.append(get_scheme(o).label if o else "")
        z.append(zr)
        custom.append(cr)
        text.append(tr)
    return z, custom, text


def _cell_mark_traces(
    cells, allocation, selectable: bool, highlight, locked, highlight_label: str
) -> list[go.Scatter]:
    """The marker layers over the heatmap: transparent selectable cells, rings on
    ``highlight``, crosses on ``locked`` (each only when asked for)."""
    traces = []
    if selectable:
        traces.append(
            _cell_marks(
                cells,
                allocation,
                [x.name for x in cells.values()],
                hovered=True,
                name="cells",
                showlegend=False,
                marker={"size": 16, "symbol": "square", "color": "rgba(0,0,0,0)"},
                selected={"marker": {"color": "rgba(255,255,255,0.6)"}},
                unselected={"marker": {"opacity": 0}},
            )
        )
    if highlight:
        traces.append(
            _cell_marks(
                cells,
                allocation,
                sorted(highlight),
                name=highlight_label,
                marker={
                    "size": 15,
                    "symbol": "circle-open",
                    "color": "black",
                    "line": {"width": 2},
                },
            )
        )
    if locked:
        traces.append(
            _cell_marks(
                cells,
                allocation,
                sorted(locked),
                name="locked",
                marker={"size": 10, "symbol": "x", "color": "black", "line": {"width": 1}},
            )
        )
    return traces


def _cell_marks(cells, allocation, names, hovered: bool = False, **kw) -> go.Scatter:
    """A marker on the cell of each layer in ``names``; ``customdata`` names the layer."""
    by_name = {x.name: x for x in cells.values()}
    column = {x.name: k for (_, k), x in cells.items()}
    pts = [by_name[m] for m in names if m in by_name]
    return go.Scatter(
        x=[column[x.name] for x in pts],
        y=[x.block for x in pts],
        customdata=[[x.name, allocation.layers.get(x.name, ""), x.numel] for x in pts],
        mode="markers",
        hovertemplate=_CELL_HOVER if hovered else None,
        hoverinfo=None if hovered else "skip",
        **kw,
    )


LOCK_MARK, MOVE_MARK = "✕", "•"


def allocation_grid(
    layers,
    allocation,
    options: list[str],
    locked: set[str] = frozenset(),
    marked: set[str] = frozenset(),
):
    """The allocation as a block × module grid of coloured cells, for ``st.dataframe``.

    Returns ``(styler, blocks, kinds, cells)``: the pandas Styler (cell text = option, prefixed
    with ``LOCK_MARK`` when locked and ``MOVE_MARK`` when in ``marked``), the row blocks and
    column kinds (to map a selection back to layers) and ``{(block, kind): Layer}``. A grid
    redraws far faster than a plotly heatmap, which matters on every slider step.
    """
    import pandas as pd

    blocks, kinds, cells = _grid(layers)
    colour = {
        o: PALETTE[i % len(PALETTE)] for i, o in enumerate(_format_order(options, allocation))
    }
    text, css = [], []
    for b in blocks:
        tr, cr = [], []
        for k in kinds:
            x = cells.get((b, k))
            o = allocation.layers.get(x.name) if x else None
            if not o:
                tr.append("")
                cr.append("")
                continue
            mark = LOCK_MARK if x.name in locked else MOVE_MARK if x.name in marked else ""
            tr.append(f"{mark} {o}".strip())
            cr.append(f"background-color: {colour[o]}; color: white")
        text.append(tr)
        css.append(cr)
    frame = pd.DataFrame(text, index=pd.Index(blocks, name="block"), columns=kinds)
    styles = pd.DataFrame(css, index=frame.index, columns=kinds)
    return frame.style.apply(lambda _: styles, axis=None), blocks, kinds, cells


def frontier_chart(
    front: dict[str, list[dict]], marker: float | None = None, no_scale: bool = False
) -> dict:
    """Predicted loss vs average bits, a line per strategy, and a dashed marker at the slider:
    a Vega-Lite spec for ``st.vega_lite_chart``.

    The lines and the marker are separate named datasets, so when the slider moves only the
    one-row ``marker`` dataset changes and the chart is updated in place, not re-embedded
    (a plotly figure would be redrawn whole on every step).
    """
    key = "avg_bits_no_scale" if no_scale else "avg_bits"
    rows = [
        {"strategy": s, "bits": p[key], "loss": p["predicted_loss"]}
        for s, pts in front.items()
        for p in sorted(pts, key=lambda p: p[key])
        if p["predicted_loss"] > 0
    ]
    strategies = [s for s in front if front[s]]
    x = {
        "field": "bits",
        "type": "quantitative",
        "title": "average bits" + (" (no scale bits)" if no_scale else ""),
        "scale": {"zero": False},
    }
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "height": 380,
        "datasets": {
            "frontier": rows,
            "marker": [] if marker is None else [{"bits": marker, "label": f"{marker:.2f} bits"}],
        },
        "layer": [
            {
                "data": {"name": "frontier"},
                "mark": {"type": "line", "point": True},
                "encoding": {
                    "x": x,
                    "y": {
                        "field": "loss",
                        "type": "quantitative",
                        "scale": {"type": "log"},
                        "title": "predicted loss (Σ score)",
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
                },
            },
            {
                "data": {"name": "marker"},
                "mark": {"type": "rule", "strokeDash": [6, 4], "color": "grey"},
                "encoding": {"x": x},
            },
            {
                "data": {"name": "marker"},
                "mark": {"type": "text", "align": "left", "dx": 4, "y": 8, "color": "grey"},
                "encoding": {"x": x, "text": {"field": "label"}},
            },
        ],
    }


def accuracy_chart(frame, bf16: float | None = None, y: str = "accuracy") -> go.Figure:
    """Accuracy vs average bits, a line per strategy; BF16 as a horizontal reference."""
    fig = go.Figure()
    for strategy, part in frame.groupby("strategy", sort=False):
        part = part.sort_values("avg_bits")
        fig.add_trace(
            go.Scatter(
                x=part["avg_bits"],
                y=part[y],
                name=strategy,
                mode="lines+markers",
                line={"color": strategy_colour(strategy)},
            )
        )
    if bf16 is not None:
        fig.add_hline(y=bf16, line_dash="dot", annotation_text="BF16")
    fig.update_layout(
        xaxis_title="average bits", yaxis_title=y, height=420, margin={"t": 30, "b": 40}
    )
    return fig


def loss_vs_accuracy(frame, rho: float | None) -> go.Figure:
    fig = go.Figure(
        go.Scatter(
            x=frame["predicted_loss"],
            y=frame["accuracy"],
            mode="markers",
            text=frame["label"],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Spearman ρ = {rho:.3f}" if rho is not None else "",
        xaxis_title="predicted loss",
        yaxis_title="accuracy",
        xaxis_type="log",
        height=380,
        margin={"t": 40, "b": 40},
    )
    return fig
