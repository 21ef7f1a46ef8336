"""Profiles: per-layer, per-option sensitivity scores, computed once and cached.

>>> p = profile_model("tiny", options="MXFP4,MXFP8", metric="hessian", nsamples=4, seqlen=64)
>>> down = "model.layers.0.mlp.down_proj"
>>> p.score(down, "MXFP4") > p.score(down, "MXFP8")
True
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.device import CPU
from mixviz.models.inventory import Layer, fused_group, kind_of
from mixviz.models.loading import ModelRef
from mixviz.models.schemes import Scheme, get_scheme, layer_bits, parse_options
from mixviz.paths import atomic_write_json, cache_dir, check_header, read_json, safe_filename
from mixviz.sensitivity.metrics import DEFAULT_METRIC, METRICS, metric_names

FORMAT = "mixviz.profile"
VERSION = 1
# DEFAULT_METRIC is defined with the registry (mixviz.sensitivity.metrics); importing it from
# here, as the CLI and the report do, works too.

BACKENDS = ("local", "ray")  # where scores are computed: this process, or Ray tasks (kl only)

# progress(done, total, message); return value ignored
ProgressFn = Callable[[int, int, str], None]


class Cancelled(MixvizError):
    """Profiling was cancelled by the caller."""


@dataclass(frozen=True)
class Calib:
    source: str
    hash: str
    nsamples: int
    seqlen: int


@dataclass(frozen=True)
class Row:
    layer: str
    option: str
    bits: int
    bits_no_scale: int
    score: float | None  # None: the option is unavailable for this layer

    @classmethod
    def of(cls, layer: Layer, scheme: Scheme, score: float | None) -> Row:
        """A row carrying the layer's bits under ``scheme`` in both accountings."""
        i, o = layer.in_features, layer.out_features
        return cls(
            layer.name,
            scheme.name,
            layer_bits(scheme, i, o),
            layer_bits(scheme, i, o, ignore_scale_bits=True),
            score,
        )


