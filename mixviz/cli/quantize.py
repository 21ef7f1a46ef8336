"""``mixviz quantize MODEL --recipe FILE --format F --out DIR``: a real checkpoint, verified.

The job is a queued run like any other (``mixviz runs`` shows it, ``cancel`` stops it): it
quantizes with auto-round, writes the checkpoint with auto-round's exporter, reloads it from
disk and checks it against the in-memory model (:mod:`mixviz.runs.ship.step`).
"""

from __future__ import annotations

import argparse
import json
import sys

from mixviz.cli.common import (
    add_device_flags,
    add_json,
    add_model,
    add_trust_remote_code,
    device_kwargs,
    emit,
    follow,
    progress,
    resolve,
)
from mixviz.errors import MixvizError
from mixviz.runs.ship.vllm_check import vllm_line


def add_parser(sub) -> None:
    from mixviz.cli.allocate import add_target
    from mixviz.models.targets import FORMATS
    from mixviz.runs.runspec import VERIFIERS

    q = sub.add_parser("quantize", help="write a real quantized checkpoint and verify it on reload")
    add_model(q)
    q.add_argument("--recipe", required=True, help="an allocation or recipe JSON file")
    q.add_argument("--format", required=True, choices=FORMATS, help="the checkpoint format")
    q.add_argument("--out", required=True, help="a new (or empty) folder for the checkpoint")
    q.add_argument("--iters", type=int, default=0, help="auto-round tuning steps (0 = RTN)")
    q.add_argument("--limit", type=int, help="held-out KLD windows of 512 tokens (default: all)")
    q.add_argument(
        "--imatrix",
        metavar="FILE",
        help="llama.cpp's importance matrix for the GGML layers (GGUF or .dat; `profile "
        "--imatrix auto --json` prints the file it computed): ggml and llama-quantize use it",
    )
    add_target(q)
    q.add_argument(
        "--verify-with",
        action="append",
        choices=VERIFIERS,
        default=[],
        help="also load and score the checkpoint in this serving runtime (vllm: its own venv, "
        "bash .ci/vllm.sh)",
    )
    add_device_flags(q)
    q.add_argument("--no-wait", action="store_true", help="queue the job and print its id")
    add_json(q)
    add_trust_remote_code(q)
    q.set_defaults(func=cmd_quantize)


def ship_spec(args: argparse.Namespace, ref):
    """The run spec of a quantize job, every refusal checked before anything is queued."""
    from mixviz.cli.runs import recipe_file
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.runs.runspec import QuantArgs
    from mixviz.runs.ship.step import quantize_spec

    if args.iters < 0:
        raise MixvizError(f"--iters must be 0 (RTN) or more, got {args.iters}")
    recipe, strategy, budget = recipe_file(ref, args.recipe)
    imatrix = _imatrix(args.imatrix)
    return quantize_spec(
        ref,
        recipe,
        args.format,
        args.out,
        layers=inventory(meta_model(ref)),
        target=args.target_runtime,
        verify_with=tuple(args.verify_with),
        limit=args.limit,
        quant=QuantArgs(iters=args.iters, disable_opt_rtn=args.iters == 0, imatrix=imatrix),
        strategy=strategy,
        budget=budget,
        trust_remote_code=args.trust_remote_code,
        **device_kwargs(args),
    )


def _imatrix(path: str | None) -> str | None:
    """The imatrix file, read once here so a bad one is refused before anything is queued."""
    if path is None:
        return None
    from pathlib import Path

    from mixviz.sensitivity.imatrix import read

    read(path)
    return str(Path(path).expanduser().resolve())


