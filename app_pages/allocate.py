"""Allocate page: the budget slider, the optimal allocation beside the baselines, and hand edits
(locks) on the heatmap that the solver re-solves around."""

import json
from collections.abc import Callable
from typing import NamedTuple

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.allocation.edits import History, edit_cost, lock, select, unlock
from mixviz.allocation.strategies import STRATEGIES, allocate, strategy_names
from mixviz.models.inventory import KINDS
from mixviz.report import charts
from mixviz.report.export import autoround_layer_config, autoround_script, export
from mixviz.report.recipe import Recipe

choice = ui.sidebar()
st.title("Allocate")

profile = ui.require_profile(choice)

layer_names = {x.name for x in profile.layers}
history: History = st.session_state.get("allocate_history", History())
version = f"{history.pos}_{len(history.states)}"  # new keys reset selections after an edit
locks = {k: v for k, v in history.current.items() if k in layer_names}
st.session_state["allocate_pins"] = locks  # what the Runs page allocates with
shared = tuple(choice["shared"])
if "allocate_budget_next" in st.session_state:  # an edit, undo or reset brings its budget
    st.session_state["allocate_avg_bits"] = st.session_state.pop("allocate_budget_next")


def commit(new: History) -> None:
    """Make ``new`` the edit history (its budget the slider's) and redraw the page with it;
    the block / module pickers start empty again."""
    st.session_state["allocate_history"] = new
    st.session_state.pop("allocate_refused", None)
    for key in ("edit_blocks", "edit_kinds"):
        st.session_state.pop(key, None)
    if new.budget is not None:
        st.session_state["allocate_budget_next"] = new.budget
    st.rerun()


def current_history() -> History:
    """The edit history as it stands now (a fragment rerun may have moved its budget)."""
    return st.session_state.get("allocate_history", history)


def slider_range(lo: float, hi: float) -> tuple[float, float]:
    """The slider's ends inside the feasible ``lo``–``hi``, at its 0.01 steps."""
    return round(lo + 0.005, 2), round(hi - 0.005, 2)


def propose(new_locks: dict[str, str], budget: float, what: str) -> None:
    """Make ``new_locks`` the locks if ``budget`` can hold them; else change nothing and say
    which budgets can (with a button that moves the budget there and applies them)."""
    try:
        p = ui.problem_for(
            profile,
            profile.key,
            choice["ignore_scale_bits"],
            shared,
            tuple(sorted(new_locks.items())),
            choice["target"],
        )
        lo, hi = p.feasible_range()
    except MixvizError as e:
        refuse({"message": f"{what}: {e}. Nothing was changed."})
    lo_s, hi_s = slider_range(lo, hi)
    fixed = hi_s - lo_s < 0.01  # the locks leave one average
    if (abs(budget - hi) < 0.005) if fixed else (lo_s <= budget <= hi_s):
        commit(current_history().push(new_locks, budget))
    target = hi if fixed else min(max(budget, lo_s), hi_s)
    refuse(
        {
            "message": f"{what} needs an average of {lo:.2f}–{hi:.2f} bits; the budget is "
            f"{budget:g} bits. Nothing was changed.",
            "locks": new_locks,
            "budget": target,
        }
    )


def refuse(why: dict) -> None:
    st.session_state["allocate_refused"] = why
    st.session_state["allocate_editor_nonce"] = st.session_state.get("allocate_editor_nonce", 0) + 1
    st.rerun()


try:
    target = choice["target"]
    free = ui.problem_for(profile, profile.key, choice["ignore_scale_bits"], shared, (), target)
    problem = ui.problem_for(
        profile,
        profile.key,
        choice["ignore_scale_bits"],
        shared,
        tuple(sorted(locks.items())),
        target,
    )
except MixvizError as e:
    st.error(str(e))
    if locks:  # an edit made the problem impossible: offer the way back
        c1, c2 = st.columns(2)
        if c1.button("Undo the last edit", key="edit_undo_broken", disabled=not history.can_undo):
            commit(current_history().undo())
        if c2.button("Reset to optimal", key="edit_reset_broken"):
            commit(current_history().reset())
    st.stop()

lo, hi = problem.feasible_range()
lo_s, hi_s = slider_range(lo, hi)
default = min(max(5.0, lo_s), hi_s)
held = st.session_state.get("allocate_avg_bits")  # the slider's (or an edit's) budget
start = ui.url_bits(default) if held is None else held
if hi_s - lo_s < 0.01:
    start = hi