@dataclass(frozen=True)
class Profile:
    """Scores of every candidate layer under every option, and how they were obtained."""

    model: str
    model_hash: str
    metric: str
    options: tuple[str, ...]
    calib: Calib
    seconds: float
    layers: tuple[Layer, ...]
    rows: tuple[Row, ...]
    versions: dict = field(default_factory=dict, compare=False, hash=False)
    subset: str | None = None
    device: str = CPU  # the device type it was computed on (a profile before this: the CPU)
    dtype: str = "float32"

    # ---------------------------------------------------------------- queries

    def score(self, layer: str, option: str) -> float | None:
        return self._index()[(layer, option)].score

    def row(self, layer: str, option: str) -> Row:
        return self._index()[(layer, option)]

    def _index(self) -> dict[tuple[str, str], Row]:
        cached = self.__dict__.get("_idx")
        if cached is None:
            cached = {(r.layer, r.option): r for r in self.rows}
            object.__setattr__(self, "_idx", cached)
        return cached

    @property
    def key(self) -> str:
        """A short digest of everything that produced the scores."""
        return profile_key(
            self.model_hash,
            self.metric,
            self.options,
            self.calib,
            self.subset,
            any(x.kind == "lm_head" for x in self.layers),
            self.device,
            self.dtype,
        )

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "model_hash": self.model_hash,
            "metric": self.metric,
            "options": list(self.options),
            "calib": vars(self.calib).copy(),
            "seconds": self.seconds,
            "versions": self.versions,
            "subset": self.subset,
            "device": self.device,
            "dtype": self.dtype,
            "layers": [
                {
                    k: x.to_dict()[k]
                    for k in (
                        "name",
                        "block",
                        "kind",
                        "numel",
                        "group",
                        "in_features",
                        "out_features",
                    )
                }
                for x in self.layers
            ],
            "rows": [vars(r).copy() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        check_header(d, FORMAT, VERSION, "profile")
        try:
            options = tuple(get_scheme(o).name for o in d["options"])
            layers = tuple(Layer.from_dict(x) for x in d["layers"])
            rows = tuple(
                Row(
                    r["layer"],
                    get_scheme(r["option"]).name,
                    int(r["bits"]),
                    int(r["bits_no_scale"]),
                    None if r["score"] is None else float(r["score"]),
                )
                for r in d["rows"]
            )
            calib = Calib(**d["calib"])
            prof = cls(
                d["model"],
                d["model_hash"],
                d["metric"],
                options,
                calib,
                float(d["seconds"]),
                layers,
                rows,
                d.get("versions", {}),
                d.get("subset"),
                d.get("device", CPU),
                d.get("dtype", "float32"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MixvizError(f"malformed profile: {type(e).__name__}: {e}") from None
        names = {x.name for x in layers}
        if any(r.layer not in names or r.option not in options for r in rows):
            raise MixvizError("malformed profile: a row names a layer or option not listed")
        return prof

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_dict(read_json(path, "profile"))


def profile_key(
    model_hash: str,
    metric: str,
    options,
    calib: Calib,
    subset: str | None,
    include_lm_head: bool,
    device: str = CPU,
    dtype: str = "float32",
) -> str:
    """A digest of everything that changes a profile's scores, where it ran included (the
    device type and dtype, as :func:`mixviz.models.device.describe` names them)."""
    doc = {
        "model": model_hash,
        "metric": metric,
        "options": sorted(options),
        "calib": vars(calib),
        "subset": subset,
        "lm_head": include_lm_head,
        "device": device,
        "dtype": dtype,
        "profile_version": VERSION,
        "versions": library_versions(),
        "algo": _ALGO_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


# Bump when a metric's computation changes (2: fisher's per-layer act term, hessian's bias).
_ALGO_VERSION = 2


def library_versions() -> dict:
    """Versions of the libraries whose code changes a score (part of every cache key)."""
    from importlib.metadata import version

    out = {}
    for pkg in ("torch", "transformers", "auto-round"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "unknown"
    return out


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def profile_model(
    model: str | ModelRef,
    *,
    options: str | list[str] = "MXFP4,MXFP8",
    metric: str = DEFAULT_METRIC,
    nsamples: int = 16,
    seqlen: int = 256,
    calib: str = "pydoc",
    use_cache: bool = True,
    layers: str | None = None,
    include_lm_head: bool = False,
    allow_partial: bool = False,
    trust_remote_code: bool = False,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    compute: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    backend: str = "local",
    ray_address: str | None = None,
    offload: bool = False,
) -> Profile | None:
    """Score every candidate layer of ``model`` under each option with ``metric``.

    ``model`` is a resolved :class:`~mixviz.models.loading.ModelRef` (what code below the CLI
    and the app passes), or a name resolved once here, with ``trust_remote_code`` (a ref
    carries its own; the flag is then ignored). ``metric`` is a name in the registry
    (:func:`~mixviz.sensitivity.metrics.metric_names`). ``layers`` is a regex restricting the
    scored layers (useful for the costly ``kl``). An option whose group size does not divide
    some layer is an error, unless ``allow_partial``: those rows then carry ``score: None`` and
    the allocator avoids them. Cached under ``cache/profiles/``; a second identical call
    returns at once. With ``compute=False`` only the cache is consulted (None when the profile
    was never made). ``device``/``dtype`` say where the model runs (``auto``: CUDA in bfloat16
    where there is one, else the CPU in float32); what they resolve to is recorded and keyed.
    ``backend="ray"`` fans ``kl`` out over Ray tasks at ``ray_address``
    (:mod:`mixviz.sensitivity.fanout`); the scores, and so the cache key, are the same.
    ``offload`` keeps the weights on the CPU and moves one block at a time to ``device``
    (:mod:`mixviz.sensitivity.offload`), for a model larger than the device: the scores are the
    same, so it is neither keyed nor recorded.
    """
    from mixviz.models.device import describe, placement
    from mixviz.models.loading import resolve_model
    from mixviz.models.text import calibration_text

    _check_args(metric, nsamples, seqlen, backend, offload)
    schemes = parse_options(options)
    dev, torch_dtype = placement(device, dtype)
    where = describe(dev, torch_dtype)
    ref = (
        model
        if isinstance(model, ModelRef)
        else resolve_model(model, trust_remote_code=trust_remote_code)
    )
    corpus = calibration_text(calib)
    cands = _candidates(ref, layers, include_lm_head)
    _check_available(cands, schemes, allow_partial)

    cal = Calib(
        corpus.source if corpus.source == "pydoc" else Path(corpus.source).name,
        corpus.hash,
        nsamples,
        seqlen,
    )
    names = [s.name for s in schemes]
    key = profile_key(ref.hash, metric, names, cal, layers, include_lm_head, *where)
    path = profiles_dir() / f"{safe_filename(ref.name)}-{metric}-{key}.json"
    if use_cache and path.is_file():
        try:
            return Profile.load(path)
        except MixvizError:
            pass  # corrupt or truncated cache file: recompute, never trust it
    if not compute:
        return None

    t0 = time.perf_counter()
    at = (dev, torch_dtype)
    if backend == "ray":
        from mixviz.sensitivity.fanout import kl_over_ray

        def check() -> None:
            if cancel and cancel():
                raise Cancelled("profiling cancelled")

        fan = {"address": ray_address, "progress": progress, "check": check}
        scores = kl_over_ray(ref, cands, schemes, corpus, nsamples, seqlen, at, **fan)
    else:
        scores = _compute(
            ref, cands, schemes, corpus, metric, nsamples, seqlen, progress, cancel, (*at, offload)
        )
    rows = [
        Row.of(x, s, float(scores[(x.name, s.name)]) if s.available_for(x.in_features) else None)
        for x in cands
        for s in schemes
    ]
    prof = Profile(
        ref.name,
        ref.hash,
        metric,
        tuple(s.name for s in schemes),
        cal,
        round(time.perf_counter() - t0, 3),
        tuple(cands),
        tuple(rows),
        library_versions(),
        layers,
        *where,
    )
    if use_cache:
        prof.save(path)
    return prof


def _check_args(metric: str, nsamples: int, seqlen: int, backend: str, offload: bool) -> None:
    """Refuse what cannot be profiled, before anything is loaded."""
    if metric not in METRICS:
        raise MixvizError(f"unknown metric {metric!r}; choose from {', '.join(metric_names())}")
    if backend not in BACKENDS:
        raise MixvizError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    if backend == "ray" and metric != "kl":
        raise MixvizError(f"only kl fans out over Ray; profile {metric} with --backend local")
    if offload and not METRICS[metric].offload:
        raise MixvizError(f"{metric} does not support --offload")
    if offload and backend == "ray":
        raise MixvizError(
            "--offload is for one process: with --backend ray each task loads "
            "the model on its own device"
        )
    if not (1 <= nsamples <= 4096 and 8 <= seqlen <= 32768):
        raise MixvizError(
            f"nsamples must be 1..4096 and seqlen 8..32768 (got {nsamples}, {seqlen})"
        )


def _candidates(ref: ModelRef, layers: str | None, include_lm_head: bool) -> list[Layer]:
    """The block linears of ``ref`` (plus ``lm_head`` if asked) whose names match ``layers``."""
    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.loading import meta_model

    all_layers = inventory(meta_model(ref))
    cands = block_linears(all_layers)
    if include_lm_head:
        cands += [x for x in all_layers if x.kind == "lm_head"]
    if layers:
        try:
            rx = re.compile(layers)
        except re.error as e:
            raise MixvizError(f"bad --layers regex {layers!r}: {e}") from None
        cands = [x for x in cands if rx.search(x.name)]
        if not cands:
            raise MixvizError(f"--layers {layers!r} matches no candidate layer of {ref.name}")
    if not cands:
        raise MixvizError(f"model {ref.name!r} has no linear layers inside transformer blocks")
    return cands


def _check_available(layers: list[Layer], schemes: list[Scheme], allow_partial: bool) -> None:
    for s in schemes:
        bad = [x for x in layers if not s.available_for(x.in_features)]
        if len(bad) == len(layers) or (bad and not allow_partial):
            partial = "" if len(bad) == len(layers) else ", or --allow-partial"
            if s.ggml:  # a K-type on rows 256 does not divide: llama.cpp's own fallback
                raise MixvizError(
                    f"{s.name} is unavailable for {len(bad)} of {len(layers)} layers, e.g. "
                    f"{bad[0].name}: {s.why_unavailable(bad[0].in_features)}; add that type"
                    + partial
                )
            alt = ", ".join(o for o in (f"W{s.bits}A16G64", f"W{s.bits}A16G32") if o != s.name)
            raise MixvizError(
                f"{s.name} (group {s.group_size}) is unavailable for {len(bad)} of "
                f"{len(layers)} layers, e.g. {bad[0].name} (in_features {bad[0].in_features}); "
                f"use {alt}" + partial
            )


def _compute(ref, layers, schemes, corpus, metric, nsamples, seqlen, progress, cancel, where):
    import torch

    from mixviz.models.device import cpu_device
    from mixviz.models.loading import load_model
    from mixviz.models.text import token_windows
    from mixviz.sensitivity.blocks import decoder_parts
    from mixviz.sensitivity.offload import Offload

    dev, dtype, offload = where
    model, tok = load_model(
        ref, dtype=str(dtype).removeprefix("torch."), device=str(dev), offload=offload
    )
    # offloaded, the embedding stays on the CPU, and so do the tokens it reads
    ids = token_windows(tok, corpus, nsamples, seqlen).to(cpu_device() if offload else dev)
    blocks, _ = decoder_parts(model)
    m = METRICS[metric]
    nbatches = -(-nsamples // m.batch_size)
    total = m.work_units(layers, schemes, nbatches, len(blocks))
    done = 0

    def step(msg: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, msg)
        if cancel and cancel():
            raise Cancelled("profiling cancelled")

    torch.manual_seed(0)
    if progress:
        progress(0, total, f"{metric} on {ref.name}: {nsamples}×{seqlen} tokens")
    kw = {"offload": Offload(dev)} if offload else {}
    return m.score(model, layers, schemes, ids, step, batch_size=m.batch_size, **kw)


def synthetic_profile(
    shapes: dict[str, tuple[int, int]],
    n_blocks: int,
    options: list[str],
    seed: int = 0,
    model: str = "synthetic",
) -> Profile:
    """A Profile with real layer shapes and random but plausible scores (for benchmarks/tests).

    ``shapes`` maps a block-relative name (``self_attn.q_proj``) to (in, out). Each layer gets a
    log-normal sensitivity; an option's score is ``sensitivity · numel · 4^-bits`` (RTN noise).

    >>> p = synthetic_profile({"mlp.down_proj": (128, 64)}, 2, ["W2A16", "W4A16"])
    >>> len(p.rows)
    4
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    schemes = parse_options(options)
    layers, rows = [], []
    for b in range(n_blocks):
        for rel, (i, o) in shapes.items():
            kind = kind_of(rel)
            x = Layer(f"model.layers.{b}.{rel}", b, kind, i, o, i * o, fused_group(kind))
            layers.append(x)
            sens = float(rng.lognormal(0.0, 1.0))
            for s in schemes:
                score = 0.0 if s.bits >= 16 else sens * x.numel * 4.0 ** (-s.bits)
                rows.append(Row.of(x, s, score if s.available_for(i) else None))
    cal = Calib("synthetic", f"seed{seed}", 0, 0)
    return Profile(
        model,
        f"synthetic-{seed}",
        "synthetic",
        tuple(s.name for s in schemes),
        cal,
        0.0,
        tuple(layers),
        tuple(rows),
        {},
        None,
    )


QWEN3_32B_SHAPES = {
    "self_attn.q_proj": (5120, 8192),
    "self_attn.k_proj": (5120, 1024),
    "self_attn.v_proj": (5120, 1024),
    "self_attn.o_proj": (8192, 5120),
    "mlp.gate_proj": (5120, 25600),
    "mlp.up_proj": (5120, 25600),
    "mlp.down_proj": (25600, 5120),
}