def cmd_quantize(args: argparse.Namespace) -> None:
    from mixviz.runs.jobs.backends import LocalBackend, submit
    from mixviz.runs.jobs.deliver import deliver
    from mixviz.runs.ship.delivery import as_delivered
    from mixviz.runs.ship.step import ship_document

    ref = resolve(args)
    spec = ship_spec(args, ref)
    backend = LocalBackend()
    sub = submit(backend, spec)
    progress(sub.describe(spec.label) + f" → {spec.ship.out}")
    if args.no_wait:
        _queue_only(backend, spec, sub, args.json)
        return
    got = deliver(
        backend, spec, sub.id, sub.reused, say=progress,
        follow=lambda run_id, reused: follow(backend, run_id, reused),
    )  # fmt: skip
    row = backend.store.get(got.run_id)
    ship = ship_document(got.run_id) or {}
    if ship and got.status == "done":
        ship = as_delivered(ship, spec.ship.out)  # where this command put it
    doc = {"id": got.run_id, "status": row.status, "error": row.error, "ship": ship,
           "delivered": {"how": got.how, "source": got.source}}  # fmt: skip
    emit(doc, args.json, _text)
    if row.status != "done":
        raise MixvizError(f"quantize job {got.run_id} {row.status}: {row.error or ''}".strip())


def _queue_only(backend, spec, sub, as_json: bool) -> None:
    """``--no-wait``: print the job's id; a reused job that is done is delivered at once (a
    copy, or queued again), one that is not yet is named."""
    from mixviz.runs.jobs.deliver import deliver_now

    run_id = sub.id
    if sub.reused:
        got = deliver_now(backend, spec, sub.id, reused=True)
        run_id = got.run_id
        if got.message:
            progress(got.message)
        row = backend.store.get(run_id)
        if got.how == "pending" and row.spec["ship"]["out"] != spec.ship.out:
            progress(f"run {run_id} writes its checkpoint to {row.spec['ship']['out']}: run "
                     f"this again once it is done to copy it to {spec.ship.out}")  # fmt: skip
    doc = {"id": run_id, "status": backend.store.get(run_id).status, "reused": sub.reused}
    sys.stdout.write((json.dumps(doc) if as_json else run_id) + "\n")


def _text(doc: dict) -> str:
    ship = doc["ship"]
    if not ship:
        return f"job {doc['id']}: {doc['status']}"
    mem = {m: (v, se) for m, v, se in ship["kld_memory"]}
    dsk = {m: (v, se) for m, v, se in ship["kld_reloaded"]}
    d = ship["delta_kld"]
    where = "in" if doc["status"] == "done" else "failed its checks, nothing written to"
    lines = [
        f"{ship['format']} checkpoint {where} {ship['out']} ({ship['total_bytes'] / 2**20:.1f} "
        "MiB)",
        f"  layers read back from the files: {sum(f['ok'] for f in ship['layers'].values())} of "
        f"{len(ship['layers'])} carry the recipe's format",
        f"  bytes on disk ÷ predicted: quantized linears {ship['quantized_bytes_ratio']:.4f}, "
        f"all block linears {ship['bytes_ratio']:.4f} (BF16 layers are stored in the run's "
        "precision)",
        f"  KLD to the unquantized model ({int(mem['tokens'][0])} held-out tokens): in memory "
        f"{mem['kld'][0]:.5f} ± {mem['kld'][1]:.5f}, reloaded {dsk['kld'][0]:.5f} ± "
        f"{dsk['kld'][1]:.5f}; Δ {d['delta']:+.2e} [{d['lo']:+.2e}, {d['hi']:+.2e}]",
        f"  top-1 agreement: in memory {100 * mem['top1'][0]:.2f} %, reloaded "
        f"{100 * dsk['top1'][0]:.2f} %",
    ]
    llama = ship.get("llama_cpp") or {}
    if "kld" in llama:
        mem_half = llama.get("memory_kld") or [float("nan"), None]
        verdict = {True: "agrees", False: "DISAGREES", None: "too few windows to judge"}
        lines.append(
            f"  llama.cpp (llama-perplexity --kl-divergence vs a BF16 GGUF, second half of each "
            f"window): KLD {llama['kld'][0]:.5f} ± {llama['kld'][1]:.5f} vs in memory "
            f"{mem_half[0]:.5f} on the same positions: {verdict[llama.get('agrees')]}; same "
            f"top-1 {100 * llama['top1'][0]:.2f} %"
        )
    elif llama.get("checked") is False or "skipped" in llama:
        lines.append(f"  {llama.get('why') or 'not checked by llama.cpp: ' + llama['skipped']}")
    if ship.get("writer"):
        lines.append(f"  written by {ship['writer']}")
    lines.append("  " + vllm_line(ship.get("vllm")))
    return "\n".join(lines)
