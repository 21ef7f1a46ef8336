"""Profiles: per-layer, per-option sensitivity scores, computed once and cached.

>>> spec = ProfileSpec(options="MXFP4,MXFP8", metric="hessian", nsamples=4, seqlen=64)
>>> p = profile_model("tiny", spec)
>>> down = "model.layers.0.mlp.down_proj"
>>> p.score(down, "MXFP4") > p.score(down, "MXFP8")
True
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.device import CPU
from mixviz.models.inventory import Layer
from mixviz.models.loading import ModelRef
from mixviz.models.schemes import Scheme, get_scheme, layer_bits
from mixviz.paths import atomic_write_json, cache_dir, check_header, read_json, safe_filename
from mixviz.sensitivity.metrics import DEFAULT_METRIC as DEFAULT_METRIC  # re-exported
from mixviz.sensitivity.metrics import METRICS
from mixviz.sensitivity.spec import (
    PROFILE_VERSION,
    Calib,
    ProfileSpec,
    library_versions,
    profile_key,
)

FORMAT = "mixviz.profile"
VERSION = PROFILE_VERSION
# DEFAULT_METRIC is defined with the registry (mixviz.sensitivity.metrics), Calib, the cache key
# and library_versions with the spec (mixviz.sensitivity.spec); importing them from here works.

# progress(done, total, message); return value ignored
ProgressFn = Callable[[int, int, str], None]


class Cancelled(MixvizError):
    """Profiling was cancelled by the caller."""


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
    around: str | None = None  # what the layers were scored around (ProfileSpec.around_id)
    imatrix: str | None = None  # the importance matrix GGML types were weighted by

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
            model_hash=self.model_hash,
            metric=self.metric,
            options=self.options,
            calib=self.calib,
            subset=self.subset,
            include_lm_head=any(x.kind == "lm_head" for x in self.layers),
            where=(self.device, self.dtype),
            around=self.around,
            imatrix=self.imatrix,
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
            "around": self.around,
            "imatrix": self.imatrix,
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
                d.get("around"),
                d.get("imatrix"),
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


def profiles_dir() -> Path:
    return cache_dir() / "profiles"


def profile_model(
    model: str | ModelRef,
    spec: ProfileSpec | None = None,
    *,
    use_cache: bool = True,
    allow_partial: bool = False,
    trust_remote_code: bool = False,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    compute: bool = True,
    **fields,
) -> Profile | None:
    """Score every candidate layer of ``model`` under each option of ``spec``.

    ``spec`` (:class:`~mixviz.sensitivity.spec.ProfileSpec`) says what to profile and where;
    ``fields`` are its fields given one by one instead (``profile_model("tiny",
    metric="hessian")``), or changed in ``spec``. ``model`` is a resolved
    :class:`~mixviz.models.loading.ModelRef` (what code below the CLI and the app passes), or a
    name resolved once here, with ``trust_remote_code`` (a ref carries its own; the flag is then
    ignored). An option whose group size does not divide some layer is an error, unless
    ``allow_partial``: those rows then carry ``score: None`` and the allocator avoids them.
    Cached under ``cache/profiles/``; a second identical call returns at once. With
    ``compute=False`` only the cache is consulted (None when the profile was never made).
    What ``device``/``dtype`` resolve to is recorded and keyed; ``backend="ray"`` fans ``kl``
    out over Ray tasks (:mod:`mixviz.sensitivity.fanout`) and ``offload`` runs one block at a
    time on the device (:mod:`mixviz.sensitivity.offload`): same scores, same key.
    ``progress(done, total, message)`` is called as work is done; ``cancel()`` returning True
    stops it (:class:`Cancelled`).
    """
    from mixviz.models.device import describe, placement
    from mixviz.models.loading import resolve_model
    from mixviz.models.text import calibration_text

    spec = replace(spec, **fields) if spec is not None else ProfileSpec(**fields)
    at = placement(spec.device, spec.dtype)
    where = describe(*at)
    ref = (
        model
        if isinstance(model, ModelRef)
        else resolve_model(model, trust_remote_code=trust_remote_code)
    )
    corpus = calibration_text(spec.calib)
    cands = _candidates(ref, spec.layers, spec.include_lm_head)
    schemes = spec.schemes()
    _check_available(cands, schemes, allow_partial)

    cal = spec.calib_record(corpus)
    key = spec.key(ref.hash, cal, where)
    path = profiles_dir() / f"{safe_filename(ref.name)}-{spec.metric}-{key}.json"
    cached = _load_cached(path) if use_cache else None
    if cached is not None or not compute:
        return cached

    t0 = time.perf_counter()
    scores = _scores(ref, cands, spec, corpus, at, _Watch(progress, cancel))
    rows = [
        Row.of(x, s, float(scores[(x.name, s.name)]) if _scored(s, x) else None)
        for x in cands
        for s in schemes
    ]
    prof = Profile(
        ref.name,
        ref.hash,
        spec.metric,
        spec.options,
        cal,
        round(time.perf_counter() - t0, 3),
        tuple(cands),
        tuple(rows),
        library_versions(),
        spec.layers,
        *where,
        spec.around_id(),
        spec.imatrix_id(),
    )
    if use_cache:
        prof.save(path)
    return prof


def _load_cached(path: Path) -> Profile | None:
    """The profile cached at ``path``; None when there is none, or it cannot be read (a corrupt
    or truncated file is recomputed, never trusted)."""
    if not path.is_file():
        return None
    try:
        return Profile.load(path)
    except MixvizError:
        return None


@dataclass(frozen=True)
class _Watch:
    """The caller's ``progress`` and ``cancel`` callbacks (either may be None)."""

    progress: ProgressFn | None = None
    cancel: Callable[[], bool] | None = None

    def report(self, done: int, total: int, msg: str) -> None:
        if self.progress:
            self.progress(done, total, msg)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the caller asks to stop."""
        if self.cancel and self.cancel():
            raise Cancelled("profiling cancelled")


def _scores(ref, cands: list[Layer], spec: ProfileSpec, corpus, at, watch: _Watch) -> dict:
    """The metric's scores of ``cands``, in this process or fanned out over Ray."""
    if spec.backend == "ray":
        from mixviz.sensitivity.fanout import kl_over_ray

        return kl_over_ray(ref, cands, spec, corpus, at, progress=watch.progress, check=watch.check)
    around = _around_plan(ref, cands, spec.around) if spec.around is not None else None
    return _compute(ref, cands, spec, corpus, at, watch, around=around)


