"""Allocate page: the budget slider, the optimal allocation beside the baselines, and hand edits
(locks) on the heatmap that the solver re-solves around."""

from collections.abc import Callable
from functools import partial

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.allocation.edits import lock, select, unlock
from mixviz.allocation.strategies import strategy_names
from mixviz.models.targets import RUNTIMES
from mixviz.report import charts, trust
from mixviz.report.export import EXPORTERS
from mixviz.report.recipe import Recipe
from ui import refining
from ui.allocating import (
    Setting,
    apply_edits,
    budget_start,
    current_edits,
    edits_from_link,
    propose,
    setting,
)
from ui.heatmap import clear_selection, heatmap_chart, heatmap_content, heatmap_grid
from ui.predicted import loss_help, predicted_kld

# --------------------------------------------------------------------------- the budget view


@st.fragment
def budget_view(page: Setting, start: float) -> None:
    """The slider and everything that depends on it: reruns alone when it moves."""
    avg = budget_slider(page, start)
    try:
        cost = ui.edit_cost_at(page.free, page.problem, page.problem_key, avg)
    except MixvizError as e:
        st.error(str(e))
        edit_panel(page, avg, None)
        return
    best = cost.after
    st.session_state["allocation"] = best.to_dict()
    result = solved_on_demand(page, best, avg)
    cost_metrics(page, cost, avg)
    picked = heatmap(page, cost, result)
    if picked is not None:
        edit_panel(page, avg, *picked)
    else:
        refused_edit()
    summary = {s: result(s) for s in strategy_names(page.problem)}
    st.dataframe(
        summary_frame(summary, best, page.bits_key).style.format(SUMMARY_FORMATS, na_rep="—"),
        hide_index=True,
        key="allocate_summary",
    )
    frontier_view(page, avg)
    downloads(page, best, avg)
    quantize(page, best, avg)


def budget_slider(page: Setting, start: float) -> float:
    """The average-bits slider (or the one value the locks leave); kept in the URL."""
    span, choice = page.span, page.choice
    if span.fixed:  # the locks fix every layer
        avg = span.hi
        st.info(f"The locks fix every layer: {avg:.3f} average bits. Unlock some to re-solve.")
    else:
        avg = st.slider(
            "Average bits",
            *span.ends,
            None if "allocate_avg_bits" in st.session_state else start,  # the state's wins
            0.01,
            key="allocate_avg_bits",
            persist_state="session",  # another page and Back: the budget as it was left
            help="Without scale bits" if choice.ignore_scale_bits else "With scale bits",
        )
    ui.url_write(bits=f"{avg:g}")
    if not choice.ignore_scale_bits:  # with scales, the average is llama.cpp's bpw
        size = ui.file_size(choice.model, avg, page.problem)
        st.caption(f"= {avg:.2f} bpw (scales included) · a file of about {size}")
    st.session_state["budget"] = avg
    st.session_state["allocate_edits"] = current_edits().at_budget(avg)
    return avg


def solved_on_demand(page: Setting, best, avg: float) -> Callable[[str], object]:
    """``result(strategy)``: a strategy's allocation at this budget (or its error), solved when
    first asked: the default view draws the optimal heatmap before the baselines are solved."""
    results = {"optimal": best}

    def result(strategy: str):
        if strategy not in results:
            try:
                results[strategy] = ui.allocation_at(page.problem, page.problem_key, avg, strategy)
            except MixvizError as e:
                results[strategy] = e
        return results[strategy]

    return result


