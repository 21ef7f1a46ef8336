"""The run worker: one process per run — quantize with auto-round, check, evaluate with lm-eval.

``python -m mixviz.runs.worker RUN_ID`` reads ``cache/runs/<id>/spec.json``, reports its stage,
progress and a heartbeat to the store, writes ``lm_eval.json`` and ``result.json`` beside the
spec, and finally starts the next queued run. The quantize and evaluate steps are plain
functions passed to :func:`execute`, so tests can swap in fakes; the real ones are below.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

from mixviz.errors import MixvizError
from mixviz.models.schemes import SCHEMES, Scheme, get_scheme, layer_bits
from mixviz.paths import atomic_write_bytes, atomic_write_json
from mixviz.runs.runspec import RunResult, RunSpec
from mixviz.runs.store import Store, runs_dir
from mixviz.runs.tasks import KLD_TASK

HEARTBEAT_S = 2.0


# --------------------------------------------------------------------------- quantize


def layer_plan(spec: RunSpec, layers) -> dict[str, str]:
    """Every block linear's option for this run: the recipe's, BF16 for a layer it does not
    name. What is quantized, checked and counted is this one map, so a partial recipe can
    never be counted one way and quantized another.

    >>> from mixviz.models.inventory import Layer
    >>> ls = [Layer(f"l.{i}.q", i, "q", 64, 64, 4096, "qkv") for i in range(2)]
    >>> layer_plan(RunSpec(model="m", recipe={"l.0.q": "MXFP4"}, tasks=("t",)), ls)
    {'l.0.q': 'MXFP4', 'l.1.q': 'BF16'}
    """
    recipe = spec.recipe or {}
    plan = {x.name: recipe.get(x.name, "BF16") for x in layers if x.block is not None}
    plan.update(recipe)  # lm_head or other layers the recipe names on purpose
    return plan


def quantize(model, tokenizer, spec: RunSpec):
    """auto-round with the run's whole ``layer_config`` (every block linear named, preset
    names, BF16 spelled out); in memory."""
    return quantize_with(autoround(model, tokenizer, spec), spec)


def autoround(model, tokenizer, spec: RunSpec):
    """The ``AutoRound`` for a run: its plan as ``layer_config`` (auto-round's preset names,
    ``GGUF:Q4_0`` for a GGML type), RTN unless the spec tunes, in the model's own precision."""
    from collections import Counter

    from auto_round import AutoRound

    from mixviz.models.device import autoround_amp, resolve_device
    from mixviz.models.inventory import inventory

    plan = layer_plan(spec, inventory(model))
    if spec.ship is not None and spec.ship.format == "gguf":  # W8A16G32 is written as Q8_0
        from mixviz.models.targets import gguf_option

        plan = {n: gguf_option(o) for n, o in plan.items()}
    nvfp = any(get_scheme(o).family == "nvfp" for o in plan.values())
    plan = {n: get_scheme(o).preset for n, o in plan.items()}
    quantized = [o for o in plan.values() if o != "BF16"] or ["BF16"]
    default = Counter(quantized).most_common(1)[0][0]  # every layer is named: only a fallback
    kwargs = dict(
        iters=spec.quant.iters,
        disable_opt_rtn=spec.quant.disable_opt_rtn,
        enable_torch_compile=False,
        device_map=str(resolve_device(spec.device)),
        seed=spec.seed,
        amp=autoround_amp(model),  # quantize in the run's precision, never cast behind it
    )
    # NVFP4 calibrates its activation scales even in RTN mode: give it the local text too
    if spec.quant.iters > 0 or not spec.quant.disable_opt_rtn or nvfp:
        kwargs.update(
            dataset=_calibration_texts(spec), nsamples=spec.quant.nsamples, seqlen=spec.quant.seqlen
        )
    return AutoRound(model, tokenizer, scheme=default, layer_config=plan, **kwargs)


def quantize_with(ar, spec: RunSpec):
    """``ar.quantize()``: the quantize-dequantized model, in memory."""
    try:
        qmodel, _ = ar.quantize()
    except SystemExit as e:  # auto-round exits the process when no calibration text is left
        raise MixvizError(
            f"auto-round stopped (exit code {e.code}): the calibration text is "
            f"too short for seqlen {spec.quant.seqlen}"
        ) from None
    return qmodel


class KeepAutoRound:
    """The quantize step of a run that writes a checkpoint: keeps its ``AutoRound`` for
    ``save_quantized`` (:mod:`mixviz.runs.ship`)."""

    ar = None

    def __call__(self, model, tokenizer, spec: RunSpec):
        self.ar = autoround(model, tokenizer, spec)
        return quantize_with(self.ar, spec)


