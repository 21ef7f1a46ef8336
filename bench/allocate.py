"""Allocator speed and exactness: mixviz's solver vs auto-round's AutoScheme DP.

A Qwen3-32B-shaped synthetic profile (64 blocks × 7 linears with the real shapes, options
W2A16/W3A16/W4A16/W8A16, fixed seed, scale bits ignored as in the study) is solved at a few
budgets by both, and by HiGHS (``tests/milp.py``, the exact reference); ratios are printed.
Then a 50-budget frontier on that shape, and one solve on the real demo model's profile.

    .venv/bin/python bench/allocate.py [--dp-budgets 3.0,5.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# bench/profile.py shadows the stdlib's ``profile`` (imported via cProfile): drop this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests" / "support"))  # HiGHS

from milp import solve_milp  # noqa: E402

from mixviz.allocation.problem import Problem, budget_bits  # noqa: E402
from mixviz.allocation.strategies import allocate, frontier  # noqa: E402
from mixviz.sensitivity.profile import profile_model  # noqa: E402
from mixviz.sensitivity.synthetic import QWEN3_32B_SHAPES, synthetic_profile  # noqa: E402

OPTIONS = ["W2A16", "W3A16", "W4A16", "W8A16"]


def autoround_dp(problem: Problem, avg_bits: float) -> tuple[float, float]:
    """auto-round's ``choose_bits_per_layer_with_path`` on the same units and costs."""
    from auto_round.auto_scheme.delta_loss import choose_bits_per_layer_with_path

    layers = {
        u.names[0]: [
            (o, c, s, list(u.names)) for o, c, s in zip(u.options, u.cost, u.score, strict=True)
        ]
        for u in problem.units
    }
    budget = int(avg_bits * problem.total_numel + 1e-6)
    t0 = time.perf_counter()
    loss, _ = choose_bits_per_layer_with_path(layers, budget)
    return loss, time.perf_counter() - t0


def highs(problem: Problem, avg_bits: float) -> tuple[float, float]:
    """HiGHS (``tests/milp.py``) on the same units and integer budget: (loss, seconds)."""
    units = problem.units
    budget = budget_bits(problem, avg_bits)
    t0 = time.perf_counter()
    picked = solve_milp([list(u.cost) for u in units], [list(u.score) for u in units], budget)
    seconds = time.perf_counter() - t0
    return sum(u.score[j] for u, j in zip(units, picked, strict=True)), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dp-budgets", default="3.0,5.0")
    args = ap.parse_args()
    prof = synthetic_profile(QWEN3_32B_SHAPES, 64, OPTIONS, seed=0, model="qwen3-32b-shaped")
    problem = Problem.from_profile(prof, ignore_scale_bits=True)
    print(
        f"Qwen3-32B-shaped problem: {len(problem.units)} units × {len(OPTIONS)} options "
        f"({', '.join(OPTIONS)}), scale bits ignored"
    )
    print(
        f"{'budget':>6} {'ours ms':>8} {'DP s':>8} {'speed-up':>9} {'ours loss':>12} "
        f"{'DP loss':>12} {'ours/DP':>8} {'HiGHS s':>8} {'ours/HiGHS':>10}"
    )
    speedups = []
    for b in (float(x) for x in args.dp_budgets.split(",")):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            a = allocate(problem, b)
            times.append(time.perf_counter() - t0)
        ours_t = statistics.median(times)
        dp_loss, dp_t = autoround_dp(problem, b)
        highs_loss, highs_t = highs(problem, b)
        speedups.append(dp_t / ours_t)
        print(
            f"{b:6.2f} {ours_t * 1000:8.1f} {dp_t:8.1f} {dp_t / ours_t:8.0f}× "
            f"{a.predicted_loss:12.6g} {dp_loss:12.6g} {a.predicted_loss / dp_loss:8.6f} "
            f"{highs_t:8.2f} {a.predicted_loss / highs_loss:10.6f}"
        )

    t0 = time.perf_counter()
    f = frontier(problem, 50, ["optimal"])
    ft = time.perf_counter() - t0
    print(f"\n50-budget optimal frontier: {ft:.2f} s ({len(f['optimal'])} points); goal < 2 s")
    t0 = time.perf_counter()
    frontier(problem, 50)
    print(f"50-budget frontier, all strategies: {time.perf_counter() - t0:.2f} s")

    demo = profile_model("demo", options="MXFP4,MXFP8", metric="hessian", nsamples=4, seqlen=128)
    dp = Problem.from_profile(demo, ignore_scale_bits=True)
    times = []
    for b in (4.5, 5.0, 6.0):
        for _ in range(5):
            t0 = time.perf_counter()
            allocate(dp, b)
            times.append(time.perf_counter() - t0)
    print(
        f"demo model (210 layers, MXFP4/MXFP8): median solve {statistics.median(times) * 1000:.1f}"
        f" ms, max {max(times) * 1000:.1f} ms; goal < 20 ms"
    )
    print(
        f"\nspeed-up vs auto-round's DP: min {min(speedups):.0f}× (goal ≥ 100×); "
        "objective ratio ≤ 1 means ours is as good or better (exact)"
    )


if __name__ == "__main__":
    main()
