"""The app's one home for Streamlit caches and shared sidebar state (the library has none)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

import mixviz
from mixviz.allocate import Problem
from mixviz.inventory import inventory_report
from mixviz.paths import cache_dir
from mixviz.profile import DEFAULT_METRIC, METRIC_NAMES, profile_model
from mixviz.schemes import SCHEMES

DEFAULT_MODEL = "demo"
DEFAULT_OPTIONS = ["MXFP4", "MXFP8"]
SHARED_CHOICES = ["qkv", "gate_up"]


@st.cache_resource(show_spinner=False)
def model_ref(spec: str, trust_remote_code: bool = False) -> mixviz.ModelRef:
    return mixviz.resolve_model(spec, trust_remote_code=trust_remote_code)


@st.cache_data(show_spinner=False)
def model_report(spec: str, trust_remote_code: bool = False) -> dict:
    ref = model_ref(spec, trust_remote_code)
    doc = inventory_report(ref.name, mixviz.inventory(mixviz.meta_model(ref)))
    doc["note"] = ref.note
    return doc


def _qp_list(key: str, default: list[str]) -> list[str]:
    raw = st.query_params.get(key)
    return [x for x in raw.split(",") if x] if raw else list(default)


def sidebar() -> dict:
    """The sidebar's choices; they live in the URL's query params so a reload keeps them."""
    qp = st.query_params
    with st.sidebar:
        st.header("mixviz")
        model = st.text_input(
            "Model",
            value=qp.get("model", DEFAULT_MODEL),
            key="sb_model",
            help="demo (SmolLM2-135M from PyPI), tiny, a local HF folder or a hub id",
        )
        options = st.multiselect(
            "Candidate formats",
            list(SCHEMES),
            default=[o for o in _qp_list("options", DEFAULT_OPTIONS) if o in SCHEMES],
            key="sb_options",
        )
        metrics = list(METRIC_NAMES)
        metric = st.selectbox(
            "Sensitivity metric",
            metrics,
            index=metrics.index(qp.get("metric", DEFAULT_METRIC))
            if qp.get("metric") in metrics
            else 0,
            key="sb_metric",
        )
        accounting = st.radio(
            "Bit accounting",
            ["with scale bits", "without scale bits"],
            index=1 if qp.get("noscale") == "1" else 0,
            key="sb_accounting",
            help="Without: bits·numel only, as AutoScheme's "
            "ignore_scale_zp_bits (the reference study's setting)",
        )
        shared = st.multiselect(
            "Shared groups (one format per group)",
            SHARED_CHOICES,
            default=[s for s in _qp_list("shared", []) if s in SHARED_CHOICES],
            key="sb_shared",
        )
        calib = qp.get("calib", "pydoc")
        upload = st.file_uploader(
            "Calibration text (.txt / .jsonl)",
            type=["txt", "jsonl"],
            key="sb_calib_upload",
            help="Default: Python's pydoc topics",
        )
        if upload is not None:
            calib = save_upload(upload.getvalue(), upload.name)
        st.caption(f"Calibration: {Path(calib).name if calib != 'pydoc' else 'pydoc (bundled)'}")
        with st.expander("Calibration size"):
            nsamples = st.number_input(
                "Samples", 1, 512, int(qp.get("nsamples", 16)), key="sb_nsamples"
            )
            seqlen = st.number_input(
                "Tokens per sample", 16, 4096, int(qp.get("seqlen", 256)), key="sb_seqlen"
            )
        trust = st.checkbox(
            "Trust remote code",
            value=qp.get("trust_remote_code") == "1",
            key="sb_trust",
            help="Run the model's own Python code. Off unless you trust it.",
        )
    qp["model"] = model
    qp["options"] = ",".join(options)
    qp["metric"] = metric
    qp["noscale"] = "1" if accounting.startswith("without") else "0"
    qp["shared"] = ",".join(shared)
    qp["calib"] = calib
    qp["nsamples"], qp["seqlen"] = str(nsamples), str(seqlen)
    qp["trust_remote_code"] = "1" if trust else "0"
    return {
        "model": model.strip(),
        "options": options,
        "metric": metric,
        "ignore_scale_bits": accounting.startswith("without"),
        "shared": shared,
        "calib": calib,
        "nsamples": int(nsamples),
        "seqlen": int(seqlen),
        "trust_remote_code": trust,
    }


def save_upload(data: bytes, name: str) -> str:
    """Store an uploaded text under a name derived from its content (never the user's name)."""
    suffix = ".jsonl" if name.lower().endswith(".jsonl") else ".txt"
    path = cache_dir() / "uploads" / (hashlib.sha256(data).hexdigest()[:16] + suffix)
    if not path.is_file():
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(path, data)
    return str(path)


def profile_kwargs(choice: dict) -> dict:
    return {
        "options": choice["options"],
        "metric": choice["metric"],
        "nsamples": choice["nsamples"],
        "seqlen": choice["seqlen"],
        "calib": choice["calib"],
        "trust_remote_code": choice["trust_remote_code"],
        "allow_partial": True,
    }


def cached_profile(choice: dict):
    """The profile for the sidebar's choices if it is on disk, else None (never computes)."""
    if not choice["options"]:
        return None
    return _cached_profile(choice["model"], **profile_kwargs(choice))


@st.cache_resource(show_spinner=False, max_entries=16)
def _cached_profile_hit(model: str, key: tuple):
    return profile_model(model, compute=False, **dict(key))


def _cached_profile(model: str, **kw):
    # Only hits are memoised: a miss must be looked up again once profiling has run.
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
    prof = _cached_profile_hit(model, key)
    if prof is None:
        _cached_profile_hit.clear()
    return prof


@st.cache_resource(show_spinner=False, max_entries=32)
def problem_for(
    _profile,
    key: str,
    ignore_scale_bits: bool,
    shared: tuple[str, ...],
    pins: tuple[tuple[str, str], ...],
) -> Problem:
    return Problem.from_profile(
        _profile, ignore_scale_bits=ignore_scale_bits, shared=list(shared), pins=dict(pins)
    )


@st.cache_data(show_spinner=False, max_entries=32)
def frontier_for(_problem: Problem, key: tuple) -> dict:
    from mixviz.allocate import frontier

    return frontier(_problem, 30)


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
