"""Figures: the sensitivity heatmap, the allocation as a plotly heatmap or a coloured grid
(block × module), the loss–bits frontier (a Vega-Lite spec), accuracy vs bits, predicted loss vs
accuracy. Pure functions of library objects; no Streamlit.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go

from mixviz.allocation.strategies import STRATEGIES
from mixviz.models.inventory import KINDS, grid_columns
from mixviz.models.schemes import SCHEMES, get_scheme


def _format_colours() -> dict[str, str]:
    """Every scheme's colour: a viridis ramp (colour-blind safe, light = more bits) over all
    schemes ordered by bits, so a format has one colour on every page and in every chart."""
    from plotly.colors import sample_colorscale

    order = sorted(SCHEMES, key=lambda o: (get_scheme(o).bits, o))
    ramp = sample_colorscale("Viridis", [i / max(len(order) - 1, 1) for i in range(len(order))])
    return dict(zip(order, ramp, strict=True))


FORMAT_COLOURS = _format_colours()


def format_colour(option: str) -> str:
    """``format_colour("MXFP4")`` → ``'rgb(…)'``, the same wherever MXFP4 is drawn."""
    return FORMAT_COLOURS.get(get_scheme(option).name, "rgb(127, 127, 127)")


def text_colour(background: str) -> str:
    """Black or white, whichever reads on ``background`` (an ``rgb(r, g, b)`` string)."""
    r, g, b = (int(float(v)) for v in background[4:-1].split(","))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def format_legend_html(options) -> str:
    """A one-line legend of format swatches, fewest bits first (for the grid view)."""
    order = sorted(set(options), key=lambda o: (get_scheme(o).bits, o))
    chips = " ".join(
        f'<span style="background:{format_colour(o)};color:{text_colour(format_colour(o))};'
        f'padding:1px 8px;margin-right:6px;border-radius:3px;font-size:0.85em">{o}</span>'
        for o in order
    )
    return f'<div class="mixviz-legend">{chips}</div>'


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


def score_range(profile) -> tuple[float, float] | None:
    """``(lo, hi)`` of log₁₀ score over every format: one colour scale for all of them."""
    logs = [math.log10(r.score) for r in profile.rows if r.score and r.score > 0]
    return (min(logs), max(logs)) if logs else None


def sensitivity_heatmap(profile, option: str, zrange: tuple[float, float] | None = None):
    """Score per (block, module) for one option, on a log colour scale: ``zrange`` (say from
    :func:`score_range`) fixes the scale's ends so that formats compare; None fits this one."""
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
            zmin=zrange[0] if zrange else None,
            zmax=zrange[1] if zrange else None,
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
    for i, o in enumerate(order):
        c = format_colour(o)
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
    colour = {o: format_colour(o) for o in _format_order(options, allocation)}
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
            cr.append(f"background-color: {colour[o]}; color: {text_colour(colour[o])}")
        text.append(tr)
        css.append(cr)
    frame = pd.DataFrame(text, index=pd.Index(blocks, name="block"), columns=kinds)
    styles = pd.DataFrame(css, index=frame.index, columns=kinds)
    return frame.style.apply(lambda _: styles, axis=None), blocks, kinds, cells


def frontier_chart(
    front: dict[str, list[dict]],
    marker: float | None = None,
    no_scale: bool = False,
    x_min: float | None = None,
) -> dict:
    """Predicted loss vs average bits per strategy, and a dashed marker at the slider: a
    Vega-Lite spec for ``st.vega_lite_chart``.

    A solver's points (one per budget) are joined by a line; a baseline's are drawn as points
    only — it reaches those allocations and nothing between them. The x axis starts at
    ``x_min`` (the feasible minimum) when given. The lines and the marker are separate named
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
    strategies = [s for s in front if front[s]]
    scale = {"zero": False, "nice": False}
    if x_min is not None:
        scale["domainMin"] = x_min
    x = {
        "field": "bits",
        "type": "quantitative",
        "title": "average bits" + (" (no scale bits)" if no_scale else ""),
        "scale": scale,
    }
    encoding = {
        "x": x,
        "y": {
            "field": "loss",
            "type": "quantitative",
            "scale": {"type": "log"},
            "title": "predicted loss (Σ score, log scale)",
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
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Predicted loss of each strategy's allocations",
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
                "encoding": {**encoding, "shape": {"field": "strategy", "type": "nominal"}},
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
    error bars where the results carry a standard error, BF16 as a dotted reference line
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
                hovertemplate="%{x:.3f} bits<br>%{y:.4f}<extra>" + str(strategy) + "</extra>",
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
            hovertemplate="%{text}<br>loss %{x:.4g}<br>%{y:.4f}<extra></extra>",
        )
    )
    what = "KLD" if y == "kld" else "accuracy"
    title = f"Predicted loss vs measured {what}"
    if rho is not None:
        title += f": Spearman ρ = {rho:.3f}"
        if ci is not None and all(c == c for c in ci):
            title += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        title += f" ({len(frame)} runs)"
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
