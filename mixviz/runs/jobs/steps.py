"""The steps of one run, in order: load, (KLD reference,) quantize and verify, evaluate,
(KLD, ship,) record — each reporting its stage and progress to the store."""

from __future__ import annotations

import json
import time
from typing import NamedTuple

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_bytes, atomic_write_json
from mixviz.runs.evaluation.evaluate import result_rows
from mixviz.runs.evaluation.quantize import KeepAutoRound, layer_plan, run_bits, verify
from mixviz.runs.evaluation.tasks import KLD_TASK
from mixviz.runs.runspec import RunResult, RunSpec
from mixviz.runs.store import Store, runs_dir


def run_steps(store: Store, run_id: str, spec: RunSpec, quantize_fn, evaluate_fn) -> str:
    """Load, (KLD reference,) quantize and verify, evaluate, record: ``done``, or ``failed``
    where the run was no longer running at the end (cancelled meanwhile)."""
    import torch

    torch.manual_seed(spec.seed)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    t = time.perf_counter()
    loaded = load_step(spec)
    bits = run_bits(loaded.plan, loaded.layers)  # what is asked, shown while it runs
    store.update(run_id, avg_bits=bits[0])
    timings["load"] = time.perf_counter() - t
    reference = None
    if KLD_TASK in spec.tasks:  # from the unquantized model, before it is quantized
        t = time.perf_counter()
        reference = reference_step(store, run_id, spec, loaded)
        timings["kld reference"] = time.perf_counter() - t
    keep = None
    if spec.ship is not None:  # a checkpoint is written from the same AutoRound
        from mixviz.runs.ship.reload import probe_layers
        from mixviz.runs.ship.step import check_ship

        check_ship(spec, loaded.plan, {x.name: x.in_features for x in loaded.layers})
        quantize_fn = keep = KeepAutoRound()
    if spec.recipe is not None:
        t = time.perf_counter()
        loaded, bits = quantize_step(store, run_id, spec, loaded, quantize_fn)
        timings["quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    raw = evaluate_step(store, run_id, spec, loaded, evaluate_fn)
    timings["evaluate"] = time.perf_counter() - t
    if reference is not None:
        t = time.perf_counter()
        raw[KLD_TASK] = kld_step(store, run_id, spec, loaded, reference)
        timings["kld"] = time.perf_counter() - t
    if keep is not None:
        from mixviz.runs.ship.step import InMemory, ship_step

        probes = probe_layers(loaded.model, loaded.plan)  # before saving packs it in place
        memory = InMemory(keep.ar, reference, probes, bits)
        timings.update(ship_step(store, run_id, spec, loaded, memory, raw))
    record_step(store, run_id, spec, raw, bits, time.perf_counter() - t_start, timings)
    done = store.transition(
        run_id, ("running",), status="done", stage="done", progress=1.0, finished=time.time()
    )
    return "done" if done else "failed"


class Loaded(NamedTuple):
    """A run's model in memory, its layers and its plan (:func:`layer_plan`)."""

    model: object
    tokenizer: object
    layers: list
    plan: dict[str, str]
    model_hash: str = ""


def load_step(spec: RunSpec) -> Loaded:
    """The model the run names, checked against the hash it was queued with."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import load_model, resolve_model

    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    if spec.model_hash and ref.hash != spec.model_hash:
        raise MixvizError(
            f"model {spec.model!r} changed since the run was queued "
            f"(hash {ref.hash} ≠ {spec.model_hash})"
        )
    model, tok = load_model(ref, dtype=spec.dtype, device=spec.device)
    layers = inventory(model)
    return Loaded(model, tok, layers, layer_plan(spec, layers), ref.hash)


def quantize_step(
    store: Store, run_id: str, spec: RunSpec, loaded: Loaded, quantize_fn
) -> tuple[Loaded, tuple[float, float]]:
    """Quantize, then verify every layer carries its planned scheme: the quantized model and
    its ``(avg bits, avg bits without scale bits)`` — the bits of what it carries."""
    from mixviz.runs.evaluation.quantize import block_progress

    store.update(run_id, stage="quantizing")  # progress: from its blocks
    write = _paced(store, run_id)

    def on_block(i: int, n: int) -> None:
        span = QUANTIZE[1] - QUANTIZE[0]
        write(QUANTIZE[0] + span * i / max(n, 1), f"quantizing, block {i}/{n}", i == n)

    with block_progress(on_block):
        model = quantize_fn(loaded.model, loaded.tokenizer, spec)
    bits = run_bits(verify(model, loaded.plan), loaded.layers)
    store.update(run_id, avg_bits=bits[0])
    return loaded._replace(model=model), bits


def reference_step(store: Store, run_id: str, spec: RunSpec, loaded: Loaded):
    """The unquantized model's KLD reference (:mod:`~mixviz.runs.evaluation.kld`), cached
    per model."""
    from mixviz.runs.evaluation import kld

    store.update(run_id, stage="kld reference")  # progress: from its windows
    write = _paced(store, run_id)

    def on_window(i: int, n: int) -> None:
        write(0.05 + 0.1 * i / n, f"kld reference, window {i}/{n}", i == n)

    return kld.reference(
        loaded.model,
        loaded.tokenizer,
        loaded.model_hash,
        _where(loaded.model),  # the resolved dtype and device, not "auto"
        progress=on_window,
        limit=spec.limit,  # --limit counts KLD windows too
    )


# The share of a run's progress its quantize step moves over. A step's start moves no progress:
# the estimate of the time left rests on completed units only (windows, blocks, batches).
QUANTIZE = (0.15, 0.3)


def _paced(store: Store, run_id: str, every: float = 1.0):
    """``write(progress, stage, last)``: to the store at most once per ``every`` seconds
    (and always for the ``last`` unit), so a fast loop does not write per unit."""
    at = [0.0]

    def write(progress: float, stage: str, last: bool = False) -> None:
        now = time.monotonic()
        if last or now - at[0] >= every:
            at[0] = now
            store.update(run_id, progress=progress, stage=stage)

    return write


def _slots(spec: RunSpec) -> tuple[int, int]:
    """(lm-eval tasks, all task slots) — the evaluation's share of progress is split by them."""
    n = sum(t != KLD_TASK for t in spec.tasks)
    return n, n + (KLD_TASK in spec.tasks)


def _progress_writer(store: Store, run_id: str, spec: RunSpec):
    """``report(done_slots, stage)``: progress over 0.3–1.0 (0.3–0.7 for a checkpoint job: its
    ship stages follow from 0.72), written every 0.5 % at most."""
    slots = _slots(spec)[1]
    last = [0.0]
    top = 0.7 if spec.ship is not None else 1.0  # progress never falls back

    def report(done: float, stage: str) -> None:
        progress = 0.3 + (top - 0.3) * done / max(slots, 1)
        if progress - last[0] >= 0.005 or done >= slots:  # smooth, without a write per batch
            last[0] = progress
            store.update(run_id, progress=progress, stage=stage)

    return report


def _where(model) -> str:
    """``torch.float32@cpu``: the dtype and device type a model's weights are in."""
    p = next(model.parameters())
    return f"{p.dtype}@{p.device.type}"


def evaluate_step(store: Store, run_id: str, spec: RunSpec, loaded: Loaded, evaluate_fn) -> dict:
    """lm-eval's results per task (the KLD task is :func:`kld_step`'s), progress per batch."""
    from dataclasses import replace

    store.update(run_id, stage="evaluating")  # progress: from its batches
    lm_tasks = tuple(t for t in spec.tasks if t != KLD_TASK)
    report = _progress_writer(store, run_id, spec)

    def on_task(i: int, n: int, fraction: float = 0.0) -> None:
        report(i + fraction, f"evaluating {lm_tasks[i]}" if i < n else "evaluated")

    if spec.recipe is not None:
        from mixviz.runs.evaluation.fastquant import use_fast_activation_quant

        use_fast_activation_quant(loaded.model)  # the same numbers, half the time
    if not lm_tasks:
        return {}
    return evaluate_fn(loaded.model, loaded.tokenizer, replace(spec, tasks=lm_tasks), on_task)


def kld_step(store: Store, run_id: str, spec: RunSpec, loaded: Loaded, reference) -> dict:
    """The KLD task against the reference, its progress reported per window."""
    report = _progress_writer(store, run_id, spec)
    first = _slots(spec)[0]

    def on_window(i: int, n: int) -> None:
        report(first + i / n, f"evaluating {KLD_TASK}")

    return kld_results(spec, loaded, reference, on_window)


def kld_results(spec: RunSpec, loaded: Loaded, reference, progress) -> dict:
    """The KLD task in lm-eval's result layout; per-token scores go to ``kld.npz``.
    ``--limit`` counts its windows of ``kld.SEQLEN`` tokens; ``spec.score_from`` says which of
    their positions are scored (``half``: llama.cpp's), and is recorded beside the numbers."""
    from mixviz.runs.evaluation import kld

    if spec.recipe is None:
        scores = kld.identical(reference, spec.limit)  # the reference model itself
    else:
        scores = kld.score(loaded.model, reference, progress=progress, limit=spec.limit)
    scores = kld.scored_from(scores, spec.score_from)
    metrics: dict = {"alias": KLD_TASK}
    for metric, value, se in kld.summarize(scores):
        metrics[f"{metric},none"] = value
        metrics[f"{metric}_stderr,none"] = "N/A" if se is None else se
    return {"results": {KLD_TASK: metrics}, "token_scores": scores}


def record_step(
    store: Store,
    run_id: str,
    spec: RunSpec,
    raw: dict,
    bits: tuple[float, float],
    seconds: float,
    timings: dict[str, float],
) -> None:
    """Beside the spec: ``lm_eval.json`` (lm-eval's results), ``samples.json`` (every item's
    scores), ``kld.npz`` (every token's), ``result.json`` (with the machine it ran on, and its
    peak memory); and the results in the store."""
    from mixviz.models.device import machine, placement

    folder = runs_dir() / run_id
    rows = result_rows(raw)
    samples = {}
    for res in raw.values():
        samples.update(res.pop("samples", {}))
        scores = res.pop("token_scores", None)
        if scores is not None:
            scores.save(folder / "kld.npz")
    atomic_write_bytes(folder / "lm_eval.json", json.dumps(raw, indent=1, default=str).encode())
    atomic_write_bytes(folder / "samples.json", json.dumps(samples).encode())
    result = RunResult(
        run_id,
        "done",
        *bits,
        {t: {m: v for t2, m, v, _ in rows if t2 == t} for t in spec.tasks},
        {t: {m: e for t2, m, _, e in rows if t2 == t and e is not None} for t in spec.tasks},
        seconds,
        timings,
        machine(*placement(spec.device, spec.dtype)),
        score_from=spec.score_from,
    )
    atomic_write_json(folder / "result.json", result.to_dict())
    store.put_results(run_id, rows)
