"""The command line: ``python -m mixviz info|...``. Thin: parse, call the library, print.

User errors (:class:`MixvizError`) print one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from mixviz.errors import MixvizError


def _progress(msg: str) -> None:
    sys.stderr.write(f"mixviz: {msg}\n")
    sys.stderr.flush()


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit(doc: dict, as_json: bool, text: Callable[[dict], str], out: str | None = None) -> None:
    rendered = json.dumps(doc, indent=2) if as_json else text(doc)
    if out:
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
        _progress(f"wrote {out}")
    sys.stdout.write(rendered + "\n")


# ------------------------------------------------------------------ info


def cmd_info(args: argparse.Namespace) -> None:
    from mixviz.inventory import inventory, inventory_report
    from mixviz.models import meta_model, resolve_model

    ref = resolve_model(args.model, trust_remote_code=args.trust_remote_code, progress=_progress)
    doc = inventory_report(ref.name, inventory(meta_model(ref)))
    if ref.note:
        doc["note"] = ref.note
    _emit(doc, args.json, _info_text)


def _info_text(doc: dict) -> str:
    lines = [f"model {doc['model']}" + (f" — {doc['note']}" if doc.get("note") else "")]
    layers = doc["layers"]
    lines.append(
        f"{len(layers)} linear layers ({sum(x['block'] is not None for x in layers)} in blocks)"
    )
    lines.append(f"{'name':48} {'block':>5} {'kind':8} {'in':>6} {'out':>6} {'numel':>10} group")
    for x in layers:
        block = "-" if x["block"] is None else x["block"]
        lines.append(
            f"{x['name']:48} {block:>5} {x['kind']:8} {x['in_features']:>6} "
            f"{x['out_features']:>6} {x['numel']:>10} {x['group'] or ''}"
        )
    lines.append("")
    lines.append(f"{'scheme':10} {'avg bits':>9} {'no scale':>9}  unavailable for")
    for name, s in doc["schemes"].items():
        na = f"{len(s['unavailable'])} layers" if s["unavailable"] else ""
        lines.append(f"{name:10} {s['avg_bits']:>9.4f} {s['avg_bits_no_scale']:>9.4f}  {na}")
    return "\n".join(lines)


# ------------------------------------------------------------------ profile


class _Bar:
    """A tqdm progress bar on stderr, driven by the library's progress callback."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int, msg: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.set_description(msg[:40])
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.bar.close()


def cmd_profile(args: argparse.Namespace) -> None:
    from mixviz.profile import profile_model

    if args.from_autoscheme:
        from mixviz.autoscheme import import_autoscheme

        model = args.model_opt or args.model
        if not model:
            raise MixvizError("--from-autoscheme needs --model MODEL (the model it scored)")
        prof = import_autoscheme(args.from_autoscheme, model)
    else:
        if not args.model:
            raise MixvizError("give a MODEL to profile (demo, tiny, a folder or a hub id)")
        prof = profile_model(
            args.model,
            options=args.options,
            metric=args.metric,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            calib=args.calib,
            use_cache=not args.no_cache,
            layers=args.layers,
            include_lm_head=args.include_lm_head,
            allow_partial=args.allow_partial,
            trust_remote_code=args.trust_remote_code,
            progress=_Bar(),
        )
    _emit(prof.to_dict(), args.json, _profile_text, args.out)


def _profile_text(doc: dict) -> str:
    c = doc["calib"]
    lines = [
        f"{doc['metric']} profile of {doc['model']}: {len(doc['layers'])} layers × "
        f"{', '.join(doc['options'])}; calib {c['source']} {c['nsamples']}×{c['seqlen']}; "
        f"{doc['seconds']:.1f} s"
    ]
    for opt in doc["options"]:
        rows = [r for r in doc["rows"] if r["option"] == opt and r["score"] is not None]
        rows.sort(key=lambda r: -r["score"])
        total = sum(r["score"] for r in rows)
        lines.append(f"\n{opt}: total score {total:.4g}; most sensitive:")
        lines += [f"  {r['layer']:48} {r['score']:.4g}" for r in rows[:5]]
    return "\n".join(lines)


# ------------------------------------------------------------------ allocate


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise MixvizError(f"{what} must be a number, got {text!r}") from None