elif not lo_s <= start <= hi_s:
    if held is None:  # a link's budget; edits that move the range are refused before this
        st.error(
            f"Average bits {start:g} is outside the feasible range {lo:.2f}–{hi:.2f}; "
            "using the nearest feasible value."
        )
    start = min(max(start, lo_s), hi_s)
    if held is not None:
        st.session_state["allocate_avg_bits"] = start
bits_key = "avg_bits_no_scale" if choice["ignore_scale_bits"] else "avg_bits"


class Shown(NamedTuple):
    """What the heatmap draws: an allocation (or the error that stopped it), its marked
    layers, its title and what the marks mean."""

    allocation: object
    marked: set[str]
    title: str
    mark_label: str


@st.fragment
def budget_view() -> None:
    """The slider and everything that depends on it: reruns alone when it moves."""
    avg = budget_slider()
    try:
        cost = edit_cost(free, problem, avg)
    except MixvizError as e:
        st.error(str(e))
        edit_panel(avg, None)
        return
    best = cost.after
    st.session_state["allocation"] = best.to_dict()
    result = solved_on_demand(best, avg)
    cost_metrics(cost, avg)
    picked = heatmap(cost, result)
    if picked is not None:
        edit_panel(avg, *picked)
    else:
        refused_edit()
    summary = {s: result(s) for s in strategy_names(problem)}
    st.dataframe(summary_frame(summary, best), hide_index=True, key="allocate_summary")
    frontier_view(avg)
    downloads(best, avg)
    st.subheader("Quantize")
    st.caption(
        "Write this allocation as a real checkpoint with auto-round's exporter; the job reloads "
        "the files from disk and checks them against the in-memory model (formats read from "
        "the files, bytes, KLD). A format that cannot hold the recipe says why."
    )
    ui.quantize_panel(choice, dict(best.layers), best.strategy, avg, "allocate")


def budget_slider() -> float:
    """The average-bits slider (or the one value the locks leave); kept in the URL."""
    if hi_s - lo_s < 0.01:  # the locks fix every layer
        avg = hi
        st.info(f"The locks fix every layer: {hi:.3f} average bits. Unlock some to re-solve.")
    else:
        avg = st.slider(
            "Average bits",
            lo_s,
            hi_s,
            None if "allocate_avg_bits" in st.session_state else start,  # the state's wins
            0.01,
            key="allocate_avg_bits",
            help="Without scale bits" if choice["ignore_scale_bits"] else "With scale bits",
        )
    ui.url_write(bits=f"{avg:g}")
    if not choice["ignore_scale_bits"]:  # with scales, the average is llama.cpp's bpw
        size = ui.file_size(choice["model"], avg, problem.total_numel)
        st.caption(f"= {avg:.2f} bpw (scales included) · a file of about {size}")
    st.session_state["budget"] = avg
    st.session_state["allocate_history"] = current_history().at_budget(avg)
    return avg


def solved_on_demand(best, avg: float) -> Callable[[str], object]:
    """``result(strategy)``: a strategy's allocation at this budget (or its error), solved when
    first asked: the default view draws the optimal heatmap before the baselines are solved."""
    results = {"optimal": best}

    def result(strategy: str):
        if strategy not in results:
            try:
                results[strategy] = allocate(problem, avg, strategy)
            except MixvizError as e:
                results[strategy] = e
        return results[strategy]

    return result


def cost_metrics(cost, avg: float) -> None:
    """Predicted loss, achieved bits and the layers locked / moved, and what the locks cost."""
    best = cost.after
    c1, c2, c3 = st.columns(3)
    c1.metric(
        "Optimal: predicted loss",
        f"{best.predicted_loss:.4g}",
        f"{cost.loss_ratio - 1:+.1%} from the locks" if locks else None,
        delta_color="inverse",
    )
    before_bits, after_bits = getattr(cost.before, bits_key), getattr(best, bits_key)
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


