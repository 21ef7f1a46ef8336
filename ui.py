"""What the app's pages share (the library has none of it): the Streamlit caches, the sidebar,
the URL's parameters (read only through the ``url_*`` family below) and the profile a page
needs (:func:`require_profile`)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pandas as pd
import streamlit as st

import mixviz
from mixviz.allocation.problem import Problem
from mixviz.errors import MixvizError
from mixviz.models.device import DTYPES, describe, device_choices, placement
from mixviz.models.inventory import inventory_report
from mixviz.models.schemes import SCHEMES
from mixviz.models.targets import RUNTIMES
from mixviz.models.text import BUNDLED
from mixviz.paths import MAX_BYTES, cache_dir
from mixviz.sensitivity.metrics import DEFAULT_METRIC, metric_names
from mixviz.sensitivity.profile import Profile, profile_model

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


# --------------------------------------------------------------------------- URL parameters
#
# Every ``?key=`` the app reads goes through one of these ``url_*`` readers; no page reads
# ``st.query_params`` itself. A link is user input: a value that is missing gives the default,
# and a value that is not valid never crashes a page — a number the user could have mistyped
# (``url_int``, ``url_bits``) is an ``st.error`` naming it, a choice that is not on offer
# (``url_choice``, ``url_list``) is dropped, a file that was not uploaded here (``url_calib``)
# is refused. :func:`url_write` is the one writer.


def url_text(key: str, default: str) -> str:
    """``?key=`` as it stands, or ``default`` when absent."""
    return st.query_params.get(key, default)


def url_flag(key: str) -> bool:
    """``?key=1`` → True; absent or anything else → False."""
    return st.query_params.get(key) == "1"


def url_choice(key: str, choices: list[str], default: str) -> str:
    """``?key=`` when it is one of ``choices``, else ``default``."""
    raw = st.query_params.get(key)
    return raw if raw in choices else default


def url_list(key: str, default: list[str], allowed=None) -> list[str]:
    """``?key=a,b``: the comma-separated values (those in ``allowed``, when given), or
    ``default`` when absent or empty."""
    raw = st.query_params.get(key)
    values = [x for x in raw.split(",") if x] if raw else list(default)
    return values if allowed is None else [x for x in values if x in allowed]


def url_int(key: str, default: int, lo: int, hi: int, what: str) -> int:
    """``?key=`` as an int in ``lo..hi``; anything else is an error and ``default``."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        st.error(f"{what} {raw!r} (from the URL) is not a whole number {lo}–{hi}; using {default}.")
        return default
    return value


def url_bits(default: float) -> float:
    """The average-bits budget from ``?bits=``: a finite number, or ``default`` and an error.

    Shared by the Allocate and Runs pages (the range check is the Allocate page's own)."""
    raw = st.query_params.get("bits")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        st.error(f"Average bits {raw!r} (from the URL) is not a number; using {default:g}.")
        return default
    return value


def uploads_dir() -> Path:
    """Where :func:`save_upload` keeps uploaded texts: the only files the URL may name."""
    return cache_dir() / "uploads"


_UPLOAD_NAME = re.compile(r"[0-9a-f]{16}\.(txt|jsonl)")


def is_upload(path: str) -> bool:
    """``path`` is an existing file that :func:`save_upload` wrote (symlinks, ``..`` resolved)."""
    try:
        p = Path(path).resolve(strict=True)
        root = uploads_dir().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return p.parent == root and bool(_UPLOAD_NAME.fullmatch(p.name)) and p.is_file()


def url_calib() -> str:
    """``?calib=``: ``pydoc`` or a file uploaded through this app, else ``pydoc``.

    A link must not make the app read any other local file. A refused value is remembered for
    the session (the URL is rewritten to ``pydoc``) so the sidebar keeps warning about it."""
    raw = st.query_params.get("calib")
    if raw is None or raw == BUNDLED or is_upload(raw):
        return raw or BUNDLED
    st.session_state["sb_calib_refused"] = True
    return BUNDLED


