"""Runs page: run the comparison at the slider's budget; watch the queue and read a run's log."""

import time

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.allocation.strategies import STRATEGIES, allocate
from mixviz.report.tables import DISPLAY, primary_metric, rests_on
from mixviz.runs.evaluation.tasks import BUNDLED_TASKS, check_tasks
from mixviz.runs.jobs.backends import get_backend, read_log, submit_once
from mixviz.runs.jobs.logs import clean_log
from mixviz.runs.progress import duration
from mixviz.runs.runspec import RunSpec
from mixviz.runs.ship.delivery import checkpoint_state
from mixviz.runs.ship.step import ship_document
from mixviz.runs.ship.vllm_check import vllm_line
from mixviz.runs.store import FINAL, Store, read_result
from ui.allocating import page_locks

choice = ui.choice()
st.title("Runs")

try:
    store = Store()
    backend = get_backend(store=store)
except MixvizError as e:
    st.error(str(e))
    st.stop()

budget = ui.url_bits(st.session_state.get("budget", 5.0))
st.session_state["budget"] = budget  # the session carries it to the other pages
ui.url_write(bits=f"{budget:g}")  # and the URL through a reload or a shared link


def locks_count() -> int:
    """How many locks the comparison runs with (kept in the URL); 0 before a profile."""
    try:
        profiled = ui.cached_profile(choice)
    except MixvizError:  # a bad model: said when the comparison is asked for
        return 0
    return len(page_locks(profiled)) if profiled is not None else 0


locked = locks_count()
st.caption(
    f"Quantize with auto-round (RTN) and evaluate with lm-eval, in the background "
    f"({backend.name} backend). Budget from the Allocate page: **{budget:g} bits**"
    + (f", with its **{locked} locks**. " if locked else ". ")
    + "Runs with the same model, recipe, tasks and settings are one run."
)

c1, c2 = st.columns([3, 1])
tasks = c1.multiselect(
    "Tasks",
    [*BUNDLED_TASKS, "lambada_openai", "hellaswag", "piqa", "winogrande", "mmlu"],
    default=["mixviz_lastword", "mixviz_nextsent", "mixviz_kld"],
    key="runs_tasks",
    accept_new_options=True,
    help="Bundled tasks work offline; the real ones need the hub. mixviz_kld: KL divergence "
    "to the unquantized model over the held-out text, per token.",
)
if "runs_limit" not in st.session_state:  # a fresh session: a link's ?limit=
    st.session_state["runs_limit"] = ui.url_int("limit", 0, 0, 100000, "Items per task") or None
limit = c2.number_input(
    "Items per task",
    1,
    100000,
    None,
    key="runs_limit",
    persist_state="session",  # kept while other pages are open: the next runs are this size
    placeholder="all",
    help="Empty = every item (the default: fewer items, wider intervals). For mixviz_kld it "
    "counts 512-token windows.",
)

if limit:
    ui.url_write(limit=str(int(limit)))
else:
    ui.url_drop("limit")


def comparison_specs() -> list[RunSpec]:
    """BF16, every layer in the cheapest format, and each budgeted strategy at the budget
    (with the Allocate page's locks)."""
    profile = ui.cached_profile(choice)
    if profile is None:
        raise MixvizError("profile this model first (Profile page)")
    check_tasks(tasks)
    ref = ui.model_ref(choice.model, choice.trust_remote_code)
    problem = ui.problem_for(
        profile,
        profile.key,
        choice.ignore_scale_bits,
        choice.shared,
        tuple(sorted(page_locks(profile).items())),
        choice.target,
    )
    base = dict(
        model=choice.model,
        tasks=tuple(tasks),
        limit=int(limit) if limit else None,
        model_hash=ref.hash,
        trust_remote_code=choice.trust_remote_code,
        device=choice.device,
        dtype=choice.dtype,
    )
    lowest = profile.options[0]
    specs = [
        RunSpec(recipe=None, strategy="bf16", **base),
        RunSpec(
            recipe={x.name: lowest for x in profile.layers if x.block is not None},
            strategy=f"pure {lowest}",
            **base,
        ),
    ]
    for strategy in [s.name for s in STRATEGIES.values() if s.budgeted]:
        a = allocate(problem, budget, strategy)
        specs.append(RunSpec(recipe=dict(a.layers), strategy=strategy, budget=budget, **base))
    return specs


