"""What a profile is asked for — :class:`ProfileSpec`, checked when made — and its cache key.

>>> spec = ProfileSpec(options="MXFP8, mxfp4", metric="hessian", nsamples=4, seqlen=64)
>>> spec.options
('MXFP4', 'MXFP8')
>>> ProfileSpec.from_dict(spec.to_dict()) == spec
True
>>> ProfileSpec(metric="entropy")
Traceback (most recent call last):
...
mixviz.errors.MixvizError: unknown metric 'entropy'; choose from fisher, hessian, delta_loss, kl
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from mixviz.errors import MixvizError
from mixviz.models.device import CPU, check_device, check_dtype
from mixviz.models.schemes import Scheme, get_scheme, parse_options
from mixviz.paths import check_header
from mixviz.sensitivity.metrics import DEFAULT_METRIC, METRICS, metric_names

if TYPE_CHECKING:
    from mixviz.models.text import Corpus

FORMAT = "mixviz.profile-spec"
VERSION = 1
PROFILE_VERSION = 1  # the profile file's format version (mixviz.sensitivity.profile.VERSION)

BACKENDS = ("local", "ray")  # where scores are computed: this process, or Ray tasks (kl only)

# Bump when a metric's computation changes (2: fisher's per-layer act term, hessian's bias).
_ALGO_VERSION = 2


@dataclass(frozen=True)
class Calib:
    """The calibration a profile was computed on: the text's name and hash, and its size."""

    source: str
    hash: str
    nsamples: int
    seqlen: int


@dataclass(frozen=True)
class ProfileSpec:
    """Everything that says which profile to make (and, but for where it runs, what it holds).

    ``options`` (``"MXFP4,MXFP8"`` or a list) is kept as canonical names sorted by bits;
    ``metric`` is a name in the registry; ``nsamples`` × ``seqlen`` tokens of ``calib``
    (``pydoc`` or a ``.txt``/``.jsonl`` file); ``layers`` a regex restricting the scored layers;
    ``include_lm_head`` scores ``lm_head`` too; ``device``/``dtype`` say where the model runs
    (``auto``: CUDA in bfloat16 where there is one, else the CPU in float32). ``offload`` keeps
    the weights on the CPU and moves one block at a time to the device; ``backend="ray"`` fans
    ``kl`` out over Ray tasks at ``ray_address``: neither changes the scores, so neither is
    keyed. ``around`` scores each layer in the context of the others quantized: an option name
    (every candidate layer at that option) or the path of a recipe JSON file.
    """

    options: tuple[str, ...] | str = "MXFP4,MXFP8"
    metric: str = DEFAULT_METRIC
    nsamples: int = 16
    seqlen: int = 256
    calib: str = "pydoc"
    layers: str | None = None
    include_lm_head: bool = False
    device: str = "auto"
    dtype: str = "auto"
    offload: bool = False
    around: str | None = None
    backend: str = "local"
    ray_address: str | None = None
    imatrix: str | None = None
    """llama.cpp's importance matrix for GGML types: ``auto`` (computed from the calibration
    windows, :mod:`mixviz.sensitivity.imatrix`) or a llama.cpp imatrix file (GGUF or ``.dat``)."""

    def __post_init__(self) -> None:
        _check_run(self)
        self._set("options", tuple(s.name for s in parse_options(self.options)))
        self._set("device", check_device(self.device))
        self._set("dtype", check_dtype(self.dtype))
        if self.layers:
            try:
                re.compile(self.layers)
            except re.error as e:
                raise MixvizError(f"bad --layers regex {self.layers!r}: {e}") from None
        if self.around is not None:
            self._set("around", _check_around(self.around))
            _check_in_context(self)
        _check_imatrix(self)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def schemes(self) -> list[Scheme]:
        """The options' schemes, sorted by bits."""
        return [get_scheme(o) for o in self.options]

    def calib_record(self, corpus: Corpus) -> Calib:
        """The :class:`Calib` a profile of ``corpus`` (this spec's ``calib``, loaded) records."""
        source = corpus.source if corpus.source == "pydoc" else Path(corpus.source).name
        return Calib(source, corpus.hash, self.nsamples, self.seqlen)

    def around_id(self) -> str | None:
        """What ``around`` stands for, as recorded and keyed: the option's name, or a recipe
        file's name and the SHA-256 of its bytes (``recipe.json@3f2a…``: an edited file is
        another profile); None without ``around``."""
        if self.around is None or _is_option(self.around):
            return self.around
        digest = hashlib.sha256(Path(self.around).read_bytes()).hexdigest()[:16]
        return f"{Path(self.around).name}@{digest}"

    def imatrix_id(self) -> str | None:
        """The importance matrix as recorded and keyed: ``auto`` (its values follow from what
        the key already holds), or a file's name and the SHA-256 of its bytes."""
        if self.imatrix in (None, "auto"):
            return self.imatrix
        digest = hashlib.sha256(Path(self.imatrix).read_bytes()).hexdigest()[:16]
        return f"{Path(self.imatrix).name}@{digest}"

    def key(self, model_hash: str, calib: Calib, where: tuple[str, str]) -> str:
        """The cache key of this spec's profile of the model with ``model_hash`` on ``calib``
        (:meth:`calib_record`), run on ``where`` (the device type and dtype, as
        :func:`mixviz.models.device.describe` names them)."""
        return profile_key(
            model_hash=model_hash,
            metric=self.metric,
            options=self.options,
            calib=calib,
            subset=self.layers,
            include_lm_head=self.include_lm_head,
            where=where,
            around=self.around_id(),
            imatrix=self.imatrix_id(),
        )

    # ---------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"format": FORMAT, "version": VERSION, **data, "options": list(self.options)}

    @classmethod
    def from_dict(cls, d: dict) -> ProfileSpec:
        check_header(d, FORMAT, VERSION, "profile spec")
        data = {k: v for k, v in d.items() if k not in ("format", "version")}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            names = ", ".join(sorted(unknown))
            raise MixvizError(f"malformed profile spec: unknown field(s) {names}")
        try:
            return cls(**data)
        except TypeError as e:
            raise MixvizError(f"malformed profile spec: {e}") from None


