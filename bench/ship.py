"""The demo's 5-bit recipe written as a real checkpoint in each format, reloaded and verified.

For each (format, option set): profile the demo (fisher, cached), allocate the exact optimum at
``--avg-bits`` (scale bits ignored, as the study counts them), and run the real quantize job
(local backend → worker → auto-round → ``save_quantized`` → reload from disk → KLD). Prints
per format: seconds to write, bytes of the quantized linears on disk ÷ predicted, reload
seconds, KLD in memory and reloaded with the paired Δ (95 % interval) — and, for GGUF, llama.cpp's
own KLD against a BF16 GGUF. The anchor is the in-memory run of the same job (its quantize and
KLD seconds), so the write/reload figures read as ratios of it: *verify ÷ in-memory KLD* is the
reload plus the reloaded model's KLD over the in-memory model's KLD on the same windows (the
reload runs in the run's own precision, so this stays near 1×). The header gives the load
average at the start and the end.

    .venv/bin/python bench/ship.py [--limit 16] [--avg-bits 5] [--only gguf,auto_round]

Jobs are ordinary runs: a second call reuses the finished ones (``--force`` redoes them).
Measure on a quiet machine: other processes on 2 cores change every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

CASES = [  # (format, options): the option sets each format can hold
    ("auto_round", "MXFP4,MXFP8"),
    ("auto_round", "W4A16G64,W8A16G64"),
    ("auto_gptq", "W4A16G64,W8A16G64"),
    ("llm_compressor", "MXFP4,MXFP8"),
    ("llm_compressor", "W4A16G64,W8A16G64"),
    ("gguf", "Q4_0,Q5_0,Q8_0"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--avg-bits", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=16, help="KLD windows of 512 tokens")
    ap.add_argument("--only", help="comma-separated formats")
    ap.add_argument("--force", action="store_true", help="redo finished jobs")
    ap.add_argument("--out", default=None, help="folder for the checkpoints (default: temp)")
    args = ap.parse_args()

    from mixviz.allocation.problem import Problem
    from mixviz.allocation.strategies import allocate
    from mixviz.models.loading import resolve_model
    from mixviz.runs.jobs.backends import LocalBackend, submit, wait
    from mixviz.runs.runspec import RunSpec, ShipArgs
    from mixviz.runs.ship.step import ship_document
    from mixviz.runs.store import read_result
    from mixviz.sensitivity.profile import profile_model

    args.load = [os.getloadavg()[0]]  # how busy the machine was: at the start, at the end
    ref = resolve_model(args.model)
    root = Path(args.out or tempfile.mkdtemp(prefix="mixviz-ship-"))
    backend = LocalBackend()
    rows = []
    only = set(args.only.split(",")) if args.only else None
    for fmt, options in CASES:
        if only and fmt not in only:
            continue
        prof = profile_model(ref, options=options.split(","), metric="fisher")
        problem = Problem.from_profile(prof, ignore_scale_bits=True)
        alloc = allocate(problem, args.avg_bits, "optimal")
        recipe = {**{x.name: "BF16" for x in prof.layers if x.block is not None}, **alloc.layers}
        tag = f"{fmt}-{options.replace(',', '-')}-{args.avg_bits:g}"
        out = root / tag
        spec = RunSpec(
            model=args.model, recipe=recipe, tasks=("mixviz_kld",), limit=args.limit,
            strategy=f"optimal {options}", budget=args.avg_bits, model_hash=ref.hash,
            ship=ShipArgs(fmt, str(out)),
        )  # fmt: skip
        t0 = time.perf_counter()
        sub = submit(backend, spec, force=args.force)
        row = wait(backend.store, sub.id, poll=1.0)
        wall = time.perf_counter() - t0
        ship = ship_document(sub.id) or {}
        result = read_result(sub.id)
        timings = {**(result.timings if result else {}), **ship.get("timings", {})}
        rows.append((fmt, options, row, ship, timings, wall, sub.reused))
        print(f"  {tag}: {row.status} in {wall:.0f} s" + (f" ({row.error})" if row.error else ""),
              file=sys.stderr)  # fmt: skip
    args.load.append(os.getloadavg()[0])
    print(table(rows, args))
    return 0


def table(rows, args) -> str:
    head = (
        "| format | options | status | quantize s | write s | write ÷ quantize | reload s "
        "| verify ÷ in-memory KLD | quantized bytes ÷ predicted | KLD in memory | KLD reloaded "
        "| Δ KLD reloaded − memory [95 %] | llama.cpp KLD |"
    )
    lines = [
        f"demo model, optimal @ {args.avg_bits:g} avg bits (scale bits ignored), KLD over "
        f"{args.limit} held-out windows of 512 tokens; CPU, {os.cpu_count()} cores, load "
        f"average {args.load[0]:.1f} at the start, {args.load[-1]:.1f} at the end; verify = "
        "reload + the reloaded model's KLD, against the in-memory model's KLD (same windows)",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for fmt, options, row, ship, t, _wall, reused in rows:
        if not ship:
            lines.append(f"| {fmt} | {options} | {row.status}: {(row.error or '')[:120]} |")
            continue
        mem = {m: (v, se) for m, v, se in ship["kld_memory"]}
        dsk = {m: (v, se) for m, v, se in ship["kld_reloaded"]}
        d = ship["delta_kld"]
        llama = ship.get("llama_cpp") or {}
        lk = f"{llama['kld'][0]:.4f} ± {llama['kld'][1]:.4f}" if "kld" in llama else "—"
        status = row.status + (" (reused)" if reused else "")
        q = t.get("quantize")
        ratio = f"{t['write'] / q:.2f}×" if q and "write" in t else "—"
        verify = t.get("reload", 0) + t.get("reload kld", 0)
        v_ratio = f"{verify / t['kld']:.2f}×" if t.get("kld") and "reload kld" in t else "—"
        lines.append(
            f"| {fmt} | {options} | {status} | {f'{q:.1f}' if q else '—'} | "
            f"{t.get('write', 0):.1f} | {ratio} | {t.get('reload', 0):.1f} | {v_ratio} | "
            f"{ship['quantized_bytes_ratio']:.4f} | {mem['kld'][0]:.4f} ± {mem['kld'][1]:.4f} | "
            f"{dsk['kld'][0]:.4f} ± {dsk['kld'][1]:.4f} | "
            f"{d['delta']:+.1e} [{d['lo']:+.1e}, {d['hi']:+.1e}] | {lk} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