def url_drop(key: str) -> None:
    """Remove ``?key=`` from the URL (a parameter an old or crafted link must not set)."""
    if key in st.query_params:
        del st.query_params[key]


def url_write(**values: str) -> None:
    """Put the page's choices in the URL, so a reload or a shared link keeps them."""
    for key, value in values.items():
        st.query_params[key] = value


def sidebar() -> dict:
    """The sidebar's choices; they live in the URL's query params so a reload keeps them.

    Except ``trust_remote_code``: never read from or written to the URL. It is ticked by hand,
    per session and per model (the checkbox's key holds the model), and shown while on."""
    url_drop("trust_remote_code")  # an old or crafted link: never honour it
    with st.sidebar:
        st.header("mixviz")
        model = st.text_input(
            "Model",
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
            "SGLang: fused q/k/v and gate/up share one format; llama.cpp: GGML types only).",
        )
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
                "Samples",
                1,
                512,
                url_int("nsamples", 16, 1, 512, "Samples"),
                key="sb_nsamples",
            )
            seqlen = st.number_input(
                "Tokens per sample",
                16,
                4096,
                url_int("seqlen", 256, 16, 4096, "Tokens per sample"),
                key="sb_seqlen",
            )
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
                where = describe(*placement(device, dtype))
                st.caption(f"Runs on {where[0]} in {where[1]}")
            except MixvizError as e:
                st.error(str(e))
        trust_key = f"sb_trust:{model.strip()}"  # another model starts unticked
        for k in [k for k in st.session_state if str(k).startswith("sb_trust:")]:
            if k != trust_key:  # and switching back does not restore an earlier tick
                del st.session_state[k]
        trust = st.checkbox(
            "Trust remote code",
            value=False,
            key=trust_key,
            help="Run this model's own Python code from its repository. Tick only for a model "
            "you trust; it is asked again for every model and every session.",
        )
    if trust:
        st.warning(
            f"Remote code enabled for {model.strip()}: its repository's Python code runs "
            "in this app.",
            icon=":material/warning:",
        )
    url_write(
        model=model,
        options=",".join(options),
        metric=metric,
        noscale="1" if accounting.startswith("without") else "0",
        shared=",".join(shared),
        target=target,
        calib=calib,
        nsamples=str(nsamples),
        seqlen=str(seqlen),
        device=device,
        dtype=dtype,
    )
    return {
        "model": model.strip(),
        "options": options,
        "metric": metric,
        "ignore_scale_bits": accounting.startswith("without"),
        "shared": shared,
        "target": "" if target == "any" else target,
        "calib": calib,
        "nsamples": int(nsamples),
        "seqlen": int(seqlen),
        "trust_remote_code": trust,
        "device": device,
        "dtype": dtype,
    }


def save_upload(data: bytes, name: str) -> str:
    """Store an uploaded text under a name derived from its content (never the user's name)."""
    if len(data) > MAX_BYTES:
        raise MixvizError(
            f"uploaded file {name} is larger than the {MAX_BYTES >> 20} MB limit "
            f"({len(data) >> 20} MB)"
        )
    suffix = ".jsonl" if name.lower().endswith(".jsonl") else ".txt"
    path = uploads_dir() / (hashlib.sha256(data).hexdigest()[:16] + suffix)
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
        "device": choice["device"],
        "dtype": choice["dtype"],
    }


PROFILE_FIRST = "Profile this model first (Profile page) with the sidebar's settings."


class ProfileMiss(LookupError):
    """No profile on disk for these settings (yet). Raised by the cached loader so that the
    miss is not memoised — the next look-up, after profiling, finds the file — while the
    profiles already cached stay cached."""


def cached_profile(choice: dict) -> Profile | None:
    """The profile for the sidebar's choices if it is on disk, else None (never computes).

    Raises :class:`MixvizError` when it cannot be looked up (a bad model name, say)."""
    if not choice["options"]:
        return None
    kw = profile_kwargs(choice)
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
    try:
        return _profile_on_disk(choice["model"], key, str(cache_dir()))
    except ProfileMiss:
        return None


