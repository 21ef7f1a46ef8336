"""Allocation in context: today's fisher allocation vs the in-context profile vs the refined one.

For each case (options, average bits) on the demo: profile with fisher (today's default, around
the unquantized model) and with ``--around`` the lowest option (the gradient at the all-low
model); allocate the exact optimum of each; refine today's with measured KLD on calibration text
(``mixviz refine``: 16 × 512 tokens, groups by module kind). Then measure all three on the
**evaluation** text — the ``mixviz_kld`` computation (top-64 + tail samples per token, per
512-token window), each model quantize-dequantized in memory with auto-round's RTN
quantizers — and print each KLD ± 2 s.e., the paired difference to today's allocation with its
95 % interval (* where it excludes 0), and the compute each costs as a multiple of today's
profiling time (the anchor, measured in the same run unless its profile was cached).

    .venv/bin/python bench/refine.py [--model demo] [--limit 32] [--rounds 3] [--only 5,6]

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
    ap.add_argument("--grouping", default="kind", choices=("kind", "block"))
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
    from mixviz.runs.kld import windows
    from mixviz.runs.measure import MeasureSettings, WindowKLD, refine_profile
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
        t1 = time.perf_counter()
        settings = RefineSettings(bits, args.rounds, args.grouping)
        refined = refine_profile(today, problem, settings, where)
        refine_s = refined.seconds or (time.perf_counter() - t1)
        allocs = {
            "today": allocate(problem, bits).layers,
            "in-context": allocate(Problem.from_profile(ctx), bits).layers,
            "refined": refined.layers,
        }
        m = {k: held(v) for k, v in allocs.items()}
        rows.append(
            {
                "case": f"{options} @ {bits:g}",
                "m": m,
                "profile_s": anchors.get(options, today.seconds),
                "around_s": ctx.seconds,
                "refine_s": refine_s,
                "rounds": len(refined.rounds) - 1,
                "measurements": refined.measurements,
                "stopped": refined.stopped,
            }
        )
        _print_row(rows[-1])
    _print_table(rows, args.limit)
    return 0


def _delta(a, b) -> str:
    d, se = a.minus(b)
    star = "*" if abs(d) > 1.96 * se else " "
    return f"{d:+.4f} ± {1.96 * se:.4f}{star}"


def _print_row(r: dict) -> None:
    m = r["m"]
    print(
        f"{r['case']}: today {m['today'].mean:.4f}, in-context {m['in-context'].mean:.4f}, "
        f"refined {m['refined'].mean:.4f} ({r['rounds']} rounds, {r['measurements']} "
        f"measurements; {r['stopped']})",
        flush=True,
    )


def _print_table(rows: list[dict], limit: int) -> None:
    print()
    print(
        f"Held-out KLD (nats/token, {limit} × 512 evaluation tokens, ± 2 s.e. over windows); "
        "Δ against today's allocation, paired per window, ± 95 % (* excludes 0); compute as "
        "× today's profiling time"
    )
    print(
        "| case | today | in-context | Δ in-context | refined | Δ refined | profile s | "
        "around × | refine × |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, p = r["m"], r["profile_s"]
        print(
            f"| {r['case']} | {m['today'].mean:.4f} ± {2 * m['today'].se:.4f} | "
            f"{m['in-context'].mean:.4f} ± {2 * m['in-context'].se:.4f} | "
            f"{_delta(m['in-context'], m['today'])} | "
            f"{m['refined'].mean:.4f} ± {2 * m['refined'].se:.4f} | "
            f"{_delta(m['refined'], m['today'])} | {p:.0f} | "
            f"{r['around_s'] / p:.2f} | {(p + r['refine_s']) / p:.2f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
