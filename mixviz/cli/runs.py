"""``mixviz run MODEL …`` (queue a quantize-and-evaluate run, optionally wait for it),
``mixviz runs`` (list them) and ``mixviz cancel ID``."""

from __future__ import annotations

import argparse
import json
import sys

from mixviz.cli.common import (
    add_device_flags,
    add_json,
    add_model,
    add_score_from,
    add_trust_remote_code,
    device_kwargs,
    emit,
    follow,
    progress,
    resolve,
)
from mixviz.errors import MixvizError


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="quantize with auto-round and evaluate with lm-eval")
    add_model(run)
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", help="an allocation or recipe JSON file")
    what.add_argument("--bf16", action="store_true", help="the unquantized reference")
    what.add_argument("--uniform", metavar="OPTION", help="every block linear at OPTION")
    run.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks")
    run.add_argument("--limit", type=int, help="items per task (default: all)")
    run.add_argument(
        "--no-kld",
        action="store_true",
        help="skip mixviz_kld (KL divergence to the unquantized model; added by default)",
    )
    add_score_from(run)
    run.add_argument("--batch-size", type=int, default=8)
    add_device_flags(run)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--backend", choices=("local", "ray"))
    run.add_argument("--ray-address", help="Ray dashboard address (or MIXVIZ_RAY_ADDRESS)")
    run.add_argument("--wait", action="store_true", help="wait for the run and print results")
    run.add_argument(
        "--force",
        action="store_true",
        help="queue a fresh run even when an identical one is queued, running or done",
    )
    run.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --wait: stop waiting after this long (an error; the run is left as it is)",
    )
    add_json(run)
    add_trust_remote_code(run)
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list runs and their state")
    add_json(runs)
    runs.set_defaults(func=cmd_runs)

    cancel = sub.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("id")
    cancel.add_argument("--ray-address")
    cancel.set_defaults(func=cmd_cancel)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


# ------------------------------------------------------------------ run


def read_recipe_layers(path: str) -> tuple[dict[str, str], dict]:
    """The per-layer map of an allocation or recipe JSON file, plus the whole document."""
    from mixviz.paths import read_json

    doc = read_json(path, "recipe")
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise MixvizError(f'{path} has no "layers" map of layer → option')
    return {str(k): str(v) for k, v in layers.items()}, doc


def recipe_file(ref, path: str) -> tuple[dict[str, str], str, float | None]:
    """A recipe file checked against the model: (every block linear → option, strategy, budget).

    Layers the model lacks and options a layer cannot take are refused here, not by the
    worker; block linears the recipe leaves out are named, as BF16, in the spec.
    """
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.models.schemes import get_scheme
    from mixviz.report.recipe import Recipe

    recipe, doc = read_recipe_layers(path)
    prov = doc.get("provenance") or {}
    strategy = str(doc.get("strategy") or prov.get("strategy") or "")
    budget = doc.get("budget_avg_bits", prov.get("budget"))
    recipe = {k: get_scheme(v).name for k, v in recipe.items()}
    layers = inventory(meta_model(ref))
    Recipe(ref.name, ref.hash, recipe).validate(layers)
    recipe = {**{x.name: "BF16" for x in layers if x.block is not None}, **recipe}
    return recipe, strategy, budget


def _run_spec(args: argparse.Namespace, ref):
    """The RunSpec for ``run``'s flags, on the already resolved model ``ref``."""
    from mixviz.runs.evaluation.tasks import KLD_TASK, check_tasks
    from mixviz.runs.runspec import RunSpec

    strategy, budget = "", None
    if args.bf16:
        recipe = None
    elif args.uniform:
        from mixviz.report.recipe import Recipe

        recipe = dict(Recipe.uniform(ref, args.uniform).layers)
    else:
        recipe, strategy, budget = recipe_file(ref, args.recipe)
    tasks = check_tasks(args.tasks.split(","))
    if KLD_TASK not in tasks and not args.no_kld:
        tasks.append(KLD_TASK)
    return RunSpec(
        model=args.model,
        recipe=recipe,
        tasks=tuple(tasks),
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        strategy=strategy,
        budget=budget,
        model_hash=ref.hash,
        trust_remote_code=args.trust_remote_code,
        score_from=args.score_from,
        **device_kwargs(args),
    )


