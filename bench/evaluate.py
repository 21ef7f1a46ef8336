"""Run wall time and task separation on the demo model: BF16 vs uniform MXFP4.

Both runs go through the real path (local backend → worker → auto-round → lm-eval) on the
bundled offline tasks. Prints the wall time of each run (goal < 3 min on 2 cores) and each
task's figures side by side: the tasks must separate the two clearly.

    .venv/bin/python bench/evaluate.py [--limit 40] [--model demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# bench/profile.py shadows the stdlib's ``profile`` (imported via cProfile): drop this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mixviz.cli import uniform_recipe  # noqa: E402
from mixviz.models.loading import resolve_model  # noqa: E402
from mixviz.runs.backends import LocalBackend, wait  # noqa: E402
from mixviz.runs.runspec import RunSpec  # noqa: E402
from mixviz.runs.tasks import BUNDLED_TASKS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--option", default="MXFP4")
    args = ap.parse_args()
    ref = resolve_model(args.model)
    backend = LocalBackend()
    specs = {
        "bf16": RunSpec(
            model=args.model,
            recipe=None,
            tasks=BUNDLED_TASKS,
            limit=args.limit,
            model_hash=ref.hash,
            strategy="bf16",
        ),
        args.option: RunSpec(
            model=args.model,
            recipe=uniform_recipe(ref, args.option),
            tasks=BUNDLED_TASKS,
            limit=args.limit,
            model_hash=ref.hash,
            strategy=f"pure {args.option}",
        ),
    }
    rows = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        run_id = backend.submit(spec)
        row = wait(backend.store, run_id, poll=0.5)
        wall = time.perf_counter() - t0
        if row.status != "done":
            sys.exit(f"{name} run {run_id} {row.status}: {row.error}")
        rows[name] = (wall, backend.store.results(run_id))
        print(f"  {name}: {wall:.1f} s", file=sys.stderr)

    print(f"model {args.model}, bundled tasks, limit {args.limit} items per task")
    for name, (wall, _) in rows.items():
        print(f"{name:8} wall {wall:6.1f} s  ({wall / 180:.2f}× the 3-minute goal)")
    a, b = list(rows)
    print(f"\n{'task':18} {'metric':16} {a:>10} {b:>10} {'change':>9}")
    for task in BUNDLED_TASKS:
        for metric, va in rows[a][1].get(task, {}).items():
            vb = rows[b][1].get(task, {}).get(metric)
            if vb is None:
                continue
            change = (vb - va) / va if va else float("nan")
            print(f"{task:18} {metric:16} {va:10.4f} {vb:10.4f} {change:+9.1%}")


if __name__ == "__main__":
    main()
