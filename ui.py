"""The app's one home for Streamlit caches and shared sidebar state (the library has none)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import mixviz
from mixviz.inventory import inventory_report

DEFAULT_MODEL = "demo"


@st.cache_resource(show_spinner=False)
def model_ref(spec: str, trust_remote_code: bool = False) -> mixviz.ModelRef:
    return mixviz.resolve_model(spec, trust_remote_code=trust_remote_code)


@st.cache_data(show_spinner=False)
def model_report(spec: str, trust_remote_code: bool = False) -> dict:
    ref = model_ref(spec, trust_remote_code)
    doc = inventory_report(ref.name, mixviz.inventory(mixviz.meta_model(ref)))
    doc["note"] = ref.note
    return doc


def sidebar() -> dict:
    """The sidebar's choices; they live in the URL's query params so a reload keeps them."""
    qp = st.query_params
    with st.sidebar:
        st.header("mixviz")
        model = st.text_input(
            "Model",
            value=qp.get("model", DEFAULT_MODEL),
            key="sidebar_model",
            help="demo (SmolLM2-135M from PyPI), tiny, a local HF folder or a hub id",
        )
        trust = st.checkbox(
            "Trust remote code",
            value=qp.get("trust_remote_code") == "1",
            key="sidebar_trust",
            help="Run the model's own Python code. Off unless you trust its author.",
        )
    qp["model"] = model
    if trust:
        qp["trust_remote_code"] = "1"
    elif "trust_remote_code" in qp:
        del qp["trust_remote_code"]
    return {"model": model.strip(), "trust_remote_code": trust}


def layers_frame(report: dict) -> pd.DataFrame:
    return pd.DataFrame(report["layers"])


def schemes_frame(report: dict) -> pd.DataFrame:
    rows = [
        {
            "scheme": name,
            "avg bits": s["avg_bits"],
            "avg bits (no scale)": s["avg_bits_no_scale"],
            "unavailable for": len(s["unavailable"]),
        }
        for name, s in report["schemes"].items()
    ]
    return pd.DataFrame(rows)
