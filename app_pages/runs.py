"""Runs page: run the comparison at the slider's budget; watch the queue."""

import time

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.allocation.strategies import STRATEGIES, allocate
from mixviz.runs.backends import get_backend, read_log
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import FINAL, Store
from mixviz.runs.tasks import BUNDLED_TASKS, check_tasks

choice = ui.sidebar()
st.title("Runs")

try:
    store = Store()
    backend = get_backend(store=store)
except MixvizError as e:
    st.error(str(e))
    st.stop()

budget = ui.url_bits(st.session_state.get("budget", 5.0))
st.caption(
    f"Quantize with auto-round (RTN) and evaluate with lm-eval, in the background "
    f"({backend.name} backend). Budget from the Allocate page: **{budget:g} bits**."
)

c1, c2 = st.columns([3, 1])
tasks = c1.multiselect(
    "Tasks",
    [*BUNDLED_TASKS, "lambada_openai", "hellaswag", "piqa", "winogrande", "mmlu"],
    default=["mixviz_lastword", "mixviz_nextsent"],
    key="runs_tasks",
    accept_new_options=True,
    help="Bundled tasks work offline; the real ones need the hub.",
)
limit = c2.number_input("Items per task", 1, 100000, 50, key="runs_limit")

if st.button(f"Run the comparison at {budget:g} bits", type="primary", key="runs_start"):
    try:
        profile = ui.cached_profile(choice)
        if profile is None:
            raise MixvizError("profile this model first (Profile page)")
        check_tasks(tasks)
        ref = ui.model_ref(choice["model"], choice["trust_remote_code"])
        problem = ui.problem_for(
            profile,
            profile.key,
            choice["ignore_scale_bits"],
            tuple(choice["shared"]),
            tuple(sorted(st.session_state.get("allocate_pins", {}).items())),
        )
        base = dict(
            model=choice["model"],
            tasks=tuple(tasks),
            limit=int(limit),
            model_hash=ref.hash,
            trust_remote_code=choice["trust_remote_code"],
        )
        specs = [RunSpec(recipe=None, strategy="bf16", **base)]
        lowest = profile.options[0]
        specs.append(
            RunSpec(
                recipe={x.name: lowest for x in profile.layers if x.block is not None},
                strategy=f"pure {lowest}",
                **base,
            )
        )
        for strategy in [s.name for s in STRATEGIES.values() if s.budgeted]:
            a = allocate(problem, budget, strategy)
            specs.append(RunSpec(recipe=dict(a.layers), strategy=strategy, budget=budget, **base))
        have = {r.key for r in store.list(("queued", "starting", "running", "done"))}
        queued = [backend.submit(s) for s in specs if s.key not in have]
        st.success(
            f"Queued {len(queued)} runs ({len(specs) - len(queued)} already done or queued)."
        )
    except MixvizError as e:
        st.error(str(e))


@st.fragment(run_every=2)
def queue() -> None:
    try:
        backend.kick()
        rows = store.list()
    except MixvizError as e:
        st.error(str(e))
        return
    if not rows:
        st.info("No runs yet.")
        return
    frame = pd.DataFrame(
        [
            {
                "id": r.id,
                "model": r.model,
                "run": r.label,
                "status": r.status,
                "stage": r.stage,
                "progress": r.progress,
                "elapsed s": round(r.elapsed or 0, 1),
                "bits": r.avg_bits,
                "error": r.error or "",
            }
            for r in reversed(rows)
        ]
    )
    st.dataframe(
        frame,
        hide_index=True,
        key="runs_queue",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)
        },
    )
    st.caption(f"updated {time.strftime('%H:%M:%S')}")


st.subheader("Queue")
queue()

rows = store.list()
if rows:
    st.subheader("Details")
    pick = st.selectbox(
        "Run",
        [r.id for r in reversed(rows)],
        key="runs_pick",
        format_func=lambda i: f"{i} — {store.get(i).label}",
    )
    row = store.get(pick)
    if row.status not in FINAL and st.button("Cancel this run", key="runs_cancel"):
        try:
            get_backend(row.backend, store).cancel(pick)
            st.rerun()
        except MixvizError as e:
            st.error(str(e))
    with st.expander("Log"):
        st.code(read_log(pick)[-8000:] or "(empty)")