def cost_metrics(page: Setting, cost, avg: float) -> None:
    """Predicted loss, achieved bits and the layers locked / moved, and what the locks cost."""
    best, locks = cost.after, page.locks
    c0, c1, c2, c3 = st.columns([3, 2, 2, 2])
    predicted_kld(page.profile, best, c0)
    c1.metric(
        f"Optimal: Σ {page.profile.metric} score",
        f"{best.predicted_loss:.4g}",
        f"{cost.loss_ratio - 1:+.1%} from the locks" if locks else None,
        delta_color="inverse",
        help=loss_help(page.profile.metric),
    )
    before_bits, after_bits = getattr(cost.before, page.bits_key), getattr(best, page.bits_key)
    c2.metric(
        f"Achieved average bits (budget {avg:.2f})",
        f"{after_bits:.3f}",
        f"{after_bits - before_bits:+.3f} from the locks" if locks else None,
        delta_color="off",
    )
    c3.metric(
        "Locked / moved by the re-solve",
        f"{len(cost.locked)} / {len(cost.changed)}",
        help="Layers you locked, and unlocked layers the solver moved to keep the budget "
        "(• on the grid, ringed on the chart)",
    )
    if locks:
        st.caption(
            f"Without the locks: predicted loss {cost.before.predicted_loss:.4g} at "
            f"{before_bits:.3f} bits → with them {best.predicted_loss:.4g} at {after_bits:.3f} "
            f"bits. {len(cost.changed)} other layers moved, {len(cost.gave_back)} of them to "
            "fewer bits to pay for the locks."
        )


# --------------------------------------------------------------------------- the heatmap


def heatmap(page: Setting, cost, result) -> tuple[list, list, list] | None:
    """One strategy's allocation (or where optimal disagrees with one) as a grid or a chart.

    Returns what is selected on it — ``(cells, blocks, kinds)`` for :func:`edit_panel` — when
    it is the optimal one, which is the one edited; else None."""
    c1, c2 = st.columns([4, 1])
    view = c1.radio(
        "Heatmap", [*strategy_names(page.problem), "diff"], horizontal=True, key="allocate_view"
    )
    draw = c2.radio(
        "Draw as",
        ["grid", "chart"],
        horizontal=True,
        key="allocate_draw",
        help="grid: quick to redraw; click cells, row numbers or column headers to select. "
        "chart: plotly, with layer names on hover; click or box-select cells.",
    )
    editable = view == "optimal"
    picked: tuple[list, list, list] = ([], [], [])
    with st.container(key="allocate_heatmap"):
        shown = heatmap_content(page.problem, view, cost, result)
        if isinstance(shown.allocation, MixvizError):
            st.error(str(shown.allocation))
        elif draw == "grid":
            picked = heatmap_grid(page, shown, view, editable)
        else:
            picked = heatmap_chart(page, shown, editable)
    return picked if editable else None


# --------------------------------------------------------------------------- beside the heatmap


SUMMARY_FORMATS = {"avg bits": "{:.3f}", "predicted loss": "{:.4g}", "vs optimal": "{:.3f}×"}


def summary_frame(results: dict, best, bits_key: str) -> pd.DataFrame:
    """One row per strategy at this budget: its bits and predicted loss, and that against
    optimal's; a strategy that cannot reach the budget has no numbers (shown as a dash) and
    says why not."""
    rows = []
    for s, a in results.items():
        if isinstance(a, MixvizError):
            none = dict.fromkeys(("avg bits", "predicted loss", "vs optimal"), float("nan"))
            rows.append({"strategy": s, **none, "why not": str(a)})
            continue
        ratio = a.predicted_loss / best.predicted_loss if best.predicted_loss else float("nan")
        rows.append(
            {
                "strategy": s,
                "avg bits": getattr(a, bits_key),
                "predicted loss": a.predicted_loss,
                "vs optimal": ratio,
                "why not": "" if best.predicted_loss else "optimal predicts no loss",
            }
        )
    return pd.DataFrame(rows)


