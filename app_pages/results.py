"""Results page: accuracy vs bits per strategy, the study-style table and its exports, and
predicted loss against measured accuracy."""

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.report import charts, tables
from mixviz.report.reproduce import reports_dir
from mixviz.report.trust import run_points
from mixviz.runs.store import Store

choice = ui.choice()
st.title("Results")

try:
    store = Store()
    frame = tables.results_frame(store, choice.model)
except MixvizError as e:
    st.error(str(e))
    st.stop()

report = reports_dir(choice.model) / "tables.md"
if report.is_file():
    with st.expander("The reference study's tables (python -m mixviz reproduce)"):
        st.markdown(report.read_text())
if frame.empty:
    st.info(f"No finished runs for {choice.model} yet (Runs page).")
    st.stop()

tasks = tables.task_columns(frame)
items = ui.items_per_task(store, frame, tasks)
bf16 = frame.loc[frame["strategy"] == "bf16"]
quant = frame[frame["strategy"] != "bf16"]


def reference(column: str) -> float | None:
    """The latest BF16 run's value of ``column`` (the dotted line), when there is one."""
    value = bf16[column].iloc[-1] if len(bf16) else None
    return float(value) if value is not None and pd.notna(value) else None


def chart(fig, key: str, points: pd.DataFrame, y: str) -> None:
    """The figure, and under it which points have no ± and why (as the table says it)."""
    st.plotly_chart(fig, key=key)
    note = charts.missing_intervals(points, y)
    if note:
        st.caption(note)


def accuracy_view() -> None:
    st.subheader("Accuracy vs average bits")
    if quant.empty:
        st.info("The chart needs a finished quantized run (only BF16 has finished).")
        return
    y_title = f"accuracy: mean of {ui.task_metrics(frame, tasks)} over {len(tasks)} tasks{items}"
    chart(
        charts.accuracy_chart(quant, reference("accuracy"), y_title=y_title),
        "results_accuracy",
        quant,
        "accuracy",
    )
    if tasks:
        st.subheader("Per task")
        task = st.selectbox("Task", tasks, key="results_task")
        chart(
            charts.accuracy_chart(
                quant,
                reference(task),
                y=task,
                y_title=f"{task}: {ui.task_metrics(frame, [task])}"
                + ui.items_per_task(store, frame, [task]),
            ),
            "results_task_chart",
            quant,
            task,
        )


def kld_view() -> None:
    """KL divergence from BF16 vs bits, when the runs measured it."""
    if "kld" not in quant or not quant["kld"].notna().any():
        return
    st.subheader("KL divergence from BF16 vs average bits")
    measured = quant[quant["kld"].notna()]
    chart(
        charts.accuracy_chart(
            measured, y="kld", y_title=f"KLD from BF16 (nats/token){ui.windows_note(quant)}"
        ),
        "results_kld",
        measured,
        "kld",
    )


def table_view() -> None:
    st.subheader("Table")
    labels = dict(zip(frame["id"], frame["label"], strict=True))
    compare = st.selectbox(
        "Paired Δ of the average accuracy against",
        [None, *labels],
        format_func=lambda i: "the best baseline at the same bits" if i is None else labels[i],
        key="results_compare",
        help="Runs scored on the same items, compared item by item: the 95 % t interval of the "
        "difference (df = items − 1); * = it excludes 0 (a finding). Without *, the runs are "
        "not told apart; — = fewer than two paired items or windows, so no interval at all.",
    )
    table = tables.study_table(frame, tasks, compare=compare)
    st.table(tables.as_shown(table))
    st.caption(
        'acc ± standard error ("± —" and why where a number has none, e.g. 1 item or 1 '
        "window: no interval); items = the items the average rests on; KLD = mean KL "
        "divergence to the unquantized model per token (± se over 512-token windows; windows "
        "= how many); top-1 = tokens whose most likely next token is unchanged."
    )
    c1, c2, c3 = st.columns(3)
    c1.download_button("Markdown", tables.to_markdown(table), "results.md", key="results_md")
    c2.download_button("CSV", tables.to_csv(table), "results.csv", key="results_csv")
    c3.download_button("LaTeX", tables.to_latex(table), "results.tex", key="results_tex")


def loss_view() -> None:
    """Spearman's ρ (95 % interval) between the profile's predicted loss and the measured KLD
    (the direct yardstick) and accuracy."""
    st.subheader("Predicted loss vs measured")
    profile = ui.require_profile(choice, missing=None)
    if profile is None:
        st.info(
            "Spearman's ρ needs this model's profile with the sidebar's settings (Profile page)."
        )
        return
    pts = run_points(profile, quant)
    from mixviz.report.paired import spearman_ci

    pts_df = pd.DataFrame(pts)
    for y, title in (("kld", "KLD from BF16 (nats/token)"), ("accuracy", "accuracy")):
        have = pts_df[pts_df[y].notna()] if not pts_df.empty else pts_df
        if len(have) < 3:
            st.info(
                f"Needs 3 finished quantized runs with {y} that this profile scores for "
                f"Spearman's ρ (have {len(have)})."
            )
            continue
        rho = ci = None
        if have[y].nunique() > 1 and have["predicted_loss"].nunique() > 1:
            rho, lo, hi = spearman_ci(have["predicted_loss"], have[y])
            ci = (lo, hi)
        else:
            st.info(
                f"Spearman's ρ is not defined for {y}: every run measured the same value (or "
                "has the same predicted loss)."
            )
        fig = charts.loss_vs_accuracy(have, rho, y_title=title, y=y, ci=ci)
        chart(fig, f"results_loss_{y}", have, y)


accuracy_view()
kld_view()
table_view()
loss_view()
