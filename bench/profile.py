"""Profiling speed and memory on the demo model: each metric vs AutoScheme's own scoring.

Every contender runs in its own process on the same calibration tokens (a .jsonl of decoded
windows of the bundled text, which auto-round and mixviz both read one record per sample), so
wall time and peak RSS are comparable. Prints ratios against AutoScheme (the anchor) and the
Spearman correlation of each metric with ``kl`` on a stated subset of layers.

    .venv/bin/python bench/profile.py [--model demo] [--nsamples 16] [--seqlen 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the stdlib's ``profile`` (which transformers imports through
# cProfile): take its folder off the path so that import finds the real one.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

OPTIONS = ["MXFP4", "MXFP8"]
KL_SUBSET = r"layers\.(0|10|20|29)\."


def worker(args) -> None:
    """One contender: print {seconds, peak_rss_mb, scores} as JSON on the last line."""
    import torch

    import mixviz
    from mixviz.inventory import block_linears
    from mixviz.metrics import METRICS
    from mixviz.schemes import parse_options
    from mixviz.text import load_user_text, token_windows

    torch.manual_seed(0)
    ref = mixviz.resolve_model(args.model)
    model, tok = mixviz.load_model(ref)
    layers = block_linears(mixviz.inventory(model))
    if args.worker == "autoscheme":
        from mixviz.autoscheme import import_autoscheme, run_autoscheme

        with tempfile.TemporaryDirectory() as cache:
            _, seconds = run_autoscheme(
                model, tok, OPTIONS, args.calib, args.nsamples, args.seqlen, cache, avg_bits=6.0
            )
            prof = import_autoscheme(cache, args.model)
        scores = {f"{r.layer}|{r.option}": r.score for r in prof.rows}
    else:
        import re

        nsamples = args.kl_nsamples if args.worker == "kl" else args.nsamples
        if args.worker == "kl":
            layers = [x for x in layers if re.search(KL_SUBSET, x.name)]
        ids = token_windows(tok, load_user_text(args.calib), nsamples, args.seqlen)
        batch = {"delta_loss": 8, "fisher": 1, "hessian": 4, "kl": 4}[args.worker]
        t0 = time.perf_counter()
        raw = METRICS[args.worker](
            model, layers, parse_options(OPTIONS), ids, lambda m: None, batch_size=batch
        )
        seconds = time.perf_counter() - t0
        scores = {f"{k[0]}|{k[1]}": v for k, v in raw.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss, "scores": scores}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--kl-nsamples", type=int, default=4)
    ap.add_argument("--metrics", default="hessian,fisher,delta_loss,kl")
    ap.add_argument("--worker")
    ap.add_argument("--calib")
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import mixviz
    from mixviz.text import calibration_text, token_windows

    ref = mixviz.resolve_model(args.model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref.path)
    windows = token_windows(tok, calibration_text(), args.nsamples, args.seqlen + 16)
    tmp = Path(tempfile.mkdtemp())
    calib = tmp / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": tok.decode(w)}) + "\n" for w in windows))

    results = {}
    for who in ["autoscheme", *args.metrics.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            who,
            "--model",
            args.model,
            "--calib",
            str(calib),
            "--nsamples",
            str(args.nsamples),
            "--seqlen",
            str(args.seqlen),
            "--kl-nsamples",
            str(args.kl_nsamples),
        ]
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{who} failed:\n{proc.stderr[-3000:]}")
        results[who] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  ran {who}: {results[who]['seconds']:.1f} s", file=sys.stderr)

    from scipy.stats import spearmanr

    anchor = results["autoscheme"]
    print(
        f"\nmodel {args.model}, options {','.join(OPTIONS)}, {args.nsamples}×{args.seqlen} "
        f"tokens (kl: {args.kl_nsamples}×{args.seqlen}, layers matching {KL_SUBSET})"
    )
    print(
        f"{'contender':12} {'seconds':>8} {'× AS time':>10} {'peak RSS MB':>12} {'× AS RSS':>9}"
        f" {'ρ vs kl ' + OPTIONS[0]:>14} {'ρ vs kl ' + OPTIONS[1]:>14}"
    )
    kl = results.get("kl")
    for who, r in results.items():
        rhos = []
        for opt in OPTIONS:
            if kl is None:
                rhos.append(float("nan"))
                continue
            keys = [k for k in kl["scores"] if k.endswith("|" + opt)]
            rhos.append(
                spearmanr([kl["scores"][k] for k in keys], [r["scores"][k] for k in keys]).statistic
            )
        print(
            f"{who:12} {r['seconds']:8.1f} {r['seconds'] / anchor['seconds']:10.2f} "
            f"{r['peak_rss_mb']:12.0f} {r['peak_rss_mb'] / anchor['peak_rss_mb']:9.2f} "
            f"{rhos[0]:14.3f} {rhos[1]:14.3f}"
        )
    from mixviz.profile import DEFAULT_METRIC

    d = results.get(DEFAULT_METRIC)
    if d:
        t, m = d["seconds"] / anchor["seconds"], d["peak_rss_mb"] / anchor["peak_rss_mb"]
        verdict = "met" if t <= 0.5 and m <= 1.0 else "NOT met"
        print(
            f"\ngoal: the default metric ({DEFAULT_METRIC}) ≤ 0.5× AutoScheme's time at ≤ 1.0×"
            f" its peak RSS: {t:.2f}× time, {m:.2f}× RSS — {verdict}"
        )


if __name__ == "__main__":
    main()
