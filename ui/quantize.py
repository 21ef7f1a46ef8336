"""The *Quantize* panel the Allocate and Runs pages share: a recipe written as a real
checkpoint by a queued job."""

from __future__ import annotations

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.models.targets import FORMATS, a_or_an
from mixviz.paths import cache_dir, safe_filename
from ui.caches import checkpoint_bytes, model_layers, model_ref
from ui.sidebar import Choice


def quantize_panel(
    choice: Choice,
    recipe: dict[str, str],
    name: str,
    budget,
    key: str,
    imatrix: str | None = None,
) -> None:
    """*Quantize*: write ``recipe`` as a real checkpoint (format, folder) — a queued job that
    reloads the files and verifies them against the in-memory model (``mixviz quantize``);
    the sidebar's target runtime refuses what it cannot load, as ``--target`` does.
    ``imatrix``: the importance matrix file the profile was weighted by — its GGML layers are
    quantized with it, as ``quantize --imatrix`` does."""
    from mixviz.runs.jobs.backends import get_backend, submit
    from mixviz.runs.jobs.deliver import deliver_now
    from mixviz.runs.runspec import QuantArgs
    from mixviz.runs.ship.step import quantize_spec

    c1, c2, c3 = st.columns([1, 3, 1])
    fmt = c1.selectbox("Checkpoint format", FORMATS, key=f"{key}_quantize_format")
    stem = safe_filename(f"{choice.model}-{name}-{fmt}")
    out = c2.text_input(
        "Folder", str(cache_dir() / "checkpoints" / stem), key=f"{key}_quantize_out_{fmt}"
    )
    limit, iters = size_inputs(choice.model, fmt, key)
    st.caption(checkpoint_size(choice, recipe, fmt))
    if imatrix:
        st.caption(f"GGML layers are quantized with the profile's importance matrix ({imatrix})")
    if not c3.button("Quantize", key=f"{key}_quantize", help="a queued job, like a run"):
        return
    try:
        ref = model_ref(choice.model, choice.trust_remote_code)
        spec = quantize_spec(
            ref,
            recipe,
            fmt,
            out,
            layers=list(model_layers(choice.model).values()),
            target=choice.target or None,
            strategy=name,
            budget=budget,
            trust_remote_code=choice.trust_remote_code,
            device=choice.device,
            dtype=choice.dtype,
            limit=limit,
            quant=QuantArgs(iters=iters, disable_opt_rtn=iters == 0, imatrix=imatrix),
        )
        backend = get_backend()
        sub = submit(backend, spec)
        st.success(sub.describe(spec.label) + ": follow it on the Runs page")
        if sub.reused:  # its files: copied to this folder, or made anew when they are gone
            got = deliver_now(backend, spec, sub.id, reused=True)
            elsewhere = backend.store.get(sub.id).spec["ship"]["out"] != spec.ship.out
            if got.how == "pending" and elsewhere:
                st.info(f"Run {sub.id} is not finished: press Quantize again once it is done "
                        f"to copy its checkpoint to {spec.ship.out}")  # fmt: skip
            elif got.message:
                (st.warning if got.how == "again" else st.success)(got.message)
    except MixvizError as e:
        st.error(str(e))


def checkpoint_size(choice: Choice, recipe: dict[str, str], fmt: str) -> str:
    """``The checkpoint: 123.4 MiB …``: the written files' predicted bytes, as ``quantize``
    predicts them (and records beside the bytes written), or why this format cannot hold the
    recipe."""
    from mixviz.models.targets import check_format

    layers = model_layers(choice.model)
    plan = {**{n: "BF16" for n, x in layers.items() if x.block is not None}, **recipe}
    try:
        check_format(plan, fmt, {n: x.in_features for n, x in layers.items()})
        size = checkpoint_bytes(
            choice.model, tuple(sorted(plan.items())), fmt, choice.device, choice.dtype
        )
    except MixvizError as e:
        return f"The checkpoint: — ({e})"
    return (
        f"The checkpoint: {size / 2**20:.1f} MiB ({size:,} bytes) as {a_or_an(fmt)} file, as "
        "quantize predicts it (recorded beside the bytes it writes)"
    )


def size_inputs(model: str, fmt: str, key: str) -> tuple[int | None, int]:
    """The CLI's ``--limit`` (KLD windows; 0 = all) and ``--iters`` (auto-round tuning steps;
    0 = RTN), and the time such a job is predicted to take on this machine."""
    from mixviz.runs.jobs.forecast import quantize_forecast
    from mixviz.runs.progress import duration
    from mixviz.runs.store import Store

    c1, c2, c3 = st.columns([1, 1, 3])
    limit = c1.number_input(
        "KLD windows (--limit)",
        0,
        4096,
        4,
        key=f"{key}_quantize_limit",
        help="held-out windows of 512 tokens the checkpoint is verified on (fewer: faster, "
        "a wider interval); 0 = all, as the CLI's default (slow)",
    )
    iters = c2.number_input(
        "Tuning steps (--iters)",
        0,
        10_000,
        0,
        key=f"{key}_quantize_iters",
        help="auto-round's tuning steps per block; 0 = plain RTN (no calibration)",
    )
    got = quantize_forecast(Store(), model, int(limit) or None, int(iters), fmt)
    if got.seconds is None:
        c3.caption(f"Predicted time: not known yet ({got.basis}).")
    else:
        c3.caption(f"Predicted time: about {duration(got.seconds)} ({got.basis}).")
    return int(limit) or None, int(iters)


def profile_imatrix(profile) -> str | None:
    """The importance matrix file ``profile`` was weighted by, for :func:`quantize_panel`
    (None without one; a warning where the profile names one that is not kept here)."""
    from mixviz.sensitivity.imatrix import profile_file

    path = profile_file(profile)
    if profile.imatrix and path is None:
        st.warning(f"The profile was weighted by the importance matrix {profile.imatrix}, "
                   "which is not kept here: the checkpoint is quantized without it")  # fmt: skip
    return None if path is None else str(path)
