"""The sidebar, drawn once per run by ``app.py``: what the user chose, as a :class:`Choice`
that every page reads with :func:`choice`. The choices live in the URL so a reload keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.models.device import DTYPES, describe, device_choices, emulated_dtype_note, placement
from mixviz.models.schemes import SCHEMES, get_scheme
from mixviz.models.targets import RUNTIMES
from mixviz.models.text import BUNDLED
from mixviz.sensitivity.metrics import DEFAULT_METRIC, metric_names, score_meaning
from ui.uploads import save_upload
from ui.url import url_calib, url_choice, url_drop, url_flag, url_int, url_list, url_text, url_write

DEFAULT_MODEL = "demo"
DEFAULT_OPTIONS = ["MXFP4", "MXFP8"]
SHARED_CHOICES = ["qkv", "gate_up"]
_KEY = "sb_choice"  # where app.py leaves this run's choice for the page


@dataclass(frozen=True)
class Choice:
    """The sidebar's choices for this run: the model, how it is profiled and allocated, and
    where it runs. ``target`` is "" for no runtime rules."""

    model: str
    options: tuple[str, ...]
    metric: str
    ignore_scale_bits: bool
    shared: tuple[str, ...]
    target: str
    calib: str
    nsamples: int
    seqlen: int
    trust_remote_code: bool
    device: str
    dtype: str
    imatrix: bool = False
    """GGML types weighted by llama.cpp's importance matrix of the calibration text."""


def sidebar() -> Choice:
    """Draw the sidebar and keep its :class:`Choice` for this run's page (:func:`choice`).

    Except ``trust_remote_code``, every choice is read from and written back to the URL; that
    one is ticked by hand, per session and per model, and shown while on."""
    url_drop("trust_remote_code")  # an old or crafted link: never honour it
    with st.sidebar:
        st.header("mixviz")
        picked = _what_to_quantize()
        calib, nsamples, seqlen = _calibration()
        imatrix = _importance(picked["options"])
        device, dtype = _where_it_runs()
        trust = _trust(picked["model"])
    if trust:
        st.warning(
            f"Remote code enabled for {picked['model'].strip()}: its repository's Python code "
            "runs in this app.",
            icon=":material/warning:",
        )
    url_write(
        **picked,
        calib=calib,
        nsamples=str(nsamples),
        seqlen=str(seqlen),
        device=device,
        dtype=dtype,
        **({"imatrix": "1"} if imatrix else {}),
    )
    if not imatrix:
        url_drop("imatrix")
    made = Choice(
        model=picked["model"].strip(),
        options=tuple(x for x in picked["options"].split(",") if x),
        metric=picked["metric"],
        ignore_scale_bits=picked["noscale"] == "1",
        shared=tuple(x for x in picked["shared"].split(",") if x),
        target="" if picked["target"] == "any" else picked["target"],
        calib=calib,
        nsamples=int(nsamples),
        seqlen=int(seqlen),
        trust_remote_code=trust,
        device=device,
        dtype=dtype,
        imatrix=imatrix,
    )
    st.session_state[_KEY] = made
    return made


def choice() -> Choice:
    """This run's sidebar choice (``app.py`` draws the sidebar before the page runs)."""
    made = st.session_state.get(_KEY)
    return made if made is not None else sidebar()


def _what_to_quantize() -> dict[str, str]:
    """Model, formats, metric, bit accounting, shared groups, runtime: as the URL writes them."""
    model = st.text_input(
        "Model name or folder",
        value=url_text("model", DEFAULT_MODEL),
        key="sb_model",
        help="demo (SmolLM2-135M from PyPI), tiny, a local HF folder or a hub id",
    )
    options = st.multiselect(
        "Candidate formats",
        list(SCHEMES),
        default=url_list("options", DEFAULT_OPTIONS, SCHEMES),
        key="sb_options",
    )
    metrics = list(metric_names())
    metric = st.selectbox(
        "Sensitivity metric",
        metrics,
        index=metrics.index(url_choice("metric", metrics, DEFAULT_METRIC)),
        key="sb_metric",
        help="What each one's score is:\n\n"
        + "\n".join(f"- **{m}**: {score_meaning(m)}" for m in metrics),
    )
    accounting = st.radio(
        "Bit accounting",
        ["with scale bits", "without scale bits"],
        index=1 if url_flag("noscale") else 0,
        key="sb_accounting",
        help="Without: bits·numel only, as AutoScheme's "
        "ignore_scale_zp_bits (the reference study's setting)",
    )
    shared = st.multiselect(
        "Shared groups (one format per group)",
        SHARED_CHOICES,
        default=url_list("shared", [], SHARED_CHOICES),
        key="sb_shared",
    )
    targets = ["any", *RUNTIMES]
    target = st.selectbox(
        "Target runtime",
        targets,
        index=targets.index(url_choice("target", targets, "any")),
        key="sb_target",
        format_func=lambda t: "any (no runtime rules)" if t == "any" else RUNTIMES[t].label,
        help="The runtime that will serve the model: its rules join the allocation (vLLM / "
        "SGLang: fused q/k/v and gate/up share one format; vLLM (CPU): 4-bit integers only with "
        "AVX-512, unquantized layers only without; "
        "llama.cpp: GGML types only).",
    )
    return {
        "model": model,
        "options": ",".join(options),
        "metric": metric,
        "noscale": "1" if accounting.startswith("without") else "0",
        "shared": ",".join(shared),
        "target": target,
    }


