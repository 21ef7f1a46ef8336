"""How profiling cost grows with the model: seconds and peak memory of ``hessian`` and ``fisher``
on random-weight Llama-architecture models of growing size, beside a baseline version of the code.

Each (code, size, metric) runs in a fresh process on the same token ids (4×256 tokens of the
bundled calibration text, the demo's tokenizer); the model is built from a ``LlamaConfig`` with
random weights in ``--dtype`` (bfloat16 by default) on ``--device`` (the CPU by default). Peak
memory is the child's own ``ru_maxrss`` (``torch.cuda.max_memory_allocated`` on CUDA), and is
shown as a multiple of the model's weight bytes. The growth exponent is the least-squares slope
of log(seconds) and log(peak) against log(parameters). The baseline is ``git archive REF`` of
this repository (``--baseline-ref``, default a62cbaa: before issue 15) unpacked in a temporary
folder and put first on the child's ``PYTHONPATH``; ρ is Spearman's between its scores and the
current code's.

    .venv/bin/python bench/scale.py [--sizes 135m,500m,1.5b] [--metrics hessian,fisher]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/profile.py shadows the stdlib's ``profile`` (imported by transformers through cProfile):
# take this folder off the path. The child imports ``mixviz`` from its PYTHONPATH only.
sys.path[:] = [q for q in sys.path if Path(q or ".").resolve() != REPO / "bench"]
OPTIONS = "MXFP4,MXFP8"
# Llama shapes: (hidden, layers, intermediate, heads, kv heads); vocab 49152, tied embeddings.
SIZES = {
    "tiny": (64, 2, 128, 4, 2),  # for gpu_check.py --dry-run
    "135m": (576, 30, 1536, 9, 3),  # SmolLM2-135M
    "500m": (1024, 30, 4096, 16, 4),
    "1.5b": (2048, 28, 6144, 32, 8),
    "3b": (3072, 28, 8192, 24, 8),
    "7b": (4096, 32, 11008, 32, 32),  # Llama-2-7B
}
GOALS = {"time exponent": 1.15, "fisher peak": 2.0, "hessian peak": 1.3, "fixed GB": 1.5}


def llama_config(size: str):
    from transformers import LlamaConfig

    hidden, layers, inter, heads, kv = SIZES[size]
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    )


# ---------------------------------------------------------------- the child


def child(args) -> None:
    """One measurement; prints a JSON line ``{seconds, peak_gb, params, scores}`` last."""
    import torch
    from transformers import LlamaForCausalLM

    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.schemes import parse_options
    from mixviz.sensitivity.metrics import METRICS

    torch.manual_seed(0)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = dev.type == "cuda"
    with dev:
        model = LlamaForCausalLM._from_config(llama_config(args.size), dtype=dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.tensor(json.loads(Path(args.ids).read_text()), dtype=torch.long, device=dev)
    layers = block_linears(inventory(model))
    m = METRICS[args.metric]
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    scores = m.score(
        model, layers, parse_options(OPTIONS), ids, lambda msg: None, batch_size=m.batch_size
    )
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    doc = {
        "seconds": seconds,
        "peak_gb": peak,
        "params": params,
        "weight_gb": params * torch.finfo(dtype).bits / 8 / 1e9,
        "scores": [[f"{k[0]}|{k[1]}", v] for k, v in sorted(scores.items())],
    }
    print(json.dumps(doc))


# ---------------------------------------------------------------- the parent


def token_ids(nsamples: int, seqlen: int, path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    from mixviz.models.loading import resolve_model
    from mixviz.models.text import calibration_text, token_windows

    ref = resolve_model("demo")
    tok = AutoTokenizer.from_pretrained(ref.path)
    ids = token_windows(tok, calibration_text(), nsamples, seqlen)
    path.write_text(json.dumps(ids.tolist()))


def baseline_tree(ref: str, into: Path) -> Path:
    """``git archive ref mixviz`` unpacked under ``into``: the baseline's import root."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "mixviz"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(code: Path, size: str, metric: str, ids: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cmd = [sys.executable, __file__, "--child", "--size", size, "--metric", metric]
    cmd += ["--ids", str(ids), "--device", args.device, "--dtype", args.dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(code))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x: ``[1, 2, 4], [3, 6, 12] -> 1.0``."""
    if len(xs) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else None


def spearman(a: dict, b: dict) -> float | None:
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return None
    keys = sorted(set(a) & set(b))
    return float(spearmanr([a[k] for k in keys], [b[k] for k in keys]).statistic)


def table(results: dict, sizes: list[str], metrics: list[str], codes: list[str], unit: str) -> str:
    head = (
        f"| code | metric | size | params | seconds | peak {unit} GB | peak ÷ weights | ρ vs base |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for code in codes:
        for metric in metrics:
            for size in sizes:
                r = results.get((code, size, metric), {})
                if "error" in r or not r:
                    lines.append(
                        f"| {code} | {metric} | {size} | | failed: {r.get('error', '')} |||"
                    )
                    continue
                rho, ratio = r.get("rho"), r["peak_gb"] / r["weight_gb"]
                lines.append(
                    f"| {code} | {metric} | {size} | {r['params'] / 1e9:.3f} B | "
                    f"{r['seconds']:.1f} | {r['peak_gb']:.2f} | {ratio:.2f}× | "
                    + (f"{rho:.4f} |" if rho is not None else "|")
                )
    return "\n".join(lines)


def exponents(results: dict, sizes: list[str], metrics: list[str], codes: list[str]) -> str:
    lines = []
    for code in codes:
        for metric in metrics:
            ok = [
                results[(code, s, metric)]
                for s in sizes
                if "seconds" in results.get((code, s, metric), {})
            ]
            xs = [r["params"] for r in ok]
            et = exponent(xs, [r["seconds"] for r in ok])
            em = exponent(xs, [r["peak_gb"] for r in ok])
            fmt = lambda e: "n/a" if e is None else f"{e:.2f}"  # noqa: E731
            lines.append(f"{code:8} {metric:8} time exponent {fmt(et)}  memory exponent {fmt(em)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="135m,500m,1.5b", help=f"from {', '.join(SIZES)}")
    p.add_argument("--metrics", default="hessian,fisher")
    p.add_argument("--baseline-ref", default="a62cbaa", help="git ref of the baseline code")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--nsamples", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--metric", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    sizes, metrics = args.sizes.split(","), args.metrics.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown sizes {unknown}: choose from {', '.join(SIZES)}")
    with tempfile.TemporaryDirectory(prefix="mixviz-scale-") as tmp:
        ids = Path(tmp) / "ids.json"
        token_ids(args.nsamples, args.seqlen, ids)
        codes = {"current": REPO}
        if not args.no_baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            codes[f"{args.baseline_ref}"] = baseline_tree(args.baseline_ref, base)
        results: dict = {}
        for size in sizes:
            for metric in metrics:
                for name, code in codes.items():
                    r = measure(code, size, metric, ids, args)
                    results[(name, size, metric)] = r
                    msg = r.get("error") or f"{r['seconds']:.1f} s, peak {r['peak_gb']:.2f} GB"
                    print(f"# {name} {size} {metric}: {msg}", file=sys.stderr, flush=True)
                cur = results[("current", size, metric)]
                for name in list(codes)[1:]:
                    other = results[(name, size, metric)]
                    if "scores" in cur and "scores" in other:
                        cur["rho"] = spearman(dict(cur["scores"]), dict(other["scores"]))
    unit = "GPU" if args.device.startswith("cuda") else "RSS"
    print(f"{args.nsamples}×{args.seqlen} tokens, {OPTIONS}, {args.dtype} on {args.device}\n")
    print(table(results, sizes, metrics, list(codes), unit))
    print()
    print(exponents(results, sizes, metrics, list(codes)))
    print(
        f"\ngoals: time exponent ≤ {GOALS['time exponent']}; fisher peak ≤ "
        f"{GOALS['fisher peak']}× weights + {GOALS['fixed GB']} GB; hessian peak ≤ "
        f"{GOALS['hessian peak']}× weights (+ the same fixed runtime)"
    )
    for metric in metrics:
        ratio = GOALS.get(f"{metric} peak")
        for size in sizes:
            r = results.get(("current", size, metric), {})
            if ratio and "peak_gb" in r:
                limit = ratio * r["weight_gb"] + GOALS["fixed GB"]
                verdict = "met" if r["peak_gb"] <= limit else "NOT met"
                print(f"  {metric} {size}: peak {r['peak_gb']:.2f} GB vs {limit:.2f} GB: {verdict}")


if __name__ == "__main__":
    main()