def cmd_run(args: argparse.Namespace) -> None:
    from mixviz.runs.jobs.backends import get_backend, submit

    if args.timeout is not None and not args.wait:
        raise MixvizError("--timeout needs --wait")
    ref = resolve(args)
    spec = _run_spec(args, ref)
    backend = get_backend(args.backend, ray_address=args.ray_address)
    sub = submit(backend, spec, force=args.force)
    progress(sub.describe(spec.label) + ("" if sub.reused else f" on the {backend.name} backend"))
    if not args.wait:
        doc = {"id": sub.id, "status": sub.status, "reused": sub.reused}
        sys.stdout.write((json.dumps(doc) if args.json else sub.id) + "\n")
        return
    _wait_and_report(backend, sub.id, args, reused=sub.reused)


def _wait_and_report(backend, run_id: str, args: argparse.Namespace, reused: bool = False) -> None:
    from mixviz.runs.jobs.backends import run_document

    follow(backend, run_id, reused, timeout=args.timeout)
    doc = {**run_document(backend.store, run_id), "reused": reused}
    emit(doc, args.json, _run_text)
    if doc["status"] != "done":
        raise MixvizError(f"run {run_id} {doc['status']}: {doc['error'] or ''}".strip())


def _run_text(doc: dict) -> str:
    lines = [
        f"run {doc['id']} ({doc['label']}): {doc['status']}"
        + (f", {doc['avg_bits']:.4f} avg bits" if doc.get("avg_bits") else "")
    ]
    for task, metrics in doc["results"].items():
        errs = doc.get("stderrs", {}).get(task, {})
        cells = [
            f"{m} {v:.4f}" + (f" ± {errs[m]:.4f}" if m in errs else "") for m, v in metrics.items()
        ]
        half = task == "mixviz_kld" and doc.get("score_from") == "half"
        where = " (llama.cpp's positions)" if half else ""
        lines.append(f"  {task}: " + ", ".join(cells) + where)
    return "\n".join(lines)


# ------------------------------------------------------------------ runs, cancel


def cmd_runs(args: argparse.Namespace) -> None:
    from mixviz.runs.jobs.backends import reconcile_all
    from mixviz.runs.store import Store

    store = Store()
    reconcile_all(store)  # lost workers become lost and the queue moves on
    rows = store.list()
    doc = {
        "runs": [
            {
                **_checkpoint(r),
                "id": r.id,
                "model": r.model,
                "label": r.label,
                "status": r.status,
                "stage": r.stage,
                "progress": r.progress,
                "avg_bits": r.avg_bits,
                "elapsed": r.elapsed,
                "backend": r.backend,
                "error": r.error,
                "results": store.results(r.id),
                "stderrs": store.stderrs(r.id),
            }
            for r in rows
        ]
    }
    emit(doc, args.json, _runs_text)


def _checkpoint(row) -> dict:
    """A finished quantize run's ``checkpoint`` (where its verified files are, or that they
    are missing or changed: :func:`~mixviz.runs.ship.delivery.checkpoint_state`)."""
    if row.status != "done" or not (row.spec or {}).get("ship"):
        return {}
    from mixviz.runs.ship.delivery import checkpoint_state

    return {"checkpoint": checkpoint_state(row.id)}


def _stage(r: dict) -> str:
    state = (r.get("checkpoint") or {}).get("state")
    return {"missing": "files missing", "changed": "files changed"}.get(state, r["stage"])


def _runs_text(doc: dict) -> str:
    return (
        "\n".join(
            f"{r['id']}  {r['model']:8} {r['label']:18} {r['status']:9} {_stage(r):22} "
            f"{r['progress']:4.0%}"
            for r in doc["runs"]
        )
        or "no runs"
    )


def cmd_cancel(args: argparse.Namespace) -> None:
    from mixviz.runs.jobs.backends import get_backend
    from mixviz.runs.store import Store

    store = Store()
    row = store.get(args.id)
    backend = get_backend(row.backend, store, ray_address=args.ray_address)
    row = backend.cancel(args.id)
    sys.stdout.write(f"{row.id} {row.status}\n")