def _check_run(spec: ProfileSpec) -> None:
    """Refuse what cannot be profiled, before anything is loaded."""
    metric, backend, offload = spec.metric, spec.backend, spec.offload
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
    if not (1 <= spec.nsamples <= 4096 and 8 <= spec.seqlen <= 32768):
        raise MixvizError(
            f"nsamples must be 1..4096 and seqlen 8..32768 (got {spec.nsamples}, {spec.seqlen})"
        )


def _check_imatrix(spec: ProfileSpec) -> None:
    """An importance matrix weights GGML types only; the i-quants that need one get one."""
    ggml = [s for s in spec.schemes() if s.ggml]
    if spec.imatrix is not None:
        if not ggml:
            raise MixvizError("--imatrix weights GGML types only: add one (Q4_K, IQ4_XS, …)")
        if spec.imatrix != "auto" and not Path(spec.imatrix).is_file():
            raise MixvizError(f"--imatrix {spec.imatrix!r} is neither auto nor a file")
        return
    from mixviz.models.ggml import GGML_TYPES

    needs = [s.name for s in ggml if GGML_TYPES[s.ggml].needs_imatrix]
    if needs:
        raise MixvizError(
            f"{', '.join(needs)} cannot be quantized without an importance matrix "
            "(llama.cpp refuses too): add --imatrix auto or --imatrix FILE"
        )


def _is_option(text: str) -> bool:
    try:
        get_scheme(text)
    except MixvizError:
        return False
    return True


def _check_in_context(spec: ProfileSpec) -> None:
    """``around`` needs a metric that can score in context, in one process, not offloaded."""
    able = [n for n, m in METRICS.items() if m.in_context]
    if not METRICS[spec.metric].in_context:
        raise MixvizError(
            f"{spec.metric} cannot score around an operating point; use {' or '.join(able)}"
        )
    if spec.offload or spec.backend != "local":
        raise MixvizError("--around runs in one process, not offloaded and not over Ray")


def _check_around(around: str) -> str:
    """``around`` as kept: an option's canonical name, or the path of an existing file."""
    if _is_option(around):
        return get_scheme(around).name
    if Path(around).is_file():
        return str(around)
    raise MixvizError(f"--around {around!r} is neither an option name nor a recipe file")


def profile_key(
    *,
    model_hash: str,
    metric: str,
    options,
    calib: Calib,
    subset: str | None,
    include_lm_head: bool,
    where: tuple[str, str] = (CPU, "float32"),
    around: str | None = None,
    **context: str | None,
) -> str:
    """A digest of everything that changes a profile's scores, where it ran included (the
    device type and dtype, as :func:`mixviz.models.device.describe` names them).

    ``around`` (:meth:`ProfileSpec.around_id`) is digested only when set, so a profile made
    without it keeps the key of every earlier version."""
    device, dtype = where
    doc = {
        "model": model_hash,
        "metric": metric,
        "options": sorted(options),
        "calib": vars(calib),
        "subset": subset,
        "lm_head": include_lm_head,
        "device": device,
        "dtype": dtype,
        "profile_version": PROFILE_VERSION,
        "versions": library_versions(),
        "algo": _ALGO_VERSION,
    }
    if around is not None:
        doc["around"] = around
    if context.get("imatrix") is not None:  # the importance matrix GGML types are weighted by
        doc["imatrix"] = context["imatrix"]
    if any(get_scheme(o).ggml for o in options):  # ggml's own quantizers, this llama.cpp
        from mixviz.models.ggml import LLAMA_CPP_VERSION

        doc["ggml"] = LLAMA_CPP_VERSION
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


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