if st.button(f"Run the comparison at {budget:g} bits", type="primary", key="runs_start"):
    try:
        specs = comparison_specs()
        submitted = submit_once(backend, specs)
        new = {i for i, reused in submitted if not reused}
        had = {i for i, _ in submitted} - new
        same = len(specs) - len(new) - len(had)
        mine = st.session_state.setdefault("runs_queued_here", set())  # by earlier clicks
        said = [f"{len(had & mine)} queued by your earlier click"] if had & mine else []
        said += [f"{len(had - mine)} already done or queued"] if had - mine else []
        said += [f"{same} identical to another in this comparison, run once"] if same else []
        mine |= new
        st.success(f"Queued {len(new)} runs" + (f" ({'; '.join(said)})." if said else "."))
    except MixvizError as e:
        st.error(str(e))


def planned_bits(row) -> float | None:
    """A run's average bits: measured once quantized, else from its recipe (16 for BF16)."""
    if row.avg_bits is not None:
        return row.avg_bits
    recipe = row.spec.get("recipe")
    if row.spec.get("refine"):  # a refine job: the budget it refines at
        return float(row.spec["refine"]["avg_bits"])
    if recipe is None:
        return 16.0
    try:
        return ui.recipe_bits(row.model, tuple(sorted(recipe.items())))
    except (MixvizError, KeyError):
        return None


def headline(row) -> dict[str, str]:
    """A finished run's accuracy per task (its primary metric) and KLD, when measured."""
    if row.status != "done":
        return {}
    out = {}
    for task, metrics in store.results(row.id).items():
        m = primary_metric(metrics)
        if m is not None and metrics[m] is not None:
            out[task] = f"{metrics[m]:.4f} {m}"
        if metrics.get("kld") is not None:
            out["kld"] = f"{metrics['kld']:.4g}"
    return out


def run_time(row) -> str:
    """``'took 1:15'`` once finished; ``'0:40 elapsed, ~2:00 left'`` while it runs."""
    if row.status in FINAL:
        return f"took {duration(row.elapsed)}" if row.elapsed is not None else ""
    return row.eta()


