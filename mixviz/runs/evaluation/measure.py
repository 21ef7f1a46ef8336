"""Measured KLD of an allocation, in memory — what ``refine`` corrects the additive model with.

:class:`WindowKLD` keeps the unquantized model's next-token distributions over some token
windows (top-k plus tail samples, as the ``mixviz_kld`` task keeps them:
:mod:`mixviz.runs.evaluation.kld`) and, for an option per layer, quantize-dequantizes the model with
auto-round's RTN quantizers (:mod:`mixviz.sensitivity.operating_point`), scores it against them
and restores it. ``refine`` selects on **calibration** windows (:func:`calibration_windows`) and
scores every round on **held-out** windows it never selects on (:func:`heldout_windows`: the
evaluation text's last windows), so the answer's figure is not the optimistic one of the
windows that chose it.

:func:`refine_profile` loads the profile's model once and runs
:func:`mixviz.allocation.refine.refine` with it, cached under ``cache/refine/`` by everything
that changes the answer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mixviz.allocation.refine import Measurement, Refinement, RefineSettings, Round
from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_json, cache_dir, read_json

CALIB_WINDOWS = 16
CALIB_SEQLEN = 512


class WindowKLD:
    """``measure(choice) -> Measurement``: mean KLD per token to the unquantized model over
    fixed windows, with its standard error over windows and each window's mean (for paired
    differences). Quantized weights are kept between calls (``keep``), so a measurement costs
    one forward pass over the windows."""

    def __init__(self, model, tokens, keep: bool = True, cache: dict | None = None):
        from mixviz.runs.evaluation.kld import compute_reference

        self.model = model
        self.ref = compute_reference(model, tokens, exact=False)  # means only: the estimate
        self.cache: dict | None = (cache if cache is not None else {}) if keep else None
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, choice: dict[str, str]) -> Measurement:
        from mixviz.models.schemes import get_scheme
        from mixviz.runs.evaluation.kld import score, window_mean_se, window_means
        from mixviz.sensitivity.operating_point import at

        t0 = time.perf_counter()
        plan = {name: get_scheme(o) for name, o in choice.items()}
        with at(self.model, plan, cache=self.cache):
            s = score(self.model, self.ref, exact=False)
        mean, se = window_mean_se(s.kld)
        per_window = window_means(s.kld)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return Measurement(mean, se, tuple(float(x) for x in per_window))


def calibration_windows(tokenizer, calib: str = "pydoc", n: int = CALIB_WINDOWS, seqlen=None):
    """``n`` windows of the calibration text (``seqlen`` tokens, 512 by default)."""
    from mixviz.models.text import calibration_text, token_windows

    return token_windows(tokenizer, calibration_text(calib), n, seqlen or CALIB_SEQLEN)


def heldout_windows(tokenizer, n: int = CALIB_WINDOWS, seqlen=None):
    """The evaluation text's last ``n`` windows of ``seqlen`` tokens: text neither the profile
    nor refine's selection ever saw (its far end, away from wherever a run's ``--limit``
    starts)."""
    from mixviz.runs.evaluation.kld import windows

    tokens = windows(tokenizer, seqlen or CALIB_SEQLEN)
    if len(tokens) < n:
        raise MixvizError(
            f"the evaluation text has {len(tokens)} windows of {seqlen or CALIB_SEQLEN} tokens: "
            f"too few for {n} held-out ones (fewer --heldout or a shorter --window-len)"
        )
    return tokens[len(tokens) - n :]


@dataclass(frozen=True)
class MeasureSettings:
    """Where refine measures: calibration text, windows × seqlen (selection), held-out windows
    of the evaluation text scored but never selected on (0: none), device and dtype."""

    calib: str = "pydoc"
    windows: int = CALIB_WINDOWS
    seqlen: int = CALIB_SEQLEN
    device: str = "auto"
    dtype: str = "auto"
    heldout: int = CALIB_WINDOWS

    def __post_init__(self):
        if self.heldout != 0 and not 2 <= self.heldout <= 4096:
            raise MixvizError(f"score on 0 or 2..4096 held-out windows (got {self.heldout})")
        if not (2 <= self.windows <= 4096 and 16 <= self.seqlen <= 32768):
            raise MixvizError(
                f"measure on 2..4096 windows of 16..32768 tokens (got {self.windows}, "
                f"{self.seqlen})"
            )


def refine_key(profile, problem_doc: dict, settings: RefineSettings, where: MeasureSettings):
    """A digest of everything that changes a refinement's answer."""
    from mixviz.models.text import calibration_text

    doc = {
        "profile": profile.key,
        "problem": problem_doc,
        "settings": asdict(settings),
        "measure": asdict(where),
        "calib_hash": calibration_text(where.calib).hash,
        "version": 3,  # 3: t intervals, held-out scores; 2: round 0 in the measured units
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def refine_path(profile, problem_doc: dict, settings: RefineSettings, where: MeasureSettings):
    return cache_dir() / "refine" / f"{refine_key(profile, problem_doc, settings, where)}.json"


def refined_doc(prof, result) -> dict:
    """What ``mixviz refine`` prints as JSON and a refine job writes as its answer: the
    refinement with the profile it rests on and its best allocation's layers."""
    return {
        **result.to_dict(),
        "model": prof.model,
        "model_hash": prof.model_hash,
        "profile_key": prof.key,
        "strategy": "refined",
        "layers": dict(result.layers),
    }


def calibration_measure(profile, where: MeasureSettings, say):
    """``profile``'s model loaded as ``where`` asks (refused if it is not the version the
    profile measured) and its in-memory KLD over ``where``'s calibration windows:
    ``(ref, model, tokenizer, WindowKLD)`` — what refine and the anchor both measure with."""
    from mixviz.models.loading import load_model, resolve_model

    ref = resolve_model(profile.model)
    if ref.hash != profile.model_hash:
        raise MixvizError(
            f"the profile was measured on another version of {profile.model!r} "
            f"({profile.model_hash[:12]} ≠ {ref.hash[:12]}): profile it again"
        )
    say(f"loading {ref.name}")
    model, tok = load_model(ref, dtype=where.dtype, device=where.device)
    say(f"reference over {where.windows}×{where.seqlen} calibration tokens")
    measure = WindowKLD(model, calibration_windows(tok, where.calib, where.windows, where.seqlen))
    return ref, model, tok, measure


def refine_profile(
    profile,
    problem,
    settings: RefineSettings,
    where: MeasureSettings | None = None,
    progress: Callable[[str], None] | None = None,
    rules: dict | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> Refinement:
    """Refine ``problem`` (built from ``profile`` with ``rules``, the keywords of
    :meth:`~mixviz.allocation.problem.Problem.from_profile`) by measuring its model on
    calibration text; a cached answer is returned at once. Refining in ``context`` profiles
    around each round's allocation with the profile's own settings. ``on_round`` is handed
    each round as it finishes (:func:`~mixviz.allocation.refine.refine`)."""
    where = where or MeasureSettings()
    if settings.grouping == "context":
        from mixviz.sensitivity.metrics import METRICS

        if not METRICS.get(profile.metric) or not METRICS[profile.metric].in_context:
            raise MixvizError(
                f"refining in context profiles around each allocation: {profile.metric} "
                "cannot (profile with fisher or kl)"
            )
    path = refine_path(profile, _problem_doc(problem), settings, where)
    cached = load_refinement(path)
    if cached is not None:
        return cached
    from mixviz.allocation.refine import refine

    say = progress or (lambda msg: None)
    ref, model, tok, measure = calibration_measure(profile, where, say)
    score = None
    if where.heldout:
        say(f"reference over {where.heldout}×{where.seqlen} held-out tokens")
        held = heldout_windows(tok, where.heldout, where.seqlen)
        score = WindowKLD(model, held, cache=measure.cache)  # the same quantized weights
    again = _reprofile(ref, profile, where, rules or {}) if settings.grouping == "context" else None
    result = refine(problem, settings, measure, say, again, score, on_round)
    atomic_write_json(path, result.to_dict())
    return result


def _reprofile(ref, profile, where: MeasureSettings, rules: dict):
    """``reprofile(choice)``: ``profile`` made again around ``choice`` (its metric at that
    operating point), as a problem with the same ``rules``."""
    from mixviz.allocation.problem import Problem
    from mixviz.sensitivity.profile import profile_model
    from mixviz.sensitivity.spec import ProfileSpec

    def reprofile(choice: dict[str, str]):
        doc = {"layers": dict(sorted(choice.items()))}
        digest = hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]
        path = cache_dir() / "refine" / "around" / f"{digest}.json"
        atomic_write_json(path, doc)
        spec = ProfileSpec(
            options=profile.options,
            metric=profile.metric,
            nsamples=profile.calib.nsamples,
            seqlen=profile.calib.seqlen,
            calib=where.calib,
            layers=profile.subset,
            include_lm_head=any(x.kind == "lm_head" for x in profile.layers),
            device=where.device,
            dtype=where.dtype,
            around=str(path),
        )
        return Problem.from_profile(profile_model(ref, spec, allow_partial=True), **rules)

    return reprofile


def _problem_doc(problem) -> dict:
    return {
        "ignore_scale_bits": problem.ignore_scale_bits,
        "pins": dict(sorted(problem.pins.items())),
        "target": problem.target,
        "units": [list(u.names) for u in problem.units if len(u.names) > 1],
        "layers": len(problem.layers),
    }


def load_refinement(path: Path) -> Refinement | None:
    """A refinement written by :func:`refine_profile`, or None (missing or unreadable)."""
    if not Path(path).is_file():
        return None
    try:
        return refinement_from_dict(read_json(path, "refinement"))
    except (MixvizError, KeyError, TypeError, ValueError):
        return None  # a damaged cache is recomputed, never trusted


def refinement_from_dict(d: dict) -> Refinement:
    if d.get("format") != "mixviz.refinement" or d.get("version") != 1:
        raise MixvizError("not a mixviz refinement (format mixviz.refinement, version 1)")
    return Refinement(
        tuple(Round(**r) for r in d["rounds"]),
        int(d["best"]),
        str(d["stopped"]),
        str(d["grouping"]),
        float(d["seconds"]),
        float(d["budget_avg_bits"]),
        int(d.get("measurements", 0)),
    )