@st.cache_resource(show_spinner=False, max_entries=16)
def _profile_on_disk(model: str, key: tuple, where: str) -> Profile:
    """Only hits are memoised: a miss raises (Streamlit caches no call that raises). ``where``
    (the cache folder) is part of the key: another folder is another set of profiles."""
    prof = profile_model(model, compute=False, **dict(key))
    if prof is None:
        raise ProfileMiss(model)
    return prof


def require_profile(choice: dict, missing: str | None = PROFILE_FIRST) -> Profile | None:
    """The page's profile for the sidebar's choices, from disk (never computed here), or the
    page stops.

    A profile that cannot be looked up (a bad model name, an unreadable text) is shown as an
    error and stops the page; so does one not made yet, with ``missing`` as a note. With
    ``missing=None`` a profile not made yet is returned as None instead (for a page that can do
    without it or offers to make it)."""
    try:
        profile = cached_profile(choice)
    except MixvizError as e:
        st.error(str(e))
        st.stop()
    if profile is None and missing is not None:
        st.info(missing)
        st.stop()
    return profile


def forget_profiles() -> None:
    """Drop the memoised profiles (one was just recomputed and replaced on disk)."""
    _profile_on_disk.clear()


def profile_time(choice: dict, profile: Profile) -> str:
    """When the cached ``profile`` was written, as ``2026-11-28 01:53`` (local time)."""
    import time

    from mixviz.paths import safe_filename
    from mixviz.sensitivity.profile import profiles_dir

    path = profiles_dir() / f"{safe_filename(profile.model)}-{profile.metric}-{profile.key}.json"
    if not path.is_file():
        return "earlier"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))


@st.cache_resource(show_spinner=False, max_entries=32)
def problem_for(
    _profile,
    key: str,
    ignore_scale_bits: bool,
    shared: tuple[str, ...],
    pins: tuple[tuple[str, str], ...],
    target: str = "",
) -> Problem:
    return Problem.from_profile(
        _profile,
        ignore_scale_bits=ignore_scale_bits,
        shared=list(shared),
        pins=dict(pins),
        target=target or None,
    )


@st.cache_data(show_spinner=False, max_entries=32)
def frontier_for(_problem: Problem, key: tuple) -> dict:
    from mixviz.allocation.strategies import frontier

    return frontier(_problem, 30)


def layers_frame(report: dict) -> pd.DataFrame:
    return pd.DataFrame(report["layers"])


def schemes_frame(report: dict) -> pd.DataFrame:
    """One row per format: formats every block linear can use first, by bits; a format some
    layers cannot use says why in words."""
    from mixviz.models.schemes import get_scheme

    features = {x["name"]: x["in_features"] for x in report["layers"]}
    rows = []
    for name, s in report["schemes"].items():
        scheme = get_scheme(name)
        bad = sorted({features[n] for n in s["unavailable"] if n in features})
        rows.append(
            {
                "scheme": name,
                "available": "all layers"
                if not bad
                else f"not for {len(s['unavailable'])} of {len(features)} layers: group "
                f"{scheme.group_size} does not divide {_join(bad)} input features",
                "avg bits": s["avg_bits"],
                "avg bits (no scale)": s["avg_bits_no_scale"],
            }
        )
    frame = pd.DataFrame(rows)
    order = sorted(
        range(len(rows)), key=lambda i: (rows[i]["available"] != "all layers", rows[i]["avg bits"])
    )
    return frame.iloc[order].reset_index(drop=True)


def _join(numbers: list[int]) -> str:
    """``[576]`` → ``'576'``; ``[576, 1536]`` → ``'576 or 1536'``."""
    text = [str(n) for n in numbers]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


