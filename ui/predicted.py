"""The Allocate page's predicted loss in the units people use: the KLD to the unquantized
model ± its interval, and what it rests on (the calibration line over runs, one measured
anchor, or what would give one)."""

from __future__ import annotations

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.runs.progress import Pace
from mixviz.sensitivity.metrics import score_meaning
from ui.background import in_thread

KLD_HELP = (
    "Mean KL divergence per token (nats) of the quantized model's next-token distribution "
    "from the unquantized model's: 0 = identical. Predicted from the profile's Σ score "
    "through the calibration line over finished runs (measured KLD ≈ a + b × Σ score), or "
    "before any run from one measured anchor scaled by Σ score; ± = 95 %: the line's "
    "prediction interval for one more run, or the anchor's t interval over its calibration "
    "windows — its measurement only: the scaling away from the anchor is assumed, not measured."
)


def loss_help(metric: str) -> str:
    """What the predicted loss is: the sum over layers of the profile's scores, and what one
    score is (its unit)."""
    return (
        f"The sum over layers of each layer's {metric} score at its format: an additive "
        f"estimate that ignores how layers' errors combine, not a measured KLD. One "
        f"{metric} score: {score_meaning(metric)}."
    )


@st.cache_data(ttl=15, show_spinner=False)
def _points(_profile, key: str, model: str) -> list[dict]:
    from mixviz.report.predicted_kld import run_points_for

    try:
        return run_points_for(_profile)
    except MixvizError:
        return []


def _anchors(profile) -> list:
    from mixviz.runs.evaluation.anchor import cached_anchors

    return cached_anchors(profile)


def predicted_kld(profile, best, where) -> None:
    """``where.metric`` of the optimal allocation's predicted KLD ± interval, its source
    below; without runs or an anchor, a button that measures one (minutes on a CPU)."""
    from mixviz.report.predicted_kld import how_to_get, predict_kld

    points = _points(profile, profile.key, profile.model)
    got = predict_kld(best.predicted_loss, points, _anchors(profile))
    if got is not None:
        where.metric(
            "Optimal: predicted KLD to the unquantized model",
            f"{got.value:.3g} ± {got.half:.2g}",
            help=KLD_HELP,
        )
        where.caption(f"nats/token, 95 % interval; from the {got.source}.")
        return
    have = sum(1 for p in points if p.get("kld") is not None)
    where.metric("Optimal: predicted KLD to the unquantized model", "—", help=KLD_HELP)
    where.caption(how_to_get(have, "the comparison on the Runs page, or measure an anchor below"))
    if where.button("Measure an anchor", key="allocate_anchor", help=_ANCHOR_HELP):
        _measure(profile, best)


_ANCHOR_HELP = (
    "Quantize this allocation in memory and measure its KLD to the unquantized model on "
    "8×512 calibration tokens (cached): what the predicted KLD rests on until runs exist."
)


def _measure(profile, best) -> None:
    """Measure the anchor in a thread, its line redrawn every second, then redraw the page."""
    from mixviz.runs.evaluation.anchor import measure_anchor

    steps = ["loading", "reference", "KLD of the allocation"]
    pace = Pace(msg="starting")
    bar = st.progress(0.0, text=pace.line())

    def say(msg: str) -> None:
        done = next((i for i, s in enumerate(steps) if msg.startswith(s)), 0)
        pace.update(done, len(steps), msg)

    job = in_thread(measure_anchor, profile, best, progress=say)
    while not job.wait(1.0):
        bar.progress(pace.fraction, text=pace.line())
    try:
        job.result()
    except MixvizError as e:
        st.error(str(e))
        return
    st.rerun()
