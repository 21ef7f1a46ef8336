"""The reference study's plan on a model: every row of its tables as a run spec, AutoScheme's
own allocations among them (cached on disk, keyed by all that changes them).

Tables (as in ``shared/REFERENCE.md``): 1 — MXFP4/MXFP8 mixes at 4.5/5/6 bits beside BF16 and
pure MXFP4; 2 and 3 — tail-8 / head-8 / optimal / AutoScheme at 5 and 4.5 bits; 4 — W2+W4 at
3 bits (group 128, or 64 where 128 does not divide). Scale bits are ignored, as in the study.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import allocate
from mixviz.errors import MixvizError
from mixviz.models.device import CPU
from mixviz.models.loading import ModelRef, resolve_model
from mixviz.paths import atomic_write_bytes, atomic_write_json, cache_dir, safe_filename
from mixviz.runs.runspec import RunSpec
from mixviz.sensitivity.profile import DEFAULT_METRIC

MX = ("MXFP4", "MXFP8")


@dataclass(frozen=True)
class Row:
    table: int
    label: str
    spec: RunSpec


@dataclass(frozen=True)
class Protocol:
    """What the study runs on a model: its tasks (``limit`` items each, None: all), the profile
    that guides the allocations (``metric`` on ``nsamples`` calibration windows of ``seqlen``
    tokens), and whether AutoScheme's own allocations join the tables."""

    tasks: tuple[str, ...]
    limit: int | None = None
    metric: str = DEFAULT_METRIC
    nsamples: int = 16
    seqlen: int = 256
    with_autoscheme: bool = True


def int_options(layers) -> tuple[str, str]:
    """W2/W4 at group 128, or the largest group that divides every block linear."""
    for g, suffix in ((128, ""), (64, "G64"), (32, "G32")):
        if all(x.in_features % g == 0 for x in layers):
            return f"W2A16{suffix}", f"W4A16{suffix}"
    raise MixvizError("no group size among 128/64/32 divides every layer of this model")


def reports_dir(model: str) -> Path:
    return cache_dir() / "reports" / safe_filename(model)


def autoscheme_recipe(
    ref,
    options: tuple[str, ...],
    budget: float,
    nsamples: int,
    seqlen: int,
    log: Callable[[str], None],
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, str]:
    """AutoScheme's own allocation (through auto-round) at ``budget``, cached on disk, scored
    on ``device`` in ``dtype`` (:mod:`mixviz.models.device`).

    Every cache here — the allocation, the calibration file, AutoScheme's score folder — is
    keyed by everything that changes it (:func:`autoscheme_key`), not by the model's name.
    """
    from mixviz.models.device import describe, placement
    from mixviz.models.loading import load_model
    from mixviz.models.text import calibration_text, token_windows
    from mixviz.sensitivity.autoscheme import run_autoscheme, scheme_from_autoround

    text = calibration_text()
    dev, torch_dtype = placement(device, dtype)
    where = describe(dev, torch_dtype)
    calib_key = autoscheme_key(ref.hash, (), nsamples, seqlen, text.hash)
    scores_key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash, where=where)
    key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash, budget, where)
    out = reports_dir(ref.name) / f"autoscheme-{'-'.join(options)}-{budget:g}-{key}.json"
    if out.is_file():
        return json.loads(out.read_text())["layers"]
    log(f"AutoScheme {'+'.join(options)} at {budget:g} bits (auto-round)")
    model, tok = load_model(ref, dtype=where[1], device=str(dev))
    calib = reports_dir(ref.name) / f"calib-{nsamples}x{seqlen}-{calib_key}.jsonl"
    if not calib.is_file():
        windows = token_windows(tok, text, nsamples, seqlen + 16)
        atomic_write_bytes(
            calib, "".join(json.dumps({"text": tok.decode(w)}) + "\n" for w in windows).encode()
        )
    scores = cache_dir() / "autoscheme" / scores_key
    config, _ = run_autoscheme(
        model,
        tok,
        list(options),
        str(calib),
        nsamples,
        seqlen,
        scores,
        avg_bits=budget,
        device=str(dev),
    )
    layers = {}
    for name, cfg in config.items():
        if "layers." not in name:  # lm_head and friends stay as they are
            continue
        bits = int(cfg.get("bits", 16) or 16)
        layers[name] = "BF16" if bits >= 16 else scheme_from_autoround(cfg).name
    atomic_write_json(
        out, {"options": list(options), "budget": budget, "key": key, "layers": layers}
    )
    return layers


