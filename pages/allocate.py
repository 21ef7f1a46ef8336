"""Allocate page: the budget slider, the optimal allocation beside the baselines."""

import json

import pandas as pd
import streamlit as st

import ui
from mixviz import MixvizError, charts
from mixviz.allocate import STRATEGIES, allocate
from mixviz.export import export
from mixviz.recipe import Recipe

choice = ui.sidebar()
st.title("Allocate")

try:
    profile = ui.cached_profile(choice)
except MixvizError as e:
    st.error(str(e))
    st.stop()
if profile is None:
    st.info("Profile this model first (Profile page) with the sidebar's settings.")
    st.stop()

pins = st.session_state.setdefault("allocate_pins", {})
pins = {k: v for k, v in pins.items() if any(x.name == k for x in profile.layers)}
try:
    problem = ui.problem_for(
        profile,
        profile.key,
        choice["ignore_scale_bits"],
        tuple(choice["shared"]),
        tuple(sorted(pins.items())),
    )
except MixvizError as e:
    st.error(str(e))
    st.stop()

lo, hi = problem.feasible_range()
lo_s, hi_s = round(lo + 0.005, 2), round(hi - 0.005, 2)
start = float(st.query_params.get("bits", min(max(5.0, lo_s), hi_s)))
if not lo_s <= start <= hi_s:
    st.error(
        f"Average bits {start:g} is outside the feasible range {lo:.2f}–{hi:.2f}; "
        "using the nearest feasible value."
    )
    start = min(max(start, lo_s), hi_s)


@st.fragment
def budget_view() -> None:
    """The slider and everything that depends on it: reruns alone when it moves."""
    avg = st.slider(
        "Average bits",
        lo_s,
        hi_s,
        start,
        0.01,
        key="allocate_avg_bits",
        help="Without scale bits" if choice["ignore_scale_bits"] else "With scale bits",
    )
    st.query_params["bits"] = f"{avg:g}"
    st.session_state["budget"] = avg

    results = {}
    for strategy in STRATEGIES:
        try:
            results[strategy] = allocate(problem, avg, strategy)
        except MixvizError as e:
            results[strategy] = e
    best = results["optimal"]
    if isinstance(best, MixvizError):
        st.error(str(best))
        return
    st.session_state["allocation"] = best.to_dict()

    bits_key = "avg_bits_no_scale" if choice["ignore_scale_bits"] else "avg_bits"
    summary = pd.DataFrame(
        [
            {
                "strategy": s,
                "avg bits": getattr(a, bits_key),
                "predicted loss": a.predicted_loss,
                "vs optimal": a.predicted_loss / best.predicted_loss
                if best.predicted_loss
                else None,
            }
            if not isinstance(a, MixvizError)
            else {"strategy": s, "avg bits": None, "predicted loss": None, "vs optimal": None}
            for s, a in results.items()
        ]
    )
    c1, c2 = st.columns([1, 1])
    c1.metric("Optimal: predicted loss", f"{best.predicted_loss:.4g}")
    c2.metric("Achieved average bits", f"{getattr(best, bits_key):.3f}")
    st.dataframe(summary, hide_index=True, key="allocate_summary")

    view = st.radio(
        "Heatmap",
        ["optimal", "head", "tail", "uniform", "llamacpp", "diff"],
        horizontal=True,
        key="allocate_view",
    )
    if view == "diff":
        other = st.selectbox(
            "Where optimal disagrees with",
            ["head", "tail", "uniform", "llamacpp"],
            key="allocate_diff_with",
        )
        base = results[other]
        if isinstance(base, MixvizError):
            st.error(str(base))
        else:
            changed = {n for n, o in best.layers.items() if base.layers.get(n) != o}
            st.caption(f"{len(changed)} layers differ (outlined)")
            st.plotly_chart(
                charts.allocation_heatmap(
                    profile.layers, best, list(profile.options), f"optimal vs {other}", changed
                ),
                key="allocate_heatmap",
            )
    else:
        chosen = results[view]
        if isinstance(chosen, MixvizError):
            st.error(str(chosen))
        else:
            st.plotly_chart(
                charts.allocation_heatmap(
                    profile.layers,
                    chosen,
                    list(profile.options),
                    f"{view} at {avg:.2f} bits: {getattr(chosen, bits_key):.3f} achieved",
                ),
                key="allocate_heatmap",
            )

    st.subheader("Predicted loss vs average bits")
    front = ui.frontier_for(
        problem,
        (
            profile.key,
            choice["ignore_scale_bits"],
            tuple(choice["shared"]),
            tuple(sorted(pins.items())),
        ),
    )
    st.plotly_chart(
        charts.frontier_chart(front, avg, choice["ignore_scale_bits"]), key="allocate_frontier"
    )

    st.subheader("Download")
    ref = ui.model_ref(choice["model"], choice["trust_remote_code"])
    recipe = Recipe.from_allocation(best, profile.model, ref.hash)
    stem = f"{profile.model.replace('/', '_')}-{avg:g}bits"
    cols = st.columns(5)
    cols[0].download_button(
        "mixviz recipe",
        json.dumps(recipe.to_dict(), indent=2),
        f"{stem}.recipe.json",
        "application/json",
        key="allocate_download",
    )
    for col, (target, ext) in zip(
        cols[1:],
        [
            ("autoround", "json"),
            ("gptqmodel", "json"),
            ("llmcompressor", "yaml"),
            ("llamacpp", "txt"),
        ],
        strict=True,
    ):
        try:
            col.download_button(
                target,
                export(recipe, target),
                f"{stem}.{target}.{ext}",
                key=f"allocate_download_{target}",
            )
        except MixvizError as e:
            col.button(target, disabled=True, help=str(e), key=f"allocate_download_{target}")


budget_view()

st.subheader("Pins")
table = pd.DataFrame(
    [
        {"layer": x.name, "block": x.block, "kind": x.kind, "pin": pins.get(x.name, "")}
        for x in profile.layers
    ]
)
edited = st.data_editor(
    table,
    hide_index=True,
    key="allocate_pin_editor",
    disabled=["layer", "block", "kind"],
    column_config={
        "pin": st.column_config.SelectboxColumn("pin", options=["", *profile.options, "BF16"])
    },
)
new_pins = {r.layer: r.pin for r in edited.itertuples() if r.pin}
if new_pins != pins:
    st.session_state["allocate_pins"] = new_pins
    st.rerun()