def _calibration() -> tuple[str, int, int]:
    """The calibration text (bundled, or one uploaded here) and how much of it: samples, tokens."""
    calib = url_calib()
    upload = st.file_uploader(
        "Calibration text (.txt / .jsonl)",
        type=["txt", "jsonl"],
        key="sb_calib_upload",
        help="Default: Python's pydoc topics",
    )
    if upload is not None:
        try:
            calib = save_upload(upload.getvalue(), upload.name)
            st.session_state.pop("sb_calib_refused", None)
        except MixvizError as e:
            st.error(str(e))
    if calib == BUNDLED and st.session_state.get("sb_calib_refused"):
        st.warning(
            "The calibration file named in the link is not one uploaded here (or is gone), "
            "so it was not read: using pydoc. Upload the text above to calibrate on it."
        )
    st.caption(f"Calibration: {Path(calib).name if calib != BUNDLED else 'pydoc (bundled)'}")
    with st.expander("Calibration size"):
        nsamples = st.number_input(
            "Samples", 1, 512, url_int("nsamples", 16, 1, 512, "Samples"), key="sb_nsamples"
        )
        seqlen = st.number_input(
            "Tokens per sample",
            16,
            4096,
            url_int("seqlen", 256, 16, 4096, "Tokens per sample"),
            key="sb_seqlen",
        )
    return calib, nsamples, seqlen


def _importance(options: str) -> bool:
    """Whether GGML types are weighted by llama.cpp's importance matrix (offered when one is
    among the candidate formats), as ``profile --imatrix auto``."""
    if not any(get_scheme(o).ggml for o in options.split(",") if o):
        return False
    return st.checkbox(
        "Importance matrix (llama.cpp's)",
        value=url_flag("imatrix"),
        key="sb_imatrix",
        help="Weight the GGML types' errors by llama.cpp's importance matrix of the calibration "
        "text, as llama-quantize --imatrix does; checkpoints are quantized with the same one",
    )


def _where_it_runs() -> tuple[str, str]:
    """Device and precision, and what they resolve to here (or why they cannot)."""
    with st.expander("Where it runs"):
        devices = device_choices()
        device = st.selectbox(
            "Device",
            devices,
            index=devices.index(url_choice("device", devices, "auto")),
            key="sb_device",
            help="auto: the first CUDA GPU in bfloat16 where there is one, else the CPU in "
            "float32. Profiles and runs both use it; it is part of their cache keys.",
        )
        dtypes = list(DTYPES)
        dtype = st.selectbox(
            "Precision",
            dtypes,
            index=dtypes.index(url_choice("dtype", dtypes, "auto")),
            key="sb_dtype",
        )
        try:
            at = placement(device, dtype)
            where = describe(*at)
            st.caption(f"Runs on {where[0]} in {where[1]}")
            if note := emulated_dtype_note(*at):
                st.warning(note[0].upper() + note[1:])
        except MixvizError as e:
            st.error(str(e))
    return device, dtype


def _trust(model: str) -> bool:
    """*Trust remote code*, asked again for every model: the checkbox's key holds the model."""
    trust_key = f"sb_trust:{model.strip()}"  # another model starts unticked
    for k in [k for k in st.session_state if str(k).startswith("sb_trust:")]:
        if k != trust_key:  # and switching back does not restore an earlier tick
            del st.session_state[k]
    return st.checkbox(
        "Trust remote code",
        value=False,
        key=trust_key,
        help="Run this model's own Python code from its repository. Tick only for a model "
        "you trust; it is asked again for every model and every session.",
    )