def _calibration_texts(spec: RunSpec) -> list[str]:
    from mixviz.models.text import calibration_text

    text = calibration_text().text
    step = spec.quant.seqlen * 6  # characters: comfortably more than seqlen tokens
    return [text[i : i + step] for i in range(0, len(text) - step, step)]


def carried(module) -> tuple:
    """What a layer carries after auto-round: ``(bits, group_size, data_type, act_bits)``.

    auto-round sets these on the layer (or on the ``orig_layer`` of its in-memory wrapper);
    an untouched layer has none of them and reads as 16-bit.
    """
    layer = getattr(module, "orig_layer", module)
    bits = getattr(layer, "bits", None)
    return (
        16 if bits is None else bits,
        getattr(layer, "group_size", None),
        str(getattr(layer, "data_type", "fp")),
        getattr(layer, "act_bits", 16) or 16,
    )


def carries(module, scheme: Scheme) -> bool:
    """Whether a layer, after auto-round, carries ``scheme`` (a GGML type: its exact data type;
    ``Q4_0`` and ``W4A16G32`` are the same quantizer, so either reads as the other)."""
    bits, group, dtype, act = carried(module)
    if scheme.bits >= 16:
        return bits >= 16
    if (scheme.bits, scheme.group_size, scheme.act_bits) != (bits, group, act):
        return False
    # auto-round spells the data type with its width: ``mx_fp8``, ``nv_fp4``, ``int``
    return dtype.startswith(scheme.data_type)


def carried_scheme(module) -> Scheme | None:
    """The catalogue scheme a quantized layer carries (BF16 when untouched), or None."""
    for s in SCHEMES.values():
        if carries(module, s):
            return s
    return None


def verify(model, plan: dict[str, str]) -> dict[str, str]:
    """Every layer carries the scheme the plan asked for; a mismatch fails the run naming it.

    Returns what each layer carries (scheme names) — the source of the run's bit counts.
    """
    mods = dict(model.named_modules())
    bad, got = [], {}
    for name, option in plan.items():
        mod = mods.get(name)
        if mod is None:
            bad.append(f"{name}: missing after quantization")
            continue
        if not carries(mod, get_scheme(option)):
            bits, group, dtype, act = carried(mod)
            bad.append(
                f"{name}: asked {option}, got bits={bits} group={group} type={dtype} act_bits={act}"
            )
            continue
        got[name] = get_scheme(option).name
    if bad:
        raise MixvizError(f"{len(bad)} layers did not get their scheme, e.g. {bad[0]}")
    return got


# --------------------------------------------------------------------------- evaluate


def evaluate(model, tokenizer, spec: RunSpec, on_task: Callable[..., None]) -> dict:
    """lm-eval on the in-memory model, task by task; returns ``{task: lm-eval results}``.

    Every item's scores are logged (``log_samples``) and kept, reduced to numbers, under
    ``"samples"`` — the ground for standard errors and paired comparisons (:mod:`.stats`).
    ``on_task(i, n, fraction)`` is called per request batch with the share of task ``i`` done.
    """
    from lm_eval import simple_evaluate

    from mixviz.runs.lm import scoring_lm
    from mixviz.runs.stats import item_scores
    from mixviz.runs.tasks import task_manager

    tasks = [t for t in spec.tasks if t != KLD_TASK]
    manager = task_manager(tasks)
    lm = scoring_lm(model, tokenizer, spec.batch_size)
    out = {}
    with _environment_once():
        for i, task in enumerate(tasks):
            on_task(i, len(tasks), 0.0)
            lm.on_fraction = lambda f, i=i: on_task(i, len(tasks), f)
            try:
                res = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    limit=spec.limit,
                    task_manager=manager,
                    random_seed=spec.seed,
                    numpy_random_seed=spec.seed,
                    torch_random_seed=spec.seed,
                    fewshot_random_seed=spec.seed,
                    bootstrap_iters=0,  # standard errors come from the logged items (stats.py)
                    log_samples=True,
                )
            except Exception as e:  # lm-eval raises many kinds; the hub being away is usual
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                words = ("offline", "connect", "hub", "resolve", "couldn't")
                if any(w in msg.lower() for w in words):
                    msg = f"task {task} needs its dataset from the Hugging Face hub: {msg}"
                raise MixvizError(f"lm-eval failed on {task}: {msg[:300]}") from None
            res["samples"] = item_scores(res.get("samples", {}), res.get("group_subtasks", {}))
            out[task] = res
    on_task(len(tasks), len(tasks), 0.0)
    return out


