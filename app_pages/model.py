"""Model page: what can be quantized, and what each format costs in bits."""

import streamlit as st

import ui
from mixviz import MixvizError

choice = ui.choice()
st.title("Model")

try:
    with st.spinner(
        f"Loading {choice.model}. The first start downloads and converts the demo model "
        "once (about a minute, longer on a busy machine); later starts take seconds."
    ):
        report = ui.model_report(choice.model, choice.trust_remote_code)
except MixvizError as e:
    st.error(str(e))
    st.stop()

st.caption(report["note"])
layers = ui.layers_frame(report)
blocks = layers[layers["block"].notna()]
c1, c2, c3 = st.columns(3)
c1.metric("Linear layers in blocks", len(blocks))
c2.metric("Blocks", int(blocks["block"].max()) + 1)
c3.metric("Parameters in block linears", f"{blocks['numel'].sum() / 1e6:.1f} M")

st.subheader("Bits per format")
st.caption(
    "Parameter-weighted average over the block linears, counted as auto-round counts them. "
    "Formats every layer can use come first; a grouped format needs its group size to divide "
    "a layer's input features."
)
st.dataframe(ui.schemes_frame(report), hide_index=True, key="model_schemes")

st.subheader("Layer inventory")
st.dataframe(
    layers.style.format({"block": "{:.0f}"}, na_rep="—"),
    hide_index=True,
    key="model_layers",
    column_config={
        "block": st.column_config.Column(help="— : not in a transformer block (lm_head)"),
        "group": st.column_config.Column(
            help="the fused group that shares the layer's input (qkv, gate_up); — : none"
        ),
    },
)
