"""The Allocate page's heatmap: one allocation as a styled grid or a plotly chart, and the
layers picked on it (the grid's clicks add up until cleared)."""

from __future__ import annotations

from typing import NamedTuple

import streamlit as st

from mixviz.allocation.editing import Picks
from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import STRATEGIES
from mixviz.errors import MixvizError
from mixviz.report import charts
from ui.allocating import Setting


class Shown(NamedTuple):
    """What the heatmap draws: an allocation (or the error that stopped it), its marked
    layers, its title and what the marks mean."""

    allocation: object
    marked: set[str]
    title: str
    mark_label: str


def heatmap_content(problem: Problem, view: str, cost, result) -> Shown:
    """The allocation the ``view`` radio names, with its marks: the re-solve's moves on the
    optimal one, or (``diff``) the layers where optimal disagrees with another strategy."""
    if view != "diff":
        marked = set(cost.changed) if view == "optimal" else set()
        return Shown(result(view), marked, view, "moved by the re-solve")
    other = st.selectbox(
        "Where optimal disagrees with",
        [s.name for s in STRATEGIES.values() if s.baseline and s.applies(problem)],
        key="allocate_diff_with",
    )
    theirs = result(other)
    if isinstance(theirs, MixvizError):
        return Shown(theirs, set(), "", "")
    best = cost.after
    marked = {n for n, o in best.layers.items() if theirs.layers.get(n) != o}
    title = f"optimal vs {other}: {len(marked)} layers differ"
    return Shown(best, marked, title, f"differs from {other}")


def heatmap_grid(page: Setting, shown: Shown, view: str, editable: bool) -> tuple[list, list, list]:
    """The heatmap as a styled grid (block × module); cells, rows and columns selectable."""
    chosen, profile = shown.allocation, page.profile
    title = shown.title + f": {getattr(chosen, page.bits_key):.3f} average bits"
    marks = (
        f" · {charts.LOCK_MARK} locked · {charts.MOVE_MARK} {shown.mark_label}"
        if editable
        else f" · {charts.MOVE_MARK} {shown.mark_label}"
        if shown.marked
        else ""
    )
    st.caption(f"**{title}**{marks}")
    st.html(charts.format_legend_html([*profile.options, *chosen.layers.values()]))
    styler, blocks, kinds, cells = charts.allocation_grid(
        profile.layers,
        chosen,
        list(profile.options),
        set(page.locks) if editable else set(),
        shown.marked,
    )
    clears = st.session_state.get("allocate_grid_clears", 0)
    event = st.dataframe(
        styler,
        key=f"allocate_grid_{view}_{page.version}" + (f"_{clears}" if clears else ""),
        on_select="rerun" if editable else "ignore",
        selection_mode=["multi-row", "multi-column", "multi-cell"],
        row_height=24,
        height=24 * len(blocks) + 40,  # every block, no inner scroll
    )
    if not editable:
        return [], [], []
    sel = event.selection
    columns = set(sel.columns)
    names = [cells[blocks[r], k].name for r, k in sel.cells if (blocks[r], k) in cells]
    names += [x.name for (_, k), x in cells.items() if k in columns]
    picks = gathered(page.version, names, [blocks[r] for r in sel.rows])
    return list(picks.names), list(picks.rows), []


def gathered(version: str, names: list[str], rows: list[int]) -> Picks:
    """What the grid's clicks picked since the last edit (each click adds), until cleared."""
    key = f"allocate_picked_{version}"
    picks = st.session_state.get(key, Picks()).add(names, rows)
    st.session_state[key] = picks
    return picks


def clear_selection(version: str) -> None:
    """Forget the grid's gathered clicks and start its selection afresh."""
    st.session_state.pop(f"allocate_picked_{version}", None)
    st.session_state["allocate_grid_clears"] = st.session_state.get("allocate_grid_clears", 0) + 1
    for key in ("edit_blocks", "edit_kinds"):
        st.session_state.pop(key, None)


def heatmap_chart(page: Setting, shown: Shown, editable: bool) -> tuple[list, list, list]:
    """The heatmap as a plotly chart, layer names on hover; cells selectable by click or box."""
    chosen, profile = shown.allocation, page.profile
    fig = charts.allocation_heatmap(
        profile.layers,
        chosen,
        list(profile.options),
        shown.title + f": {getattr(chosen, page.bits_key):.3f} average bits",
        shown.marked,
        set(page.locks) if editable else set(),
        selectable=editable,
        highlight_label=shown.mark_label,
    )
    if not editable:
        st.plotly_chart(fig, key="allocate_heatmap_view")
        return [], [], []
    event = st.plotly_chart(
        fig,
        key=f"allocate_heatmap_{page.version}",
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
    )
    names = {x.name for x in profile.layers}
    points = [p["customdata"][0] for p in event.selection.points if p.get("customdata")]
    return [n for n in points if n in names], [], []
