"""The evaluate step of a run: lm-eval on the in-memory model, task by task, and its results
as ``(task, metric, value, stderr)`` rows."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from mixviz.errors import MixvizError
from mixviz.runs.evaluation.tasks import KLD_TASK
from mixviz.runs.runspec import RunSpec


def evaluate(model, tokenizer, spec: RunSpec, on_task: Callable[..., None]) -> dict:
    """lm-eval on the in-memory model, task by task; returns ``{task: lm-eval results}``.

    Every item's scores are logged (``log_samples``) and kept, reduced to numbers, under
    ``"samples"`` — the ground for standard errors and paired comparisons (:mod:`.stats`).
    ``on_task(i, n, fraction)`` is called per request batch with the share of task ``i`` done.
    """
    from lm_eval import simple_evaluate

    from mixviz.runs.evaluation.lm import scoring_lm
    from mixviz.runs.evaluation.stats import item_scores
    from mixviz.runs.evaluation.tasks import task_manager

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
    (:func:`mixviz.runs.evaluation.stats.item_stderrs`); each task also gets an ``items`` row."""
    from mixviz.runs.evaluation.stats import item_stderrs

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
