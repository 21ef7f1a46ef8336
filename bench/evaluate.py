"""Where a run's time goes, and the speed-up against an earlier version of mixviz.

Each version (this checkout, and ``--baseline-ref`` unpacked with ``git archive``) runs BF16
and uniform ``--option`` through the real path (local backend → worker → auto-round → lm-eval)
on the bundled tasks, in its own cache folder, one run at a time. Prints, per version and run:
wall seconds, the worker's own timings (load, KLD reference, quantize, lm-eval, KLD), the
items evaluated and seconds per lm-eval item, then the speed-up per item of this checkout over
the baseline. Goals (issue 14): a full bundled evaluation (all items, KLD included) ≤ 180 s per
run on 2 cores for BF16 and MXFP4; ≥ 2× faster per item than the baseline for MXFP4.

    .venv/bin/python bench/evaluate.py [--limit N] [--baseline-limit 60] [--baseline-ref a62cbaa]

Measure on a quiet machine: other processes on 2 cores change every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
from mixviz import Recipe
from mixviz.models.loading import resolve_model
from mixviz.runs.jobs.backends import LocalBackend, wait
from mixviz.runs.runspec import RunSpec
from mixviz.runs.evaluation import tasks as T

model, option, limit = sys.argv[1], sys.argv[2], (int(sys.argv[3]) or None)
names = tuple(getattr(T, "BUNDLED_TASKS"))
ref = resolve_model(model)
backend = LocalBackend()
out = {}
for name, recipe in (("BF16", None), (option, dict(Recipe.uniform(ref, option).layers))):
    spec = RunSpec(model=model, recipe=recipe, tasks=names, limit=limit, model_hash=ref.hash,
                   strategy="bf16" if recipe is None else f"pure {option}")
    t0 = time.perf_counter()
    run_id = backend.submit(spec)
    row = wait(backend.store, run_id, poll=0.5)
    wall = time.perf_counter() - t0
    if row.status != "done":
        sys.exit(f"{name} run {run_id} {row.status}: {row.error}")
    res = backend.store.results(run_id)
    result = json.load(open(T.cache_dir() / "runs" / run_id / "result.json"))
    items = sum(int(m.get("items") or m.get("sample_len") or 0) for t, m in res.items()
                if t != "mixviz_kld")
    if not items:  # older versions store no item count: the task files tell
        folder = T.tasks_dir()
        items = sum(min(limit or 10**9, len((folder / f"{t}.jsonl").read_text().splitlines()))
                    for t in names if (folder / f"{t}.jsonl").is_file())
    out[name] = {"wall": wall, "timings": result.get("timings", {}), "items": items,
                 "tokens": res.get("mixviz_kld", {}).get("tokens")}
    print(f"  {name}: {wall:.1f} s", file=sys.stderr)
print(json.dumps(out))
"""


def run_version(path: Path, model: str, option: str, limit: int | None) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(path),
        MIXVIZ_CACHE=tempfile.mkdtemp(prefix="mixviz-bench-"),
        MIXVIZ_MODELS=str(REPO / "cache" / "models"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, option, str(limit or 0)],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{path}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--option", default="MXFP4")
    ap.add_argument("--limit", type=int, help="items per task for this checkout (default: all)")
    ap.add_argument("--baseline-limit", type=int, default=60, help="items per task, baseline")
    ap.add_argument("--baseline-ref", default="a62cbaa", help="git ref of the baseline")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    results = {}
    if not args.skip_baseline:
        base = Path(tempfile.mkdtemp(prefix="mixviz-baseline-"))
        archive = subprocess.run(
            ["git", "archive", args.baseline_ref], cwd=REPO, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        print(f"baseline {args.baseline_ref} …", file=sys.stderr)
        results["baseline"] = run_version(base, args.model, args.option, args.baseline_limit)
    print("this checkout …", file=sys.stderr)
    results["now"] = run_version(REPO, args.model, args.option, args.limit)

    print(f"model {args.model}; {os.cpu_count()} cores; load (1 min): {os.getloadavg()[0]:.2f}")
    print(f"{'version':9} {'run':6} {'items':>5} {'wall s':>7} {'s/item':>7}  timings (s)")
    per_item = {}
    for version, runs in results.items():
        for name, r in runs.items():
            t = r["timings"]
            lm = t.get("evaluate", 0.0)
            per_item[version, name] = lm / max(r["items"], 1)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in t.items())
            tokens = f"; KLD over {int(r['tokens'])} tokens" if r.get("tokens") else ""
            print(
                f"{version:9} {name:6} {r['items']:5d} {r['wall']:7.1f} "
                f"{per_item[version, name]:7.3f}  {parts}{tokens}"
            )
    for name in ("BF16", args.option):
        wall = results["now"][name]["wall"]
        print(f"{name}: {wall:.0f} s per run ({wall / 180:.2f}× the 180 s goal)")
        if ("baseline", name) in per_item:
            ratio = per_item["baseline", name] / per_item["now", name]
            print(f"{name}: {ratio:.2f}× faster per lm-eval item than {args.baseline_ref}")


if __name__ == "__main__":
    main()