def queue_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": r.id,
                "run": DISPLAY.get(r.label, r.label),
                "status": r.status,
                "stage": r.stage,
                "progress": r.progress,
                "time": run_time(r),
                "bits": planned_bits(r),
                **headline(r),
                "error": r.error or "",
            }
            for r in reversed(rows)
        ]
    )


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
    frame = queue_frame(rows)
    text = [c for c in frame if c not in ("progress", "bits")]
    frame[text] = frame[text].astype(object).fillna("")  # a run not finished: blank, not None
    first = ["run", "status", "stage", "progress", "time", "bits"]
    st.dataframe(
        frame,
        hide_index=True,
        key="runs_queue",
        column_order=[
            *first,
            *[c for c in frame if c not in (*first, "error", "id")],
            "error",
            "id",
        ],
        column_config={
            "run": st.column_config.TextColumn("run", width="large"),
            # sized for its longest value, not the first ones it showed ("cancelled" was cut)
            "status": st.column_config.TextColumn("status", width=90),
            "stage": st.column_config.TextColumn("stage", width="medium"),
            "id": st.column_config.TextColumn("id", width="small"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
            "time": st.column_config.TextColumn("time", width="medium"),
            "bits": st.column_config.NumberColumn("bits", format="%.3f"),
        },
    )
    for r in rows:
        if r.status == "running":
            st.caption(
                f"**{DISPLAY.get(r.label, r.label)}**: {r.stage}, {r.progress:.0%} · {run_time(r)}"
            )
    st.caption(f"updated {time.strftime('%H:%M:%S')}")


def details(rows) -> None:
    """One run (the running one unless another is picked): cancel it, read its log."""
    st.subheader("Details")
    ids = [r.id for r in reversed(rows)]
    running = next((r.id for r in reversed(rows) if r.status == "running"), None)
    active = next((r.id for r in reversed(rows) if r.status not in FINAL), None)
    default = running or active or ids[0]
    pick = st.selectbox(
        "Run",
        ids,
        index=ids.index(default),
        key="runs_pick",
        format_func=lambda i: f"{i} — {DISPLAY.get(labels[i], labels[i])}",
    )
    row = store.get(pick)
    if row.status not in FINAL and st.button("Cancel this run", key="runs_cancel"):
        try:
            get_backend(row.backend, store).cancel(pick)
            st.rerun()
        except MixvizError as e:
            st.error(str(e))
    result = read_result(pick) if row.status == "done" else None
    if result is not None:
        st.caption(f"Measured on {rests_on(result.machine, result.timings)}")
    shipped = ship_document(pick)
    if shipped:
        checkpoint(shipped)
        kept = checkpoint_state(pick) if row.status == "done" else None
        if kept and kept["state"] != "intact":
            st.warning(f"This run's checkpoint files are {kept['state']} ({kept['why']}): "
                       "quantizing the same recipe again writes them anew")  # fmt: skip
    elif row.status == "done" and row.spec.get("recipe"):
        with st.expander("Save this run's model as a checkpoint"):
            imatrix = (row.spec.get("quant") or {}).get("imatrix")  # the run's own
            ui.quantize_panel(choice, row.spec["recipe"], labels[pick], row.spec.get("budget"),
                              "runs", imatrix=imatrix)  # fmt: skip
    with st.expander("Log", expanded=row.status not in FINAL):
        st.code(clean_log(read_log(pick))[-8000:] or "(empty)", language=None)


def checkpoint(doc: dict) -> None:
    """What a quantize job wrote and how it checked out on reload."""
    mem = {m: (v, se) for m, v, se in doc["kld_memory"]}
    dsk = {m: (v, se) for m, v, se in doc["kld_reloaded"]}
    d = doc["delta_kld"]
    ok = sum(f["ok"] for f in doc["layers"].values())
    (st.success if doc["ok"] else st.error)(
        f"{doc['format']} checkpoint in `{doc['file']}` ({doc['total_bytes'] / 2**20:.1f} MiB): "
        f"{ok} of {len(doc['layers'])} layers carry the recipe's format in the files; "
        f"quantized bytes ÷ predicted {doc['quantized_bytes_ratio']:.4f}"
    )
    llama = doc.get("llama_cpp") or {}
    measured = [("in memory", mem), ("reloaded from disk", dsk)]
    if "kld" in llama:
        measured.append(("llama.cpp (llama-perplexity)", llama))
    vllm = doc.get("vllm") or {}
    for v in [vllm, *vllm.get("also", ())]:
        if "kld" in v:  # vLLM itself loaded and scored the files (--verify-with vllm)
            kld = {m: (a, b) for m, a, b in v["kld"]}
            measured.append((f"vLLM {v['version']} ({v['dtype']})", kld))
    rows = [
        {
            "model": name,
            "KLD": f"{m['kld'][0]:.5f} ± {m['kld'][1]:.5f}",
            "top-1 %": f"{100 * m['top1'][0]:.2f} ± {100 * m['top1'][1]:.2f}",
        }
        for name, m in measured
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="runs_checkpoint")
    st.caption(
        f"KLD to the unquantized model over {int(mem['tokens'][0])} held-out tokens (± se over "
        f"512-token windows); reloaded − in memory: {d['delta']:+.2e} [{d['lo']:+.2e}, "
        f"{d['hi']:+.2e}] (95 %, paired by window)"
        + (f". llama.cpp: {llama['skipped']}" if "skipped" in llama else "")
        + (f". {llama['why']}" if llama.get("checked") is False else "")
        + (
            f". llama.cpp's KLD on its positions (second half of each window): "
            f"{'agrees with' if llama['agrees'] else 'DISAGREES with'} the in-memory "
            f"{llama['memory_kld'][0]:.5f} ± {llama['tolerance']:.5f}"
            if llama.get("agrees") is not None
            else ""
        )
        + f". {vllm_line(doc.get('vllm'))}"
    )


st.subheader("Queue")
queue()

rows = store.list()
labels = {r.id: r.label for r in rows}
if rows:
    details(rows)