def frontier_view(page: Setting, avg: float) -> None:
    """Predicted loss against average bits along the optimal frontier, marked at ``avg``; the
    refine rounds at ``avg`` when measured; how far the prediction held over finished runs."""
    st.subheader("Predicted loss vs average bits")
    choice = page.choice
    front = ui.frontier_for(page.problem, page.problem_key)
    refining.resume_inputs(page, avg)  # a fresh session: the latest refine job's settings
    refined = refining.finished(page, avg, *refine_settings())
    if refined is not None:
        front = {**front, "refined (measured rounds)": trust.refinement_points(refined)}
    st.vega_lite_chart(
        spec=charts.frontier_chart(
            front, avg, choice.ignore_scale_bits, x_min=page.span.lo, metric=page.profile.metric
        ),
        key="allocate_frontier",
        width="stretch",
    )
    st.caption(refining.trust_line(page.profile, page.key, choice.model))


def refine_settings() -> tuple[int, str]:
    """The refine panel's rounds and correction, as last set."""
    state = st.session_state
    return int(state.get("allocate_refine_rounds", 3)), state.get("allocate_refine_how", "kind")


def downloads(page: Setting, best, avg: float) -> None:
    """The recipe and what each tool reads; a target that cannot hold it says why below."""
    st.subheader("Download")
    profile, choice = page.profile, page.choice
    ref = ui.model_ref(choice.model, choice.trust_remote_code)
    recipe = Recipe.from_allocation(best, profile.model, ref.hash, sorted(page.locks))
    stem = f"{profile.model.replace('/', '_')}-{avg:g}bits"
    exporters = list(EXPORTERS.values())
    row = 4  # a button wide enough for its whole label ("auto-round layer_config")
    cols = [c for i in range(0, len(exporters), row) for c in st.columns(row)]
    for col, exporter in zip(cols, exporters, strict=False):
        key = f"allocate_download_{exporter.name}"
        if why := exporter.why_not(recipe):
            col.button(exporter.label, disabled=True, key=key)
            col.caption(f"Not available: {why}")
            continue
        # a callable: the file is written on click, not on every slider step
        file = f"{stem}.{exporter.suffix}"
        col.download_button(exporter.label, partial(exporter.render, recipe), file, key=key)


def quantize(page: Setting, best, avg: float) -> None:
    """Write the allocation as a real checkpoint (a queued job), GGML layers with the
    profile's importance matrix where it has one."""
    st.subheader("Quantize")
    st.caption("Write this allocation as a real checkpoint with auto-round's exporter; the job "
               "reloads the files from disk and checks them against the in-memory model (formats "
               "read from the files, bytes, KLD); a format that cannot says why.")  # fmt: skip
    ui.quantize_panel(page.choice, dict(best.layers), best.strategy, avg, "allocate",
                      imatrix=ui.profile_imatrix(page.profile))  # fmt: skip


# --------------------------------------------------------------------------- editing


def edit_panel(
    page: Setting, avg: float, clicked: list[str] | None, grid_rows=(), grid_cols=()
) -> None:
    """Lock the selected cells (picked on the heatmap, or whole rows / columns) and undo."""
    with st.expander("Edit: lock layers, the rest re-solves at the same budget", expanded=True):
        names = selection(page, clicked, grid_rows, grid_cols)
        edit_buttons(page, avg, names, clicked is not None)
        refused_edit()


def selection(page: Setting, clicked: list[str] | None, grid_rows, grid_cols) -> list[str]:
    """The layers picked on the heatmap and in the block / module pickers (fused groups whole),
    said in a caption."""
    c1, c2, c3 = st.columns([2, 2, 1])
    rows = c1.multiselect("Whole blocks (rows)", page.blocks, key="edit_blocks")
    cols = c2.multiselect("Whole modules (columns)", page.kinds, key="edit_kinds")
    runtime = RUNTIMES[page.choice.target].shared if page.choice.target else ()
    fused = [g for g in ("qkv", "gate_up") if g in page.choice.shared or g in runtime]
    c3.caption(
        f"Fused groups move together: {', '.join(fused)}"
        if fused
        else "Fused groups: off (sidebar → shared groups)"
    )
    names = select(
        page.profile.layers, clicked or (), [*rows, *grid_rows], [*cols, *grid_cols], fused
    )
    if names and c3.button("Clear selection", key="edit_clear"):
        clear_selection(page.version)
        st.rerun()
    st.caption(
        f"{len(names)} selected"
        + (
            f": {', '.join(names[:6])}{' …' if len(names) > 6 else ''}"
            if names
            else " — click cells, rows or columns on the heatmap (each click adds), "
            "or pick them here"
        )
    )
    return names