def _shared(items: list[str] | None) -> list[str]:
    out = []
    for item in items or []:
        parts = [p.strip() for p in item.split(",")]
        out += parts if all(p in ("qkv", "gate_up") for p in parts) else [item]
    return out


def load_or_profile(target: str, args: argparse.Namespace, include_lm_head: bool = False):
    """A Profile from a JSON file, or by profiling a model (cached)."""
    from mixviz.profile import Profile, profile_model

    if target.endswith(".json") or Path(target).is_file():
        return Profile.load(target)
    return profile_model(
        target,
        options=args.options,
        metric=args.metric,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        calib=args.calib,
        include_lm_head=include_lm_head,
        allow_partial=args.allow_partial,
        trust_remote_code=args.trust_remote_code,
        progress=_Bar(),
    )


def cmd_allocate(args: argparse.Namespace) -> None:
    from mixviz.allocate import Problem, allocate
    from mixviz.edits import parse_pins

    budget = _float(args.avg_bits, "--avg-bits")
    prof = load_or_profile(args.target, args, args.include_lm_head)
    problem = Problem.from_profile(
        prof,
        ignore_scale_bits=args.ignore_scale_bits,
        shared=_shared(args.shared),
        pins=parse_pins(prof.layers, args.pin, args.pin_kind, args.pin_block),
        include_lm_head=args.include_lm_head,
    )
    result = allocate(problem, budget, args.strategy)
    doc = result.to_dict()
    doc["model"] = prof.model
    doc["model_hash"] = prof.model_hash
    _emit(doc, args.json, _allocation_text, args.out)