def _around_plan(ref: ModelRef, cands: list[Layer], around: str) -> dict[str, Scheme]:
    """What the layers are scored around: ``around`` (:attr:`ProfileSpec.around`) as layer →
    scheme. An option puts every candidate at it; a recipe (any JSON with a ``layers`` map, as
    ``allocate --out`` and ``refine --out`` write) gives each named layer its option, the rest
    unquantized. A layer the option cannot take, or a name the model lacks, is an error."""

    if not Path(around).is_file():
        s = get_scheme(around)
        bad = [x for x in cands if not s.available_for(x.in_features)]
        if bad:
            raise MixvizError(
                f"--around {s.name}: unavailable for {len(bad)} layers, e.g. {bad[0].name}; "
                "give a recipe instead"
            )
        return {x.name: s for x in cands}
    doc = read_json(around, "recipe")
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise MixvizError(f'--around {around}: no "layers" map of layer → option')
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model

    known = {x.name: x for x in inventory(meta_model(ref))}
    missing = [n for n in layers if n not in known]
    if missing:
        raise MixvizError(f"--around {around}: {ref.name} has no layer {missing[0]!r}")
    plan = {n: get_scheme(str(o)) for n, o in layers.items()}
    bad = [n for n, s in plan.items() if not s.available_for(known[n].in_features)]
    if bad:
        raise MixvizError(f"--around {around}: {plan[bad[0]].name} cannot hold {bad[0]}")
    return plan


