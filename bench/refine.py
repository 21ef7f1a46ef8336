"""Allocation in context: today's fisher allocation vs the in-context profile vs the refined one.

For each case (options, average bits) on the demo: profile with fisher (today's default, around
the unquantized model) and with ``--around`` the lowest option (the gradient at the all-low
model); allocate the exact optimum of each; refine today's with measured KLD on calibration text
(``mixviz refine``, 16 × 512 tokens: one correction factor per module kind, and ``context`` —
profiled again around each round's allocation). Then measure all three on the
**evaluation** text — the ``mixviz_kld`` computation (top-64 + tail samples per token, per
512-token window), each model quantize-dequantized in memory with auto-round's RTN
quantizers — and print each KLD ± 2 s.e., the paired difference to today's allocation with its
95 % interval (* where it excludes 0), and the compute each costs as a multiple of today's
profiling time (the anchor, measured in the same run unless its profile was cached).

    .venv/bin/python bench/refine.py [--limit 32] [--rounds 3] [--modes kind,context] [--anchor]

Profiles and refinements are cached (``cache/``): a second call reprints from them, with the
seconds they took when made. Measure on a quiet machine (2 cores: other work changes every
time but not the KLDs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

CASES = [  # (options, average bits): the reference study's budgets
    ("MXFP4,MXFP8", 4.5),
    ("MXFP4,MXFP8", 5.0),
    ("MXFP4,MXFP8", 6.0),
    ("W2A16G64,W4A16G64", 3.0),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--limit", type=int, default=32, help="evaluation windows of 512 tokens")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--modes", default="kind,context", help="refine corrections to compare (kind,block,context)"
    )
    ap.add_argument("--only", help="comma-separated budgets, e.g. 5,6")
    ap.add_argument(
        "--anchor",
        action="store_true",
        help="profile today's way afresh (uncached) in this run, to time the anchor now",
    )
    args = ap.parse_args()

    from mixviz.allocation.problem import Problem
    from mixviz.allocation.refine import RefineSettings
    from mixviz.allocation.strategies import allocate
    from mixviz.models.loading import load_model, resolve_model
    from mixviz.models.schemes import parse_options
    from mixviz.runs.evaluation.kld import windows
    from mixviz.runs.evaluation.measure import MeasureSettings, WindowKLD, refine_profile
    from mixviz.sensitivity.profile import profile_model
    from mixviz.sensitivity.spec import ProfileSpec

    only = {float(b) for b in args.only.split(",")} if args.only else None
    cases = [c for c in CASES if only is None or c[1] in only]
    ref = resolve_model(args.model)
    model, tok = load_model(ref, dtype="float32", device="cpu")
    t0 = time.perf_counter()
    held = WindowKLD(model, windows(tok)[: args.limit])
    took = time.perf_counter() - t0
    print(f"held-out reference: {args.limit} windows × 512 tokens, {took:.0f} s")
    where = MeasureSettings(device="cpu", dtype="float32")
    rows, anchors = [], {}
    for options, bits in cases:
        low = parse_options(options)[0].name
        spec = ProfileSpec(options=options, device="cpu", dtype="float32")
        today = profile_model(ref, spec)
        if args.anchor and options not in anchors:
            anchors[options] = profile_model(ref, spec, use_cache=False).seconds
        ctx = profile_model(
            ref, ProfileSpec(options=options, device="cpu", dtype="float32", around=low)
        )
        problem = Problem.from_profile(today)
        p = anchors.get(options, today.seconds)
        allocs = {"today": (allocate(problem, bits).layers, 1.0, "")}
        allocs["around low"] = (
            allocate(Problem.from_profile(ctx), bits).layers,
            ctx.seconds / p,
            f"profile --around {low}",
        )
        for mode in args.modes.split(","):
            refined = refine_profile(today, problem, RefineSettings(bits, args.rounds, mode), where)
            note = f"{refined.measurements} measurements; {refined.stopped}"
            allocs[f"refined ({mode})"] = (refined.layers, (p + refined.seconds) / p, note)
        row = {"case": f"{options} @ {bits:g}", "anchor_s": p, "allocs": allocs}
        row["m"] = {k: held(v[0]) for k, v in allocs.items()}
        rows.append(row)
        _print_row(row)
    _print_table(rows, args.limit)
    return 0


def _delta(a, b) -> str:
    d, se = a.minus(b)
    star = "*" if abs(d) > 1.96 * se else " "
    return f"{d:+.4f} ± {1.96 * se:.4f}{star}"


def _print_row(r: dict) -> None:
    parts = [f"{k} {m.mean:.4f}" for k, m in r["m"].items()]
    notes = "; ".join(f"{k}: {v[2]}" for k, v in r["allocs"].items() if v[2])
    print(f"{r['case']}: {', '.join(parts)} ({notes})", flush=True)


def _print_table(rows: list[dict], limit: int) -> None:
    print()
    print(
        f"Held-out KLD (nats/token, {limit} × 512 evaluation tokens, ± 2 s.e. over windows); "
        "Δ against today's allocation, paired per window, ± 95 % (* excludes 0); compute "
        "as × today's profiling time (the anchor, seconds in the first column)"
    )
    names = [k for k in rows[0]["m"] if k != "today"]
    head = "| case | anchor s | today | " + " | ".join(f"{n} | Δ | ×" for n in names) + " |"
    print(head)
    print("|" + "---|" * (3 + 3 * len(names)))
    for r in rows:
        m, t = r["m"], r["m"]["today"]
        cells = [r["case"], f"{r['anchor_s']:.0f}", f"{t.mean:.4f} ± {2 * t.se:.4f}"]
        for n in names:
            cells += [f"{m[n].mean:.4f}", _delta(m[n], t), f"{r['allocs'][n][1]:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