@contextmanager
def _environment_once():
    """lm-eval records the machine's environment in every ``simple_evaluate`` result with
    torch's ``collect_env`` (``pip list`` and more, in subprocesses: ~1 s on the demo's
    machine, a fifth of a 15-item task). One worker runs on one machine: collect it once."""
    import lm_eval.evaluator as ev

    original, memo = ev.add_env_info, {}

    def once(storage: dict) -> None:
        if not memo:
            before = set(storage)
            original(storage)
            memo.update({k: v for k, v in storage.items() if k not in before})
        storage.update(memo)

    ev.add_env_info = once
    try:
        yield
    finally:
        ev.add_env_info = original


def result_rows(raw: dict) -> list[tuple[str, str, float | None, float | None]]:
    """lm-eval results → (task, metric, value, stderr) rows. ``"acc,none"`` → ``acc``.

    Standard errors lm-eval did not compute come from the logged items
    (:func:`mixviz.runs.stats.item_stderrs`); each task also gets an ``items`` row."""
    from mixviz.runs.stats import item_stderrs

    rows = []
    for res in raw.values():
        computed = item_stderrs(res.get("samples", {}))
        for task, metrics in res.get("results", {}).items():
            for key, value in metrics.items():
                if "_stderr" in key or key == "sample_len" or not isinstance(value, (int, float)):
                    continue  # sample_len is lm-eval's item count, not a metric
                metric, _, filt = key.partition(",")
                name = metric if filt in ("", "none") else f"{metric},{filt}"
                err = metrics.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
                if not isinstance(err, (int, float)):
                    err = computed.get(task, {}).get(name)
                rows.append((task, name, float(value), None if err is None else float(err)))
            n = len(res.get("samples", {}).get(task, {}).get("doc_id", []))
            if n and task != KLD_TASK:
                rows.append((task, "items", float(n), None))
    return rows


# --------------------------------------------------------------------------- the run


def run_bits(plan: dict[str, str], layers) -> tuple[float, float]:
    """Average bits over the block linears (both accountings) of a layer → option map
    (layers it does not name count as BF16).

    >>> from mixviz.models.inventory import Layer
    >>> ls = [Layer(f"l.{i}.q", i, "q", 64, 64, 4096, "qkv") for i in range(2)]
    >>> run_bits({"l.0.q": "MXFP4"}, ls)
    (10.125, 10.0)
    """
    layers = [x for x in layers if x.block is not None]
    total = sum(x.numel for x in layers)
    with_s = no_s = 0
    for x in layers:
        s = get_scheme(plan.get(x.name, "BF16"))
        with_s += layer_bits(s, x.in_features, x.out_features)
        no_s += layer_bits(s, x.in_features, x.out_features, ignore_scale_bits=True)
    return with_s / total, no_s / total


def execute(
    run_id: str,
    store: Store | None = None,
    quantize_fn=quantize,
    evaluate_fn=evaluate,
    kick: bool = True,
) -> str:
    """Run one queued run to a final state; returns that state.

    The steps: :func:`claim` the run, then load the model (:func:`load_step`), quantize it and
    verify what it carries (:func:`quantize_step`, skipped for the BF16 reference), evaluate it
    (:func:`evaluate_step`) and record the result (:func:`record_step`); any failure leaves it
    ``failed`` (:func:`fail`). Then the next queued local run starts."""
    store = store or Store()
    spec = claim(store, run_id)
    if not isinstance(spec, RunSpec):
        return spec  # unreadable (failed) or cancelled before it started
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, run_id, stop), daemon=True)
    beat.start()
    try:
        return run_steps(store, run_id, spec, quantize_fn, evaluate_fn)
    except BaseException as e:  # noqa: BLE001 — every way out must leave a final state
        return fail(store, run_id, e)
    finally:
        stop.set()
        if kick:
            kick_next(store, run_id)