def _candidates(ref: ModelRef, layers: str | None, include_lm_head: bool) -> list[Layer]:
    """The block linears of ``ref`` (plus ``lm_head`` if asked) whose names match ``layers``."""
    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.loading import meta_model

    all_layers = inventory(meta_model(ref))
    cands = block_linears(all_layers)
    if include_lm_head:
        cands += [x for x in all_layers if x.kind == "lm_head"]
    if layers:
        rx = re.compile(layers)  # checked by the spec
        cands = [x for x in cands if rx.search(x.name)]
        if not cands:
            raise MixvizError(f"--layers {layers!r} matches no candidate layer of {ref.name}")
    if not cands:
        raise MixvizError(f"model {ref.name!r} has no linear layers inside transformer blocks")
    return cands


def _scored(s: Scheme, x: Layer) -> bool:
    """At an option it takes, or as llama.cpp's fallback (``Q4_K`` on 576 as its ``Q5_0``)."""
    return s.available_for(x.in_features) or s.servable_by_llamacpp(x.in_features)


def _check_available(layers: list[Layer], schemes: list[Scheme], allow_partial: bool) -> None:
    for s in schemes:
        bad = [x for x in layers if not _scored(s, x)]
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


def _compute(ref, layers, spec: ProfileSpec, corpus, at, watch: _Watch, *, around=None):
    """The metric's scores of ``layers``, computed here with the model loaded on ``at`` (the
    resolved device and dtype). ``around`` (from :func:`_around_plan`): the metric scores
    in that context, as its :attr:`~mixviz.sensitivity.metrics.Metric.in_context` says."""
    import torch

    from mixviz.models.device import cpu_device
    from mixviz.models.loading import load_model
    from mixviz.models.text import token_windows
    from mixviz.sensitivity.blocks import decoder_parts
    from mixviz.sensitivity.offload import Offload

    dev, dtype = at
    model, tok = load_model(
        ref, dtype=str(dtype).removeprefix("torch."), device=str(dev), offload=spec.offload
    )
    # offloaded, the embedding stays on the CPU, and so do the tokens it reads
    nsamples, seqlen = spec.nsamples, spec.seqlen
    ids = token_windows(tok, corpus, nsamples, seqlen).to(cpu_device() if spec.offload else dev)
    blocks, _ = decoder_parts(model)
    m = METRICS[spec.metric]
    nbatches = -(-nsamples // m.batch_size)
    total = m.work_units(layers, spec.schemes(), nbatches, len(blocks))
    done = 0

    def step(msg: str) -> None:
        nonlocal done
        done += 1
        watch.report(done, total, msg)
        watch.check()

    torch.manual_seed(0)
    watch.report(0, total, f"{spec.metric} on {ref.name}: {nsamples}×{seqlen} tokens")
    kw = {"offload": Offload(dev)} if spec.offload else {}
    if spec.imatrix is not None:  # GGML types weighted as llama-quantize weights them
        from mixviz.sensitivity.imatrix import weighting

        with weighting(model, spec, ids, [x.name for x in layers], ref.hash):
            return _score(m, model, layers, spec, ids, step, around, kw)
    return _score(m, model, layers, spec, ids, step, around, kw)


def _score(m, model, layers, spec: ProfileSpec, ids, step, around, kw: dict):
    """``m.score`` of ``layers``, at ``around``'s operating point where it asks for one."""
    if around and m.in_context == "swap":
        kw["around"] = around
    if around and m.in_context == "gradient":
        from mixviz.sensitivity.operating_point import at as operating_point

        with operating_point(model, around, straight_through=True):
            return m.score(model, layers, spec.schemes(), ids, step, batch_size=m.batch_size)
    return m.score(model, layers, spec.schemes(), ids, step, batch_size=m.batch_size, **kw)
