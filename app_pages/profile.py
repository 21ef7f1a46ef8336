"""Profile page: how much each layer suffers in each format."""

import pandas as pd
import plotly.express as px
import streamlit as st

import ui
from mixviz import MixvizError
from mixviz.report import charts
from mixviz.runs.progress import Pace
from mixviz.sensitivity.metrics import metric_names, score_meaning
from mixviz.sensitivity.profile import Cancelled, profile_model

TICK_S = 1.0  # the profile line redraws this often

choice = ui.choice()
st.title("Profile")
st.caption("Sensitivity of every linear layer to every candidate format. Higher = hurts more.")

if not choice.options:
    st.error("Pick at least one candidate format in the sidebar.")
    st.stop()

profile = ui.require_profile(choice, missing=None)  # the buttons below make it


def run_profile(use_cache: bool) -> None:
    """Profile with the sidebar's settings, then redraw the page with the new profile. The
    work runs in a thread; this script redraws its line every second (the elapsed clock
    ticks; the bar and the estimate move with the metric's completed steps). Leaving the page,
    changing a setting, *Stop profiling* or the session ending interrupts this script: the
    work is then cancelled (it stops at its next step, nothing cached), and the page says so
    when it is next shown."""
    bar = st.progress(0.0, text="starting: loading the model")
    st.button("Stop profiling", key="profile_stop")  # its click interrupts the loop below
    pace = Pace(msg="starting: loading the model")
    job = ui.in_thread(
        profile_model,
        choice.model,
        ui.profile_spec(choice),
        use_cache=use_cache,
        allow_partial=True,
        trust_remote_code=choice.trust_remote_code,
        progress=pace.update,
        cancel_kw="cancel",
    )
    st.session_state["profile_job"] = (what, job)
    try:
        while not job.wait(TICK_S):
            bar.progress(pace.fraction, text=pace.line())
    finally:  # also when Streamlit interrupts the script to rerun it or end the session
        if not job.wait(0):
            job.cancel()
    st.session_state.pop("profile_job", None)
    try:
        made = job.result()
    except MixvizError as e:
        st.error(str(e))
        st.stop()
    ui.forget_profiles()
    st.session_state["profile_done"] = f"Profiled {what} in {made.seconds:.1f} s."
    st.rerun()  # redraw with the new profile: its heatmaps, and Recompute instead of Profile


def say_stopped() -> None:
    """A profile this session stopped before it finished: stopping, or stopped (said once)."""
    if "profile_job" not in st.session_state:
        return
    was, job = st.session_state["profile_job"]
    if not job.wait(0):
        st.info(f"Stopping the profile of {was}: it stops at its next step, nothing is saved.")
        return
    del st.session_state["profile_job"]
    if isinstance(job.error, Cancelled):
        st.warning(
            f"Profiling {was} was stopped before it finished (the page was left, a setting "
            "changed or *Stop profiling* was pressed): nothing was saved."
        )


what = f"{choice.model} with {choice.metric}"
say_stopped()
if "profile_done" in st.session_state:
    st.success(st.session_state.pop("profile_done"))
if profile is None:
    if st.button(f"Profile {what}", type="primary", key="profile_start"):
        run_profile(use_cache=True)
else:
    made = ui.profile_time(profile)
    with st.popover(f"Recompute (cached profile from {made})", key="profile_recompute"):
        st.write(
            f"Profile {what} again from scratch? The cached profile from {made} is replaced; "
            "on the demo model this takes minutes."
        )
        if st.button("Yes, recompute", type="primary", key="profile_recompute_confirm"):
            run_profile(use_cache=False)

if profile is None:
    st.info("No profile yet for these settings: press the button above.")
    st.stop()

st.caption(
    f"{profile.metric} on {profile.model}: {len(profile.layers)} layers × "
    f"{len(profile.options)} formats, calibration {profile.calib.source} "
    f"{profile.calib.nsamples}×{profile.calib.seqlen} tokens, {profile.seconds:.1f} s"
)
st.caption(f"**What a {profile.metric} score is:** {score_meaning(profile.metric)}.")

rows = pd.DataFrame(
    [
        {"layer": r.layer, "format": r.option, "score": r.score}
        for r in profile.rows
        if r.score is not None
    ]
)
shared = st.toggle(
    "One colour scale for every format",
    value=True,
    key="profile_shared_scale",
    help="On: a colour means the same score in every tab, so formats can be compared. "
    "Off: each format's tab spreads its colours over its own range.",
)
zrange = charts.score_range(profile) if shared else None
tabs = st.tabs(list(profile.options))
for tab, option in zip(tabs, profile.options, strict=True):
    with tab:
        st.plotly_chart(
            charts.sensitivity_heatmap(profile, option, zrange), key=f"profile_heat_{option}"
        )
        worst = rows[rows["format"] == option].sort_values("score", ascending=False)
        c1, c2 = st.columns(2)
        c1.markdown(f"**Most sensitive in {option}**")
        c1.dataframe(worst.head(10), hide_index=True, key=f"profile_most_{option}")
        c2.markdown(f"**Least sensitive in {option}**")
        c2.dataframe(
            worst[worst["score"] > 0].tail(10).iloc[::-1],
            hide_index=True,
            key=f"profile_least_{option}",
        )

others = {}
for metric in metric_names():
    if metric == profile.metric:
        continue
    try:
        other = ui.cached_profile(choice, metric=metric)
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
        color_discrete_map=charts.FORMAT_COLOURS,
        hover_name="layer",
        log_x=True,
        log_y=True,
        title=f"{profile.metric} vs {metric} score per layer and format",
    )
    st.plotly_chart(fig, key="profile_scatter")
