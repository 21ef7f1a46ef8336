"""Soak: N runs of ``tiny`` through the local backend with random cancels and worker kills,
then check the store: every run final, every finished run's results present, no orphans.

The soak never starts runs itself: after a ``kill -9`` the queue must move on through
``reconcile()`` alone (as ``run --wait`` and ``mixviz runs`` call it). It stops at
``--time-limit`` seconds (a failure). Counts are of what took effect: a cancel that found the
run already final is counted apart, and every killed run must end ``lost``.

    .venv/bin/python bench/soak.py [--runs 12] [--seed 0] [--parallel 2] [--time-limit 600]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# bench/profile.py shadows the stdlib's ``profile`` (imported via cProfile): drop this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=600.0, help="seconds; then a failure")
    args = ap.parse_args()
    os.environ["MIXVIZ_CACHE"] = tempfile.mkdtemp(prefix="mixviz-soak-")
    os.environ["MIXVIZ_MAX_PARALLEL"] = str(args.parallel)

    from mixviz.runs.jobs.backends import FINAL, LocalBackend, alive
    from mixviz.runs.runspec import RunSpec
    from mixviz.runs.store import Store

    rng = random.Random(args.seed)
    store = Store()
    backend = LocalBackend(store)
    t0 = time.perf_counter()
    ids = [
        backend.submit(
            RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=2 + i % 3, seed=i)
        )
        for i in range(args.runs)
    ]
    actions = Counter()
    pids, cancelled, killed = set(), set(), set()
    timed_out = False
    while True:
        rows = [store.get(i) for i in ids]
        pids |= {r.pid for r in rows if r.pid}
        if all(r.status in FINAL for r in rows):
            break
        if time.perf_counter() - t0 > args.time_limit:
            timed_out = True
            break
        live = [r for r in rows if r.status not in FINAL and r.id not in killed]
        r = rng.choice(live) if live else None
        roll = rng.random()
        if r is not None and roll < 0.08:
            after = backend.cancel(r.id)
            if after.status == "cancelled":
                cancelled.add(r.id)
                actions["cancel (took effect)"] += 1
            else:
                actions[f"cancel (run already {after.status})"] += 1
        elif r is not None and roll < 0.16 and r.status == "running" and r.pid:
            try:
                os.killpg(r.pid, signal.SIGKILL)
                killed.add(r.id)
                actions["kill -9"] += 1
            except ProcessLookupError:
                pass
        backend.reconcile()  # what a waiting CLI does; never kick() by hand
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    rows = [store.get(i) for i in ids]
    status = Counter(r.status for r in rows)
    missing = [r.id for r in rows if r.status == "done" and not store.results(r.id)]
    time.sleep(15)  # a worker takes a few seconds to exit after its final state
    orphans = [p for p in pids if alive(p)]
    stray = subprocess.run(
        ["pgrep", "-f", "mixviz.runs.jobs.worker"], capture_output=True, text=True
    )
    print(
        f"{args.runs} runs of tiny, {args.parallel} at a time, {seconds:.0f} s; "
        f"actions: {dict(actions)}"
    )
    print(f"final states: {dict(status)}")
    print(
        f"finished runs without results: {len(missing)}; orphan worker processes: "
        f"{len(orphans)} (pgrep: {len(stray.stdout.split())})"
    )
    wrong_cancel = [i for i in cancelled if store.get(i).status != "cancelled"]
    wrong_kill = [i for i in killed if store.get(i).status not in ("lost", "cancelled")]
    late = f"; TIMED OUT after {args.time_limit:g} s" if timed_out else ""
    print(
        f"cancelled runs not ending cancelled: {len(wrong_cancel)}; killed runs not ending "
        f"lost: {len(wrong_kill)}{late}"
    )
    ok = (
        not timed_out
        and not missing
        and not orphans
        and not wrong_cancel
        and not wrong_kill
        and status["done"] + status["cancelled"] + status["lost"] + status["failed"] == args.runs
    )
    print("store consistent" if ok else "INCONSISTENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