def claim(store: Store, run_id: str) -> RunSpec | str:
    """Read the run's ``spec.json`` and mark it running (only from queued or starting).

    Returns the spec, or the run's final state when it cannot run: ``failed`` for an
    unreadable spec, or whatever it became before this worker got to it (cancelled)."""
    now = time.time()
    try:
        spec = RunSpec.from_dict(json.loads((runs_dir() / run_id / "spec.json").read_text()))
    except (OSError, ValueError, MixvizError) as e:
        store.transition(
            run_id,
            ("queued", "starting"),
            status="failed",
            finished=now,
            error=f"unreadable spec.json: {e}",
        )
        return "failed"
    if not store.transition(
        run_id,
        ("queued", "starting"),
        status="running",
        started=now,
        heartbeat=now,
        pid=os.getpid(),
        stage="loading",
        progress=0.0,
    ):
        return store.get(run_id).status  # cancelled before it started
    return spec


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
        from mixviz.runs.ship import check_ship, probe_layers

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
        from mixviz.runs.ship import ship_step

        probes = probe_layers(loaded.model, loaded.plan)  # before saving packs it in place
        timings.update(
            ship_step(store, run_id, spec, loaded, keep.ar, reference, raw, probes, bits)
        )
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
    store.update(run_id, stage="quantizing", progress=0.1)
    model = quantize_fn(loaded.model, loaded.tokenizer, spec)
    bits = run_bits(verify(model, loaded.plan), loaded.layers)
    store.update(run_id, avg_bits=bits[0])
    return loaded._replace(model=model), bits


def reference_step(store: Store, run_id: str, spec: RunSpec, loaded: Loaded):
    """The unquantized model's KLD reference (:mod:`mixviz.runs.kld`), cached per model."""
    from mixviz.runs import kld

    store.update(run_id, stage="kld reference", progress=0.05)

    def on_window(i: int, n: int) -> None:
        if i % 4 == 0 or i == n:
            store.update(run_id, progress=0.05 + 0.1 * i / n)

    return kld.reference(
        loaded.model,
        loaded.tokenizer,
        loaded.model_hash,
        _where(loaded.model),  # the resolved dtype and device, not "auto"
        progress=on_window,
        limit=spec.limit,  # --limit counts KLD windows too
    )


def _slots(spec: RunSpec) -> tuple[int, int]:
    """(lm-eval tasks, all task slots) — the evaluation's share of progress is split by them."""
    n = sum(t != KLD_TASK for t in spec.tasks)
    return n, n + (KLD_TASK in spec.tasks)


def _progress_writer(store: Store, run_id: str, spec: RunSpec):
    """``report(done_slots, stage)``: progress over 0.3–1.0, written every 0.5 % at most."""
    slots = _slots(spec)[1]
    last = [0.0]

    def report(done: float, stage: str) -> None:
        progress = 0.3 + 0.7 * done / max(slots, 1)
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

    store.update(run_id, stage="evaluating", progress=0.3)
    lm_tasks = tuple(t for t in spec.tasks if t != KLD_TASK)
    report = _progress_writer(store, run_id, spec)

    def on_task(i: int, n: int, fraction: float = 0.0) -> None:
        report(i + fraction, f"evaluating {lm_tasks[i]}" if i < n else "evaluated")

    if spec.recipe is not None:
        from mixviz.runs.fastquant import use_fast_activation_quant

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
    ``--limit`` counts its windows of ``kld.SEQLEN`` tokens."""
    from mixviz.runs import kld

    if spec.recipe is None:
        scores = kld.identical(reference, spec.limit)  # the reference model itself
    else:
        scores = kld.score(loaded.model, reference, progress=progress, limit=spec.limit)
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
    )
    atomic_write_json(folder / "result.json", result.to_dict())
    store.put_results(run_id, rows)


def fail(store: Store, run_id: str, e: BaseException) -> str:
    """Mark the run ``failed`` with ``e`` as its error (unless it is final already); returns
    its state. A KeyboardInterrupt is raised again once recorded."""
    msg = str(e) if isinstance(e, MixvizError) else f"{type(e).__name__}: {e}"
    traceback.print_exc()
    store.transition(run_id, ("running",), status="failed", error=msg[:2000], finished=time.time())
    status = store.get(run_id).status
    if isinstance(e, KeyboardInterrupt):
        raise e
    return status


def kick_next(store: Store, run_id: str) -> None:
    """Start the next queued local run. Only after a local run: a Ray worker on another node
    must not start the head's local runs on its own machine."""
    if store.get(run_id).backend != "local":
        return
    from mixviz.runs.backends import LocalBackend

    try:
        LocalBackend(store).kick()
    except MixvizError:
        pass


def _heartbeat(store: Store, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.update(run_id, heartbeat=time.time())
        except MixvizError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m mixviz.runs.worker RUN_ID\n")
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    status = execute(argv[0])
    return 0 if status == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