def _allocation_text(doc: dict) -> str:
    from collections import Counter

    lines = [
        f"{doc['strategy']} allocation of {doc['model']} at {doc['budget_avg_bits']:g} bits "
        f"({'without' if doc['ignore_scale_bits'] else 'with'} scale bits): "
        f"{doc['avg_bits']:.4f} avg bits ({doc['avg_bits_no_scale']:.4f} without scales), "
        f"predicted loss {doc['predicted_loss']:.4g}, {doc['seconds'] * 1000:.1f} ms",
        "  "
        + ", ".join(f"{o}: {n} layers" for o, n in sorted(Counter(doc["layers"].values()).items())),
    ]
    blocks: dict[str, list[str]] = {}
    for name, option in doc["layers"].items():
        parts = name.split(".")
        key = next((p for p in parts if p.isdigit()), "-")
        blocks.setdefault(key, []).append(f"{parts[-1].removesuffix('_proj')}={option}")
    lines += [f"  block {k:>3}: {' '.join(v)}" for k, v in blocks.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------ runs


def uniform_recipe(ref, option: str) -> dict[str, str]:
    """Every block linear at one option; an error names a layer the option cannot serve."""
    from mixviz.inventory import block_linears, inventory
    from mixviz.models import meta_model
    from mixviz.schemes import get_scheme

    s = get_scheme(option)
    layers = block_linears(inventory(meta_model(ref)))
    bad = [x for x in layers if not s.available_for(x.in_features)]
    if bad:
        raise MixvizError(
            f"{s.name} is unavailable for {len(bad)} layers of {ref.name}, e.g. "
            f"{bad[0].name} (in_features {bad[0].in_features})"
        )
    return {x.name: s.name for x in layers}


def read_recipe_layers(path: str) -> tuple[dict[str, str], dict]:
    """The per-layer map of an allocation or recipe JSON file, plus the whole document."""
    from mixviz.paths import read_json

    doc = read_json(path, "recipe")
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise MixvizError(f'{path} has no "layers" map of layer → option')
    return {str(k): str(v) for k, v in layers.items()}, doc


def cmd_run(args: argparse.Namespace) -> None:
    from mixviz.backends import get_backend, run_document, wait
    from mixviz.models import resolve_model
    from mixviz.runspec import RunSpec
    from mixviz.tasks import check_tasks

    if args.timeout is not None and not args.wait:
        raise MixvizError("--timeout needs --wait")
    ref = resolve_model(args.model, trust_remote_code=args.trust_remote_code, progress=_progress)
    strategy, budget = "", None
    if args.bf16:
        recipe = None
    elif args.uniform:
        recipe = uniform_recipe(ref, args.uniform)
    else:
        recipe, doc = read_recipe_layers(args.recipe)
        prov = doc.get("provenance") or {}
        strategy = str(doc.get("strategy") or prov.get("strategy") or "")
        budget = doc.get("budget_avg_bits", prov.get("budget"))
        from mixviz.inventory import inventory
        from mixviz.models import meta_model
        from mixviz.recipe import Recipe
        from mixviz.schemes import get_scheme

        # layers the model lacks and options a layer cannot take are refused here, not by
        # the worker; block linears the recipe leaves out are named, as BF16, in the spec
        recipe = {k: get_scheme(v).name for k, v in recipe.items()}
        layers = inventory(meta_model(ref))
        Recipe(ref.name, ref.hash, recipe).validate(layers)
        recipe = {**{x.name: "BF16" for x in layers if x.block is not None}, **recipe}
    tasks = check_tasks(args.tasks.split(","))
    spec = RunSpec(
        model=args.model,
        recipe=recipe,
        tasks=tuple(tasks),
        limit=args.limit,
        batch_size=args.batch_size,
        dtype=args.dtype,
        seed=args.seed,
        strategy=strategy,
        budget=budget,
        model_hash=ref.hash,
        trust_remote_code=args.trust_remote_code,
    )
    backend = get_backend(args.backend, ray_address=args.ray_address)
    run_id = backend.submit(spec)
    _progress(f"queued run {run_id} ({spec.label}) on the {backend.name} backend")
    if not args.wait:
        sys.stdout.write(
            (json.dumps({"id": run_id, "status": "queued"}) if args.json else run_id) + "\n"
        )
        return
    last = [None]

    def show(row) -> None:
        now = (row.status, row.stage, round(row.progress, 2))
        if now != last[0]:
            _progress(f"{row.id}: {row.status} {row.stage} {row.progress:.0%}")
            last[0] = now

    wait(backend.store, run_id, timeout=args.timeout, on_update=show, backend=backend)
    doc = run_document(backend.store, run_id)
    _emit(doc, args.json, _run_text)
    if doc["status"] != "done":
        raise MixvizError(f"run {run_id} {doc['status']}: {doc['error'] or ''}".strip())


def _run_text(doc: dict) -> str:
    lines = [
        f"run {doc['id']} ({doc['label']}): {doc['status']}"
        + (f", {doc['avg_bits']:.4f} avg bits" if doc.get("avg_bits") else "")
    ]
    for task, metrics in doc["results"].items():
        lines.append(f"  {task}: " + ", ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
    return "\n".join(lines)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def cmd_runs(args: argparse.Namespace) -> None:
    from mixviz.backends import reconcile_all
    from mixviz.store import Store

    store = Store()
    reconcile_all(store)  # lost workers become lost and the queue moves on
    rows = store.list()
    doc = {
        "runs": [
            {
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
            }
            for r in rows
        ]
    }
    _emit(
        doc,
        args.json,
        lambda d: (
            "\n".join(
                f"{r['id']}  {r['model']:8} {r['label']:18} {r['status']:9} {r['stage']:22} "
                f"{r['progress']:4.0%}"
                for r in d["runs"]
            )
            or "no runs"
        ),
    )


def cmd_cancel(args: argparse.Namespace) -> None:
    from mixviz.backends import get_backend
    from mixviz.store import Store

    store = Store()
    row = store.get(args.id)
    backend = get_backend(row.backend, store, ray_address=args.ray_address)
    row = backend.cancel(args.id)
    sys.stdout.write(f"{row.id} {row.status}\n")


# ------------------------------------------------------------------ recipes


def _recipe_from_file(path: str):
    """A mixviz recipe, or an allocation JSON (as ``allocate --out`` writes) made into one."""
    from mixviz.recipe import FORMAT, Recipe, read_json

    doc = read_json(path, "recipe")
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        return Recipe.from_dict(doc)
    if isinstance(doc, dict) and isinstance(doc.get("layers"), dict) and "strategy" in doc:
        from mixviz.allocate import Allocation

        fields = {k: doc[k] for k in Allocation.__dataclass_fields__ if k in doc}
        return Recipe.from_allocation(
            Allocation(**fields), doc.get("model", ""), doc.get("model_hash", "")
        )
    raise MixvizError(
        f"{path} is neither a mixviz recipe nor an allocation "
        "(use `mixviz import` for auto-round layer configs)"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from mixviz.export import export

    text = export(_recipe_from_file(args.recipe), args.to)
    if args.out:
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
        _progress(f"wrote {args.out}")
    else:
        sys.stdout.write(text)


def cmd_import(args: argparse.Namespace) -> None:
    from mixviz.export import import_recipe
    from mixviz.inventory import inventory
    from mixviz.models import meta_model, resolve_model

    ref = resolve_model(args.model, trust_remote_code=args.trust_remote_code)
    recipe = import_recipe(args.file, ref.name, ref.hash, inventory(meta_model(ref)))
    recipe = type(recipe)(
        ref.name, ref.hash, recipe.layers, recipe.ignore_scale_bits, recipe.provenance
    )
    if args.out:
        recipe.save(args.out)
        _progress(f"wrote {args.out} ({len(recipe.layers)} layers)")
    else:
        sys.stdout.write(json.dumps(recipe.to_dict(), indent=2) + "\n")


# ------------------------------------------------------------------ reproduce

STUDY_TASKS = "lambada_openai,hellaswag,piqa,winogrande,mmlu"


def cmd_reproduce(args: argparse.Namespace) -> None:
    from mixviz.reproduce import reports_dir, run_protocol
    from mixviz.tasks import check_tasks

    default = "mixviz_lastword,mixviz_nextsent" if args.model in ("demo", "tiny") else STUDY_TASKS
    tasks = tuple(check_tasks((args.tasks or default).split(",")))
    run_protocol(
        args.model,
        tasks=tasks,
        limit=args.limit,
        metric=args.metric,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        with_autoscheme=not args.no_autoscheme,
        log=_progress,
    )
    folder = reports_dir(args.model)
    _progress(f"wrote {folder}/tables.md, table1-4.csv and chart.html")
    sys.stdout.write((folder / "tables.md").read_text())


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixviz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="layer inventory and per-scheme average bits")
    info.add_argument("model", help="demo | tiny | local HF folder | hub id")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code (off by default)",
    )
    info.set_defaults(func=cmd_info)

    from mixviz.profile import DEFAULT_METRIC, METRIC_NAMES

    prof = sub.add_parser("profile", help="per-layer sensitivity to each option (cached)")
    prof.add_argument("model", nargs="?", help="demo | tiny | local HF folder | hub id")
    prof.add_argument("--options", default="MXFP4,MXFP8", help="comma-separated options")
    prof.add_argument("--metric", default=DEFAULT_METRIC, choices=METRIC_NAMES)
    prof.add_argument("--nsamples", type=int, default=16)
    prof.add_argument("--seqlen", type=int, default=256)
    prof.add_argument("--calib", default="pydoc", help="pydoc | a .txt or .jsonl file")
    prof.add_argument("--layers", help="regex: score only matching layers (e.g. for kl)")
    prof.add_argument("--include-lm-head", action="store_true", help="score lm_head too")
    prof.add_argument(
        "--allow-partial",
        action="store_true",
        help="keep options whose group size does not divide some layers",
    )
    prof.add_argument("--no-cache", action="store_true", help="recompute, do not store")
    prof.add_argument(
        "--from-autoscheme",
        metavar="DIR",
        help="import AutoScheme's score cache folder instead of profiling",
    )
    prof.add_argument("--model", dest="model_opt", help="the model (with --from-autoscheme)")
    prof.add_argument("--json", action="store_true")
    prof.add_argument("--out", help="also write the profile JSON to this file")
    prof.add_argument("--trust-remote-code", action="store_true")
    prof.set_defaults(func=cmd_profile)

    from mixviz.allocate import STRATEGIES

    alloc = sub.add_parser("allocate", help="choose an option per layer under a bit budget")
    alloc.add_argument("target", metavar="PROFILE.json|MODEL")
    alloc.add_argument("--avg-bits", required=True, help="the average-bits budget")
    alloc.add_argument("--strategy", default="optimal", choices=STRATEGIES)
    alloc.add_argument(
        "--ignore-scale-bits",
        action="store_true",
        help="count bits·numel only, as AutoScheme's ignore_scale_zp_bits",
    )
    alloc.add_argument(
        "--shared",
        action="append",
        metavar="qkv,gate_up|REGEX",
        help="layers that must share an option (repeatable)",
    )
    alloc.add_argument(
        "--pin", action="append", metavar="NAME=OPTION", help="fix a layer's option (repeatable)"
    )
    alloc.add_argument(
        "--pin-kind",
        action="append",
        metavar="KIND=OPTION",
        help="fix a module kind in every block, e.g. down=MXFP8 (repeatable)",
    )
    alloc.add_argument(
        "--pin-block",
        action="append",
        metavar="N=OPTION",
        help="fix every linear of block N, e.g. 0=MXFP8 (repeatable); "
        "--pin beats --pin-block beats --pin-kind",
    )
    alloc.add_argument(
        "--include-lm-head", action="store_true", help="put lm_head in the budget (profiles it too)"
    )
    for flag, default in (
        ("--options", "MXFP4,MXFP8"),
        ("--metric", DEFAULT_METRIC),
        ("--calib", "pydoc"),
    ):
        alloc.add_argument(flag, default=default, help="when profiling a MODEL")
    alloc.add_argument("--nsamples", type=int, default=16, help="when profiling a MODEL")
    alloc.add_argument("--seqlen", type=int, default=256, help="when profiling a MODEL")
    alloc.add_argument("--allow-partial", action="store_true", help="when profiling a MODEL")
    alloc.add_argument("--trust-remote-code", action="store_true")
    alloc.add_argument("--json", action="store_true")
    alloc.add_argument("--out", help="also write the allocation JSON to this file")
    alloc.set_defaults(func=cmd_allocate)

    run = sub.add_parser("run", help="quantize with auto-round and evaluate with lm-eval")
    run.add_argument("model", help="demo | tiny | local HF folder | hub id")
    what = run.add_mutually_exclusive_group(required=True)
    what.add_argument("--recipe", help="an allocation or recipe JSON file")
    what.add_argument("--bf16", action="store_true", help="the unquantized reference")
    what.add_argument("--uniform", metavar="OPTION", help="every block linear at OPTION")
    run.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks")
    run.add_argument("--limit", type=int, help="items per task")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--backend", choices=("local", "ray"))
    run.add_argument("--ray-address", help="Ray dashboard address (or MIXVIZ_RAY_ADDRESS)")
    run.add_argument("--wait", action="store_true", help="wait for the run and print results")
    run.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="with --wait: stop waiting after this long (an error; the run is left as it is)",
    )
    run.add_argument("--json", action="store_true")
    run.add_argument("--trust-remote-code", action="store_true")
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list runs and their state")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(func=cmd_runs)

    cancel = sub.add_parser("cancel", help="cancel a queued or running run")
    cancel.add_argument("id")
    cancel.add_argument("--ray-address")
    cancel.set_defaults(func=cmd_cancel)

    from mixviz.export import TARGETS

    exp = sub.add_parser(
        "export", help="translate a recipe for auto-round, GPTQModel, llm-compressor or llama.cpp"
    )
    exp.add_argument("recipe", help="a mixviz recipe or allocation JSON")
    exp.add_argument("--to", required=True, choices=TARGETS)
    exp.add_argument("--out", help="write to this file instead of stdout")
    exp.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="an auto-round layer_config or recipe → mixviz recipe")
    imp.add_argument("file")
    imp.add_argument("--model", required=True)
    imp.add_argument("--out", help="write the recipe here instead of stdout")
    imp.add_argument("--trust-remote-code", action="store_true")
    imp.set_defaults(func=cmd_import)

    rep = sub.add_parser("reproduce", help="the reference study's tables for a model")
    rep.add_argument("model")
    rep.add_argument("--tasks", help=f"default: {STUDY_TASKS} (demo/tiny: the bundled ones)")
    rep.add_argument("--limit", type=int, help="items per task")
    rep.add_argument("--metric", default=DEFAULT_METRIC, choices=METRIC_NAMES)
    rep.add_argument("--nsamples", type=int, default=16)
    rep.add_argument("--seqlen", type=int, default=256)
    rep.add_argument(
        "--no-autoscheme", action="store_true", help="skip AutoScheme's own allocations"
    )
    rep.set_defaults(func=cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MixvizError as e:
        sys.stderr.write(f"mixviz: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mixviz: interrupted\n")
        return 130
    return 0