def edit_buttons(page: Setting, avg: float, names: list[str], on_heatmap: bool) -> None:
    """Set / lock as is / unlock the selection; undo, redo, reset."""
    locks, history = page.locks, page.edits.history
    c1, c2, c3, c4, c5, c6, c7 = st.columns([2, 1, 1, 1, 1, 1, 1.4])
    option = c1.selectbox(
        "Option", [*page.profile.options, "BF16"], key="edit_option", label_visibility="collapsed"
    )
    if c2.button(f"Set {option}", key="edit_set", disabled=not names):
        propose(page, lock(locks, names, option), avg, f"Setting {len(names)} layers to {option}")
    if c3.button("Lock as is", key="edit_lock", disabled=not names or not on_heatmap):
        current = st.session_state.get("allocation", {}).get("layers", {})
        kept = {n: current[n] for n in names if n in current}
        propose(page, {**locks, **kept}, avg, f"Locking {len(kept)} layers as they are")
    if c4.button("Unlock", key="edit_unlock", disabled=not set(names) & set(locks)):
        propose(page, unlock(locks, names), avg, f"Unlocking {len(names)} layers")
    if c5.button("Undo", key="edit_undo", disabled=not history.can_undo):
        apply_edits(current_edits().undo())
    if c6.button("Redo", key="edit_redo", disabled=not history.can_redo):
        apply_edits(current_edits().redo())
    if c7.button("Reset to optimal", key="edit_reset", disabled=not locks):
        apply_edits(current_edits().reset())


def refused_edit() -> None:
    """The last edit the budget could not hold: why, and the budget that would hold it."""
    why = current_edits().refused
    if why is None:
        return
    st.error(why.message)
    if why.locks is not None:
        target = why.budget
        if st.button(
            f"Raise the budget to {target:.2f} bits and apply"
            if target > st.session_state.get("budget", target)
            else f"Lower the budget to {target:.2f} bits and apply",
            key="edit_move_budget",
        ):
            apply_edits(current_edits().apply_refused())


NO_LOCK = "— (free)"


def lock_table(page: Setting, budget: float) -> None:
    """Every block linear with its lock, editable: a changed table is proposed as the locks."""
    st.subheader("Locks")
    table = pd.DataFrame(
        [
            {
                "layer": x.name,
                "block": x.block,
                "kind": x.kind,
                "lock": page.locks.get(x.name, NO_LOCK),
            }
            for x in page.profile.layers
            if x.block is not None
        ]
    )
    edited = st.data_editor(
        table,
        hide_index=True,
        key=f"allocate_lock_editor_{page.version}_{page.edits.refusals}",
        disabled=["layer", "block", "kind"],
        column_config={
            "lock": st.column_config.SelectboxColumn(
                "lock",
                options=[NO_LOCK, *page.profile.options, "BF16"],
                help=f"{NO_LOCK}: not locked, the solver picks",
                required=True,
            )
        },
    )
    new_locks = {
        r.layer: r.lock
        for r in edited.itertuples()
        if isinstance(r.lock, str) and r.lock not in (NO_LOCK, "")
    }
    if new_locks != page.locks:
        propose(page, new_locks, budget, "This lock table")


# --------------------------------------------------------------------------- the page

choice = ui.choice()
st.title("Allocate")
profile = ui.require_profile(choice)
page = setting(choice, profile, edits_from_link(profile))
start = budget_start(page)
budget_view(page, start)
lock_table(page, st.session_state.get("budget", start))
refining.refine_panel(page, st.session_state.get("budget", start))