def task_metrics(frame: pd.DataFrame, tasks: list[str]) -> str:
    """Which metric the accuracy of ``tasks`` is (``acc``, ``acc_norm``, or both)."""
    from mixviz.report.tables import PRIMARY

    found = [next((m for m in PRIMARY if f"{t}:{m}" in frame), "acc") for t in tasks]
    return " / ".join(dict.fromkeys(found)) or "acc"


def items_per_task(store, frame: pd.DataFrame) -> str:
    """`` (480 items)`` from the runs' item counts (``n_items``: all tasks together), or
    `` (50 items per task)`` from the spec's limit for runs that stored no count."""
    unit = "items"
    if "n_items" in frame and frame["n_items"].notna().any():
        counts = {int(n) for n in frame["n_items"].dropna()}
    else:
        counts = {store.get(i).spec.get("limit") for i in frame["id"]}
        unit = "items per task"
    counts.discard(None)
    if not counts:
        return ""
    shown = "–".join(str(n) for n in sorted({min(counts), max(counts)}))
    return f" ({shown} {unit})"


@st.cache_resource(show_spinner=False, max_entries=8)
def model_layers(spec: str) -> dict:
    """``{name: Layer}`` of a model's linear layers (from its meta model: no weights)."""
    ref = model_ref(spec)
    return {x.name: x for x in mixviz.inventory(mixviz.meta_model(ref))}


@st.cache_data(show_spinner=False, max_entries=256)
def recipe_bits(model: str, recipe: tuple[tuple[str, str], ...]) -> float:
    """A recipe's average bits (with scale bits, as runs report them) before it has run."""
    from mixviz.report.recipe import Recipe

    return Recipe(model, "", dict(recipe)).average_bits(model_layers(model).values(), False)


def quantize_panel(choice: dict, recipe: dict[str, str], name: str, budget, key: str) -> None:
    """*Quantize*: write ``recipe`` as a real checkpoint (format, folder) — a queued job that
    reloads the files and verifies them against the in-memory model (``mixviz quantize``)."""
    from mixviz.models.targets import FORMATS
    from mixviz.paths import safe_filename
    from mixviz.runs.backends import get_backend, submit
    from mixviz.runs.ship import quantize_spec

    c1, c2, c3 = st.columns([1, 3, 1])
    fmt = c1.selectbox("Checkpoint format", FORMATS, key=f"{key}_quantize_format")
    stem = safe_filename(f"{choice['model']}-{name}-{fmt}")
    out = c2.text_input(
        "Folder", str(cache_dir() / "checkpoints" / stem), key=f"{key}_quantize_out_{fmt}"
    )
    if not c3.button("Quantize", key=f"{key}_quantize", help="a queued job, like a run"):
        return
    try:
        ref = model_ref(choice["model"], choice["trust_remote_code"])
        spec = quantize_spec(
            ref,
            recipe,
            fmt,
            out,
            layers=list(model_layers(choice["model"]).values()),
            strategy=name,
            budget=budget,
            trust_remote_code=choice["trust_remote_code"],
            device=choice["device"],
            dtype=choice["dtype"],
        )
        sub = submit(get_backend(), spec)
        st.success(sub.describe(spec.label) + ": follow it on the Runs page")
    except MixvizError as e:
        st.error(str(e))


@st.cache_data(show_spinner=False, max_entries=64)
def other_params(spec: str, allocated: int) -> int:
    """Parameters of the model outside the ``allocated`` ones (embedding, norms; tied once)."""
    seen = {id(p): p.numel() for p in mixviz.meta_model(model_ref(spec)).parameters()}
    return sum(seen.values()) - allocated


def file_size(spec: str, bpw: float, allocated: int) -> str:
    """``123.4 MB (…)``: the allocated layers at ``bpw`` plus the rest at BF16 — the size
    ``allocate --size`` solves for."""
    rest = other_params(spec, allocated)
    total = bpw * allocated / 8 + 2 * rest
    return f"{total / 1e6:.1f} MB (the other {rest / 1e6:.1f} M parameters at BF16)"
