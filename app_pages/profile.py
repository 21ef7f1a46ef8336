"""Profile page: how much each layer suffers in each format."""

import pandas as pd
import plotly.express as px
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.report import charts
from mixviz.sensitivity.metrics import metric_names
from mixviz.sensitivity.profile import profile_model

choice = ui.sidebar()
st.title("Profile")
st.caption("Sensitivity of every linear layer to every candidate format. Higher = hurts more.")

if not choice["options"]:
    st.error("Pick at least one candidate format in the sidebar.")
    st.stop()

profile = ui.require_profile(choice, missing=None)  # the button below makes it

label = "Re-profile" if profile else "Profile"
if st.button(
    f"{label} {choice['model']} with {choice['metric']}", type="primary", key="profile_start"
):
    bar = st.progress(0.0, text="starting")
    try:
        profile = profile_model(
            choice["model"],
            use_cache=True,
            **ui.profile_kwargs(choice),
            progress=lambda done, total, msg: bar.progress(
                min(done / max(total, 1), 1.0), text=msg
            ),
        )
        bar.progress(1.0, text=f"done in {profile.seconds:.1f} s")
    except MixvizError as e:
        st.error(str(e))
        st.stop()

if profile is None:
    st.info("No profile yet for these settings: press the button above.")
    st.stop()

st.caption(
    f"{profile.metric} on {profile.model}: {len(profile.layers)} layers × "
    f"{len(profile.options)} formats, calibration {profile.calib.source} "
    f"{profile.calib.nsamples}×{profile.calib.seqlen} tokens, {profile.seconds:.1f} s"
)

tabs = st.tabs(list(profile.options))
for tab, option in zip(tabs, profile.options, strict=True):
    with tab:
        st.plotly_chart(charts.sensitivity_heatmap(profile, option), key=f"profile_heat_{option}")

rows = pd.DataFrame(
    [
        {"layer": r.layer, "format": r.option, "score": r.score}
        for r in profile.rows
        if r.score is not None
    ]
)
worst = rows.sort_values("score", ascending=False)
c1, c2 = st.columns(2)
c1.subheader("Most sensitive")
c1.dataframe(worst.head(10), hide_index=True, key="profile_most")
c2.subheader("Least sensitive")
c2.dataframe(worst[worst["score"] > 0].tail(10).iloc[::-1], hide_index=True, key="profile_least")

others = {}
for metric in metric_names():
    if metric == profile.metric:
        continue
    try:
        other = ui.cached_profile({**choice, "metric": metric})
    except MixvizError:
        other = None
    if other is not None:
        others[metric] = other
if others:
    st.subheader("Metric against metric")
    metric = st.selectbox("Compare with", list(others), key="profile_compare")
    other = others[metric]
    pts = [
        {
            "layer": r.layer,
            "format": r.option,
            profile.metric: r.score,
            metric: other.score(r.layer, r.option),
        }
        for r in profile.rows
        if r.score and other.score(r.layer, r.option)
    ]
    fig = px.scatter(
        pd.DataFrame(pts),
        x=profile.metric,
        y=metric,
        color="format",
        hover_name="layer",
        log_x=True,
        log_y=True,
    )
    st.plotly_chart(fig, key="profile_scatter")