def heatmap(cost, result) -> tuple[list, list, list] | None:
    """One strategy's allocation (or where optimal disagrees with one) as a grid or a chart.

    Returns what is selected on it — ``(cells, blocks, kinds)`` for :func:`edit_panel` — when
    it is the optimal one, which is the one edited; else None."""
    c1, c2 = st.columns([4, 1])
    view = c1.radio(
        "Heatmap",
        [*strategy_names(problem), "diff"],
        horizontal=True,
        key="allocate_view",
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
        shown = heatmap_content(view, cost, result)
        if isinstance(shown.allocation, MixvizError):
            st.error(str(shown.allocation))
        elif draw == "grid":
            picked = heatmap_grid(shown, view, editable)
        else:
            picked = heatmap_chart(shown, editable)
    return picked if editable else None


def heatmap_content(view: str, cost, result) -> Shown:
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


def heatmap_grid(shown: Shown, view: str, editable: bool) -> tuple[list, list, list]:
    """The heatmap as a styled grid (block × module); cells, rows and columns selectable."""
    chosen = shown.allocation
    title = shown.title + f": {getattr(chosen, bits_key):.3f} average bits"
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
        set(locks) if editable else set(),
        shown.marked,
    )
    clears = st.session_state.get("allocate_grid_clears", 0)
    event = st.dataframe(
        styler,
        key=f"allocate_grid_{view}_{version}" + (f"_{clears}" if clears else ""),
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
    return (*gathered(names, [blocks[r] for r in sel.rows]), [])


def gathered(names: list[str], rows: list[int]) -> tuple[list[str], list[int]]:
    """What the grid's clicks picked since the last edit: each click adds to the selection
    (the grid itself keeps only the last one), until *Clear selection* or an edit."""
    key = f"allocate_picked_{version}"
    now = (tuple(names), tuple(rows))
    had_names, had_rows = st.session_state.get(key, ((), ()))
    if now != st.session_state.get(f"{key}_last"):  # a new click on the grid: add it
        st.session_state[f"{key}_last"] = now
        had_names = tuple(dict.fromkeys([*had_names, *names]))
        had_rows = tuple(dict.fromkeys([*had_rows, *rows]))
        st.session_state[key] = (had_names, had_rows)
    return list(had_names), list(had_rows)


def clear_selection() -> None:
    """Forget the grid's gathered clicks and start its selection afresh."""
    st.session_state.pop(f"allocate_picked_{version}", None)
    st.session_state.pop(f"allocate_picked_{version}_last", None)
    st.session_state["allocate_grid_clears"] = st.session_state.get("allocate_grid_clears", 0) + 1
    for key in ("edit_blocks", "edit_kinds"):
        st.session_state.pop(key, None)


def heatmap_chart(shown: Shown, editable: bool) -> tuple[list, list, list]:
    """The heatmap as a plotly chart, layer names on hover; cells selectable by click or box."""
    chosen = shown.allocation
    title = shown.title + f": {getattr(chosen, bits_key):.3f} average bits"
    fig = charts.allocation_heatmap(
        profile.layers,
        chosen,
        list(profile.options),
        title,
        shown.marked,
        set(locks) if editable else set(),
        selectable=editable,
        highlight_label=shown.mark_label,
    )
    if not editable:
        st.plotly_chart(fig, key="allocate_heatmap_view")
        return [], [], []
    event = st.plotly_chart(
        fig,
        key=f"allocate_heatmap_{version}",
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
    )
    return (
        [
            p["customdata"][0]
            for p in event.selection.points
            if p.get("customdata") and p["customdata"][0] in layer_names
        ],
        [],
        [],
    )


def frontier_view(avg: float) -> None:
    """Predicted loss against average bits along the optimal frontier, marked at ``avg``."""
    st.subheader("Predicted loss vs average bits")
    front = ui.frontier_for(
        problem,
        (profile.key, choice["ignore_scale_bits"], shared, tuple(sorted(locks.items())), target),
    )
    st.vega_lite_chart(
        spec=charts.frontier_chart(front, avg, choice["ignore_scale_bits"], x_min=lo),
        key="allocate_frontier",
        width="stretch",
    )


def summary_frame(results: dict, best) -> pd.DataFrame:
    rows = []
    for s, a in results.items():
        if isinstance(a, MixvizError):
            rows.append({"strategy": s, "avg bits": None, "predicted loss": None})
            continue
        rows.append(
            {
                "strategy": s,
                "avg bits": getattr(a, bits_key),
                "predicted loss": a.predicted_loss,
                "vs optimal": a.predicted_loss / best.predicted_loss
                if best.predicted_loss
                else None,
            }
        )
    return pd.DataFrame(rows)


def edit_panel(
    avg: float, clicked: list[str] | None, grid_rows: list[int] = (), grid_cols: list[str] = ()
) -> None:
    """Lock the selected cells (picked on the heatmap, or whole rows / columns) and undo."""
    blocks = sorted({x.block for x in profile.layers if x.block is not None})
    kinds = [k for k in KINDS if any(x.kind == k and x.block is not None for x in profile.layers)]
    with st.expander("Edit: lock layers, the rest re-solves at the same budget", expanded=True):
        c1, c2, c3 = st.columns([2, 2, 1])
        rows = c1.multiselect("Whole blocks (rows)", blocks, key="edit_blocks")
        cols = c2.multiselect("Whole modules (columns)", kinds, key="edit_kinds")
        fused = [g for g in ("qkv", "gate_up") if g in shared]
        c3.caption(
            f"Fused groups move together: {', '.join(fused)}"
            if fused
            else "Fused groups: off (sidebar → shared groups)"
        )
        names = select(
            profile.layers, clicked or (), [*rows, *grid_rows], [*cols, *grid_cols], fused
        )
        if names and c3.button("Clear selection", key="edit_clear"):
            clear_selection()
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
        c1, c2, c3, c4, c5, c6, c7 = st.columns([2, 1, 1, 1, 1, 1, 1.4])
        option = c1.selectbox(
            "Option", [*profile.options, "BF16"], key="edit_option", label_visibility="collapsed"
        )
        if c2.button(f"Set {option}", key="edit_set", disabled=not names):
            propose(lock(locks, names, option), avg, f"Setting {len(names)} layers to {option}")
        if c3.button("Lock as is", key="edit_lock", disabled=not names or clicked is None):
            current = st.session_state.get("allocation", {}).get("layers", {})
            kept = {n: current[n] for n in names if n in current}
            propose({**locks, **kept}, avg, f"Locking {len(kept)} layers as they are")
        if c4.button("Unlock", key="edit_unlock", disabled=not set(names) & set(locks)):
            propose(unlock(locks, names), avg, f"Unlocking {len(names)} layers")
        if c5.button("Undo", key="edit_undo", disabled=not history.can_undo):
            commit(current_history().undo())
        if c6.button("Redo", key="edit_redo", disabled=not history.can_redo):
            commit(current_history().redo())
        if c7.button("Reset to optimal", key="edit_reset", disabled=not locks):
            commit(current_history().reset())
        refused_edit()


def refused_edit() -> None:
    """The last edit the budget could not hold: why, and the budget that would hold it."""
    why = st.session_state.get("allocate_refused")
    if not why:
        return
    st.error(why["message"])
    if "locks" in why:
        target = why["budget"]
        if st.button(
            f"Raise the budget to {target:.2f} bits and apply"
            if target > st.session_state.get("budget", target)
            else f"Lower the budget to {target:.2f} bits and apply",
            key="edit_move_budget",
        ):
            commit(current_history().push(why["locks"], target))


def downloads(best, avg: float) -> None:
    """The recipe and what each tool reads; a target that cannot hold it says why below."""
    st.subheader("Download")
    ref = ui.model_ref(choice["model"], choice["trust_remote_code"])
    recipe = Recipe.from_allocation(best, profile.model, ref.hash, sorted(locks))
    stem = f"{profile.model.replace('/', '_')}-{avg:g}bits"
    files = [
        ("mixviz recipe", "recipe.json", lambda: json.dumps(recipe.to_dict(), indent=2)),
        ("auto-round layer_config", "layer_config.json", lambda: autoround_layer_config(recipe)),
        ("auto-round script", "autoround.py", lambda: autoround_script(recipe, ref.path)),
        ("GPTQModel", "gptqmodel.json", lambda: export(recipe, "gptqmodel")),
        ("llm-compressor", "llmcompressor.yaml", lambda: export(recipe, "llmcompressor")),
        ("llama.cpp", "llamacpp.txt", lambda: export(recipe, "llamacpp")),
        ("llama.cpp file", "tensor-types.txt", lambda: export(recipe, "llamacpp-file")),
    ]
    for col, (label, suffix, make) in zip(st.columns(len(files)), files, strict=True):
        key = f"allocate_download_{suffix.split('.')[0]}"
        try:
            text = make()  # cheap; raises when the target can't hold the recipe
        except MixvizError as e:
            col.button(label, disabled=True, key=key)
            col.caption(f"Not available: {e}")
            continue
        # a callable: the bytes are made on click, not shipped on every slider step
        col.download_button(label, lambda text=text: text, f"{stem}.{suffix}", key=key)


budget_view()

st.subheader("Locks")
table = pd.DataFrame(
    [
        {"layer": x.name, "block": x.block, "kind": x.kind, "lock": locks.get(x.name, "")}
        for x in profile.layers
        if x.block is not None
    ]
)
edited = st.data_editor(
    table,
    hide_index=True,
    key=f"allocate_lock_editor_{version}_{st.session_state.get('allocate_editor_nonce', 0)}",
    disabled=["layer", "block", "kind"],
    column_config={
        "lock": st.column_config.SelectboxColumn("lock", options=["", *profile.options, "BF16"])
    },
)
new_locks = {r.layer: r.lock for r in edited.itertuples() if r.lock}
if new_locks != locks:
    propose(new_locks, st.session_state.get("budget", start), "This lock table")
