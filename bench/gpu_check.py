"""The device check of issue 15, for a CUDA machine: one script, each step timed and bounded.

1. Profile the demo model on the GPU and on the CPU (fisher and hessian, ``--dtype`` on both):
   Spearman's ρ between the devices' scores, goal ≥ 0.99.
2. One quantize-and-evaluate run on the GPU (``mixviz run demo --uniform MXFP8 --device cuda``,
   ``--limit`` items), through the real worker.
3. The scale table of ``bench/scale.py`` on the GPU, up to ≈7B shapes in bfloat16 (seconds and
   ``torch.cuda.max_memory_allocated``), beside the baseline code.

``--dry-run`` prints the plan, then runs the same steps with the tiny model on the CPU only
(minutes → seconds), so the script itself is tested where there is no GPU.

    .venv/bin/python bench/gpu_check.py [--dry-run] [--limit 40] [--sizes 135m,1.5b,7b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [q for q in sys.path if Path(q or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))


def step(title: str):
    print(f"\n## {title}", flush=True)
    return time.perf_counter()


def cross_device(model: str, gpu: str, dtype: str, nsamples: int, seqlen: int) -> bool:
    """Profiles on ``gpu`` and on the CPU; True when every metric's ρ ≥ 0.99."""
    from scipy.stats import spearmanr

    from mixviz.models.device import CPU
    from mixviz.sensitivity.profile import profile_model

    ok = True
    for metric in ("fisher", "hessian"):
        kw = dict(metric=metric, nsamples=nsamples, seqlen=seqlen, dtype=dtype, use_cache=False)
        a = profile_model(model, device=gpu, **kw)
        b = profile_model(model, device=CPU, **kw)
        keys = [(r.layer, r.option) for r in a.rows]
        rho = spearmanr([a.score(*k) for k in keys], [b.score(*k) for k in keys]).statistic
        ok = ok and bool(rho >= 0.99)
        print(
            f"{metric:8} {gpu} {a.seconds:7.1f} s | cpu {b.seconds:7.1f} s | "
            f"{a.dtype} | ρ {rho:.4f} (goal ≥ 0.99)",
            flush=True,
        )
    return ok


def one_run(model: str, device: str, dtype: str, limit: int, timeout: int) -> bool:
    """``mixviz run MODEL --uniform MXFP8 --wait --json`` on ``device``; True when done."""
    cmd = [sys.executable, "-m", "mixviz", "run", model, "--uniform", "MXFP8"]
    cmd += ["--tasks", "mixviz_lastword", "--limit", str(limit), "--device", device]
    cmd += ["--dtype", dtype, "--wait", "--json", "--timeout", str(timeout)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    if proc.returncode != 0:
        print("run failed:", proc.stderr.strip()[-800:], flush=True)
        return False
    doc = json.loads(proc.stdout)
    print(json.dumps({k: doc.get(k) for k in ("status", "avg_bits", "results", "timings")}))
    return doc.get("status") == "done"


def scale(device: str, sizes: str, baseline: bool, dtype: str) -> bool:
    cmd = [sys.executable, str(REPO / "bench" / "scale.py"), "--device", device, "--sizes", sizes]
    cmd += ["--dtype", dtype]
    cmd += [] if baseline else ["--no-baseline"]
    proc = subprocess.run(cmd, text=True, cwd=str(REPO))
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny model, CPU only")
    p.add_argument("--limit", type=int, default=40, help="items of the evaluation run")
    p.add_argument("--sizes", default="135m,500m,1.5b,3b,7b", help="bench/scale.py sizes")
    p.add_argument("--dtype", default="float32", help="of the cross-device profiles")
    p.add_argument("--no-baseline", action="store_true", help="scale table without baseline")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.dry_run:
        from mixviz.models.device import CPU

        model, device, nsamples, seqlen, limit, sizes = "tiny", CPU, 2, 32, 2, "tiny"
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: run with --dry-run", file=sys.stderr)
            return 2
        model, device, nsamples, seqlen, limit, sizes = (
            "demo",
            "cuda",
            16,
            256,
            args.limit,
            args.sizes,
        )
        print(torch.cuda.get_device_name(0), f"torch {torch.__version__}")
    print(
        f"plan: (1) {model} fisher+hessian {nsamples}×{seqlen} on {device} and cpu in "
        f"{args.dtype}, ρ ≥ 0.99; (2) one run {model} uniform MXFP8, {limit} items, on "
        f"{device}; (3) bench/scale.py --sizes {sizes} --device {device}"
    )
    results = {}
    t = step("1. the same profile on two devices")
    results["profiles"] = cross_device(model, device, args.dtype, nsamples, seqlen)
    print(f"({time.perf_counter() - t:.1f} s)")
    t = step("2. quantize and evaluate")
    results["run"] = one_run(model, device, "auto" if not args.dry_run else "float32", limit, 540)
    print(f"({time.perf_counter() - t:.1f} s)")
    t = step("3. scale")
    # bfloat16 matmuls have no fast kernel on an AVX2-only CPU: the dry run scales in float32
    scale_dtype = "float32" if args.dry_run else "bfloat16"
    results["scale"] = scale(device, sizes, not (args.no_baseline or args.dry_run), scale_dtype)
    print(f"({time.perf_counter() - t:.1f} s)")
    print("\nsummary:", json.dumps(results))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
