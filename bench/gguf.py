"""mixviz's allocation against llama.cpp's own mixes at the same bits per weight, measured by
llama.cpp.

For each of llama.cpp's ``Q3_K_M``, ``Q4_K_M`` and ``Q5_K_M`` rules (as ``llama-quantize`` assigns
GGML types: ``mixviz.allocation.baselines.llamacpp_type``, checked tensor by tensor against the
real tool in tests/models/test_gguf_types.py): the rule's allocation and mixviz's exact optimum
at the rule's own bpw (block linears, scales included), from one fisher profile of the demo over the
GGML options. Both are written as real GGUF files (``mixviz quantize --format gguf``: auto-round's
quantizers and exporter, the same for both) and measured on held-out text by
``llama-perplexity --kl-divergence`` against a BF16 GGUF of the same model, and by mixviz's
own per-token KLD of the same files reloaded from disk (paired by window, 95 % interval). A
file whose reload differs from the in-memory model (Q4_1/Q5_1: auto-round's in-memory quantizer
and its GGUF packer disagree) fails its job's verdict but is still measured: the file ships.

    .venv/bin/python bench/gguf.py [--model demo] [--limit 16]

Goal (issue 25): lower KLD than llama.cpp's rule at equal bpw, interval excluding 0.
Measure on a quiet machine: other processes on 2 cores change the times (not the KLDs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

OPTIONS = "Q3_K,Q4_0,Q4_K,Q5_0,Q5_1,Q5_K,Q6_K,Q8_0"
FTYPES = ("Q3_K_M", "Q4_K_M", "Q5_K_M")
Z95 = 1.959963984540054


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--limit", type=int, default=16, help="KLD windows / chunks of 512 tokens")
    ap.add_argument("--out", help="folder for the GGUF files (default: a temporary one)")
    ap.add_argument("--reuse", help="the --out of an earlier call: its finished jobs are reused")
    args = ap.parse_args()

    from mixviz.allocation.problem import Problem
    from mixviz.allocation.strategies import allocate
    from mixviz.models.loading import resolve_model
    from mixviz.report.paired import paired_kld
    from mixviz.runs.backends import LocalBackend, submit, wait
    from mixviz.runs.runspec import RunSpec, ShipArgs
    from mixviz.runs.ship import ship_document
    from mixviz.sensitivity.profile import profile_model

    ref = resolve_model(args.model)
    # K-types serve only the rows 256 divides (the demo's down_proj): the rest take the 32-wide
    prof = profile_model(ref, options=OPTIONS.split(","), metric="fisher", allow_partial=True)
    problem = Problem.from_profile(prof)
    hi = problem.feasible_range()[1]
    root = Path(args.reuse or args.out or tempfile.mkdtemp(prefix="mixviz-gguf-"))
    backend = LocalBackend()
    every = {x.name: "BF16" for x in prof.layers if x.block is not None}
    lines = [
        f"{args.model}, fisher profile over {OPTIONS} ({prof.calib.nsamples}×"
        f"{prof.calib.seqlen} calibration tokens); KLD over {args.limit} held-out chunks of 512 "
        f"tokens; CPU, {os.cpu_count()} cores",
        "",
        "| llama.cpp mix | bpw (block linears) | rule: KLD (llama.cpp) | mixviz: bpw | mixviz: KLD "
        "(llama.cpp) | Δ llama.cpp (±1.96 se, unpaired) | Δ mixviz KLD, paired [95 %] | "
        "top-1 rule → mixviz (llama.cpp) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    native = []
    for ftype in FTYPES:
        rule = allocate(problem, hi, ftype)
        best = allocate(problem, rule.avg_bits, "optimal")
        runs = {}
        for name, a in (("rule", rule), ("mixviz", best)):
            spec = RunSpec(
                model=args.model, recipe={**every, **a.layers}, tasks=("mixviz_kld",),
                limit=args.limit, strategy=f"{name} {ftype}", budget=rule.avg_bits,
                model_hash=ref.hash, ship=ShipArgs("gguf", str(root / f"{ftype}-{name}")),
            )  # fmt: skip
            # a failed verdict still leaves the file and both KLDs: the file is what is compared
            earlier = [r for r in backend.store.list() if r.key == spec.key and ship_document(r.id)]
            run_id = earlier[-1].id if earlier else submit(backend, spec).id
            row = wait(backend.store, run_id, poll=2.0)
            print(f"  {ftype} {name}: {row.status} {row.error or ''}", file=sys.stderr)
            runs[name] = (run_id, ship_document(run_id) or {}, a)
        lines.append(_row(ftype, runs, paired_kld))
        native.append(_native(ftype, ref, rule, best, every, root, args.limit))
    print("\n".join(lines))
    print(
        "\nThe same two allocations quantized by llama.cpp's own `llama-quantize "
        "--tensor-type-file` from llama.cpp's BF16 GGUF (llama.cpp's quantizers, as a llama.cpp "
        "user ships them; embedding and everything else at its Q8_0 default for both):\n"
    )
    print(
        "| llama.cpp mix | rule: KLD | mixviz: KLD | Δ (±1.96 se, unpaired) | "
        "top-1 rule → mixviz |\n|---|---|---|---|---|"
    )
    print("\n".join(native))
    return 0


def _native(ftype, ref, rule, best, every, root, limit) -> str:
    """Both allocations through llama-quantize itself, measured by llama-perplexity."""
    from mixviz.report.export import export
    from mixviz.report.recipe import Recipe
    from mixviz.runs import llamacpp

    base = llamacpp.bf16_gguf(ref.path, ref.hash)
    text = llamacpp.evaluation_file()
    got = {}
    for name, a in (("rule", rule), ("mixviz", best)):
        types = root / f"{ftype}-{name}.tensor-types.txt"
        types.write_text(export(Recipe(ref.name, ref.hash, {**every, **a.layers}), "llamacpp-file"))
        out = llamacpp.quantize(base, root / f"{ftype}-{name}.llama.gguf", "Q8_0", types)
        got[name] = llamacpp.kl_divergence(out, base, text, chunks=limit)
    (rk, rse), (mk, mse) = got["rule"]["kld"], got["mixviz"]["kld"]
    d, half = mk - rk, Z95 * math.hypot(rse, mse)
    return (
        f"| {ftype} | {rk:.4f} ± {rse:.4f} | {mk:.4f} ± {mse:.4f} | {d:+.4f} ± {half:.4f}"
        f"{' *' if abs(d) > half else ''} | {100 * got['rule']['top1'][0]:.2f} % → "
        f"{100 * got['mixviz']['top1'][0]:.2f} % |"
    )


def reloaded_kld(run_id: str):
    """Per-token KLD of the GGUF file itself, reloaded from disk (kept by the quantize job)."""
    from mixviz.runs.kld import TokenScores
    from mixviz.runs.store import runs_dir

    path = runs_dir() / run_id / "kld_reloaded.npz"
    return TokenScores.load(path).kld if path.is_file() else None


def _row(ftype, runs, paired_kld) -> str:
    (rid, rship, rule), (mid, mship, best) = runs["rule"], runs["mixviz"]
    if "llama_cpp" not in rship or "llama_cpp" not in mship:
        return f"| {ftype} | {rule.avg_bits:.4f} | (a job failed: see `mixviz runs`) |"
    rk, rse = rship["llama_cpp"].get("kld", (math.nan, math.nan))
    mk, mse = mship["llama_cpp"].get("kld", (math.nan, math.nan))
    d = mk - rk
    half = Z95 * math.hypot(rse, mse)
    a, b = reloaded_kld(rid), reloaded_kld(mid)
    both = a is not None and b is not None
    paired = paired_kld(a, b).format(scale=1.0, digits=4) if both else "—"
    rt = rship["llama_cpp"].get("top1", (math.nan,))[0]
    mt = mship["llama_cpp"].get("top1", (math.nan,))[0]
    return (
        f"| {ftype} | {rule.avg_bits:.4f} | {rk:.4f} ± {rse:.4f} | {best.avg_bits:.4f} | "
        f"{mk:.4f} ± {mse:.4f} | {d:+.4f} ± {half:.4f}{' *' if abs(d) > half else ''} | "
        f"{paired} | {100 * rt:.2f} % → {100 * mt:.2f} % |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
