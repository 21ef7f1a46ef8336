"""The block × module figures: the sensitivity heatmap, and the allocation as a plotly heatmap
or as a coloured grid for ``st.dataframe``."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from mixviz.models.inventory import KINDS, grid_columns
from mixviz.models.schemes import get_scheme
from mixviz.report.colours import format_colour, text_colour


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


def _score_title(metric: str) -> str:
    """The colour bar's title: log₁₀ of which score, in what unit (``kl``: nats per token)."""
    from mixviz.sensitivity.metrics import score_unit

    unit = score_unit(metric)
    return f"log₁₀ {metric} score" + (f"<br>({unit})" if unit else "")


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
            colorbar={"title": _score_title(profile.metric)},
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


def cell_label(option: str, in_features: int) -> str:
    """A cell's label: the option, and for a GGML type llama.cpp writes as its fallback on this
    row, that type too (what the file holds, priced and profiled as such).

    >>> cell_label("Q4_K", 576), cell_label("Q4_K", 1536), cell_label("W4A16G64", 576)
    ('Q4_K→Q5_0', 'Q4_K', 'W4 G64')
    """
    s = get_scheme(option)
    written = s.written_as(in_features)
    return s.label if written == s.name else f"{s.label}→{written}"


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
            tr.append(cell_label(o, x.in_features) if o else "")
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
            tr.append(f"{mark} {cell_label(o, x.in_features)}".strip())
            cr.append(f"background-color: {colour[o]}; color: {text_colour(colour[o])}")
        text.append(tr)
        css.append(cr)
    frame = pd.DataFrame(text, index=pd.Index(blocks, name="block"), columns=kinds)
    styles = pd.DataFrame(css, index=frame.index, columns=kinds)
    return frame.style.apply(lambda _: styles, axis=None), blocks, kinds, cells
