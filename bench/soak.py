"""Soak: N runs of ``tiny`` through the local backend with random cancels and worker kills,
then check the store: every run final, every finished run's results present, no orphans.

    .venv/bin/python bench/soak.py [--runs 12] [--seed 0] [--parallel 2]
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
    args = ap.parse_args()
    os.environ["MIXVIZ_CACHE"] = tempfile.mkdtemp(prefix="mixviz-soak-")
    os.environ["MIXVIZ_MAX_PARALLEL"] = str(args.parallel)

    from mixviz.backends import FINAL, LocalBackend, _alive
    from mixviz.runspec import RunSpec
    from mixviz.store import Store

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
    pids = set()
    while True:
        rows = [store.get(i) for i in ids]
        pids |= {r.pid for r in rows if r.pid}
        if all(r.status in FINAL for r in rows):
            break
        live = [r for r in rows if r.status not in FINAL]
        r = rng.choice(live)
        roll = rng.random()
        if roll < 0.08:
            backend.cancel(r.id)
            actions["cancel"] += 1
        elif roll < 0.16 and r.status == "running" and r.pid:
            try:
                os.killpg(r.pid, signal.SIGKILL)
                actions["kill -9"] += 1
            except ProcessLookupError:
                pass
        backend.kick()
        time.sleep(0.5)
    seconds = time.perf_counter() - t0
    rows = [store.get(i) for i in ids]
    status = Counter(r.status for r in rows)
    missing = [r.id for r in rows if r.status == "done" and not store.results(r.id)]
    time.sleep(1)
    orphans = [p for p in pids if _alive(p)]
    stray = subprocess.run(["pgrep", "-f", "mixviz.worker"], capture_output=True, text=True)
    print(
        f"{args.runs} runs of tiny, {args.parallel} at a time, {seconds:.0f} s; "
        f"actions: {dict(actions)}"
    )
    print(f"final states: {dict(status)}")
    print(
        f"finished runs without results: {len(missing)}; orphan worker processes: "
        f"{len(orphans)} (pgrep: {len(stray.stdout.split())})"
    )
    ok = not missing and not orphans and sum(status.values()) == args.runs
    print("store consistent" if ok else "INCONSISTENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