def autoscheme_key(
    model_hash: str,
    options: tuple[str, ...],
    nsamples: int,
    seqlen: int,
    calib_sha256: str,
    budget: float | None = None,
    where: tuple[str, str] = (CPU, "float32"),
) -> str:
    """Digest of what changes an AutoScheme cache: model, options, calibration, budget, versions,
    and where it is scored (``where``: device type and dtype, as ``describe`` names them).

    >>> a = autoscheme_key("h", ("MXFP4",), 16, 256, "c")
    >>> a != autoscheme_key("h", ("MXFP4",), 8, 256, "c")
    True
    """
    from mixviz.sensitivity.profile import library_versions

    doc = {
        "model": model_hash,
        "options": sorted(options),
        "nsamples": nsamples,
        "seqlen": seqlen,
        "calib": calib_sha256,
        "budget": budget,
        "device": list(where),
        "ignore_scale_bits": True,
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def plan(
    model: str | ModelRef,
    tasks: tuple[str, ...],
    limit: int | None,
    metric: str,
    nsamples: int,
    seqlen: int,
    with_autoscheme: bool,
    log: Callable[[str], None],
) -> list[Row]:
    """Every run of the protocol, as (table, row label, RunSpec), on the default device:
    :func:`plan_protocol` of these settings. ``model`` is a name (resolved here, once) or a
    resolved :class:`ModelRef`."""
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    protocol = Protocol(tuple(tasks), limit, metric, nsamples, seqlen, with_autoscheme)
    return plan_protocol(ref, protocol, log)


def plan_protocol(
    ref: ModelRef,
    protocol: Protocol,
    log: Callable[[str], None],
    layers: list | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
) -> list[Row]:
    """Every run of ``protocol`` on the model ``ref``, as (table, row label, RunSpec).

    ``layers`` is the model's inventory, when the caller has it already. Profiles, runs and
    AutoScheme all run on ``device`` in ``dtype``."""
    from mixviz.models.inventory import block_linears
    from mixviz.sensitivity.profile import profile_model
    from mixviz.sensitivity.spec import ProfileSpec

    linears = block_linears(layers if layers is not None else model_layers(ref))
    p = protocol
    base = dict(
        model=ref.name,
        tasks=tuple(p.tasks),
        limit=p.limit,
        model_hash=ref.hash,
        device=device,
        dtype=dtype,
    )

    def spec(recipe, strategy, budget=None):
        return RunSpec(recipe=recipe, strategy=strategy, budget=budget, **base)

    rows = [
        Row(1, "BF16", spec(None, "bf16")),
        Row(1, "pure 4-bit", spec({x.name: "MXFP4" for x in linears}, "pure MXFP4")),
    ]
    w2, w4 = int_options(linears)
    for options, table_budgets, high in (
        (MX, {1: (4.5, 5, 6), 2: (5,), 3: (4.5,)}, "8"),
        ((w2, w4), {4: (3,)}, "4"),
    ):
        log(f"profiling {ref.name} with {p.metric} for {'+'.join(options)}")
        settings = ProfileSpec(
            options=tuple(options),
            metric=p.metric,
            nsamples=p.nsamples,
            seqlen=p.seqlen,
            device=device,
            dtype=dtype,
        )
        prof = profile_model(ref, settings)
        problem = Problem.from_profile(prof, ignore_scale_bits=True)
        for table, budgets in table_budgets.items():
            for b in budgets:
                if table != 1:
                    for s in ("tail", "head"):
                        a = allocate(problem, b, s)
                        rows.append(
                            Row(table, f"{s} layers {high}-bit", spec(dict(a.layers), s, b))
                        )
                a = allocate(problem, b, "optimal")
                label = f"mixviz {b:g}" if table == 1 else "mixviz (optimal)"
                rows.append(Row(table, label, spec(dict(a.layers), "optimal", b)))
                if p.with_autoscheme:
                    recipe = autoscheme_recipe(
                        ref, options, b, p.nsamples, p.seqlen, log, device, dtype
                    )
                    label = f"AutoScheme {b:g}" if table == 1 else "AutoScheme"
                    rows.append(Row(table, label, spec(recipe, "autoscheme", b)))
    return rows


def model_layers(ref: ModelRef) -> list:
    """The model's layer inventory, from its config alone (no weights loaded)."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model

    return inventory(meta_model(ref))
