"""Results page: accuracy vs bits per strategy, and the study-style table."""

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.report import charts, tables
from mixviz.report.reproduce import reports_dir
from mixviz.runs.store import Store

choice = ui.sidebar()
st.title("Results")

try:
    frame = tables.results_frame(Store(), choice["model"])
except MixvizError as e:
    st.error(str(e))
    st.stop()

report = reports_dir(choice["model"]) / "tables.md"
if report.is_file():
    with st.expander("The reference study's tables (python -m mixviz reproduce)"):
        st.markdown(report.read_text())
if frame.empty:
    st.info(f"No finished runs for {choice['model']} yet (Runs page).")
    st.stop()

bf16 = frame.loc[frame["strategy"] == "bf16", "accuracy"]
ref = float(bf16.iloc[-1]) if len(bf16) else None
quant = frame[frame["strategy"] != "bf16"]
st.subheader("Accuracy vs average bits")
st.plotly_chart(charts.accuracy_chart(quant, ref), key="results_accuracy")

tasks = tables.task_columns(frame)
if tasks:
    st.subheader("Per task")
    task = st.selectbox("Task", tasks, key="results_task")
    st.plotly_chart(
        charts.accuracy_chart(
            quant,
            frame.loc[frame["strategy"] == "bf16", task].iloc[-1] if ref is not None else None,
            y=task,
        ),
        key="results_task_chart",
    )

st.subheader("Table")
table = tables.study_table(frame, tasks)
st.table(table)
c1, c2, c3 = st.columns(3)
c1.download_button("Markdown", tables.to_markdown(table), "results.md", key="results_md")
c2.download_button("CSV", tables.to_csv(table), "results.csv", key="results_csv")
c3.download_button("LaTeX", tables.to_latex(table), "results.tex", key="results_tex")

profile = ui.require_profile(choice, missing=None)  # the chart below needs it
if profile is not None:
    scores = {(r.layer, r.option): r.score for r in profile.rows}
    pts = []
    for row in quant.itertuples():
        recipe = row.recipe or {}
        vals = [scores.get((n, o)) for n, o in recipe.items()]
        if vals and all(v is not None for v in vals) and pd.notna(row.accuracy):
            pts.append({"label": row.label, "predicted_loss": sum(vals), "accuracy": row.accuracy})
    if len(pts) >= 3:
        from scipy.stats import spearmanr

        pts_df = pd.DataFrame(pts)
        rho = spearmanr(pts_df["predicted_loss"], pts_df["accuracy"]).statistic
        st.subheader("Predicted loss vs measured accuracy")
        st.plotly_chart(charts.loss_vs_accuracy(pts_df, rho), key="results_loss_acc")
