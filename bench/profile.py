"""Profiling speed and memory on the demo model: each metric vs AutoScheme's own scoring.

Every contender runs in its own process on the same calibration tokens (a .jsonl of decoded
windows of the bundled text, which auto-round and mixviz both read one record per sample), so
wall time and peak RSS are comparable. The timed span is the same for all: from a loaded model
to per-layer scores — AutoScheme's ``AutoRound(...)`` through ``post_init()`` (its calibration
loading, scoring and DP), mixviz's tokenisation of the same text plus the metric. Prints ratios
against AutoScheme (the anchor); Spearman's ρ of each contender's scores with ``kl`` (on a
stated subset of layers) and with AutoScheme's own scores; and what decides in the end — the
held-out perplexity (evaluation text, never seen in calibration) of the model quantized with
the allocation each contender's scores give at ``--budget`` average bits (same exact solver for
all; ``kl`` scores only a subset, so it has none).

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
    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.schemes import parse_options
    from mixviz.models.text import load_user_text, token_windows
    from mixviz.sensitivity.metrics import METRICS

    torch.manual_seed(0)
    ref = mixviz.resolve_model(args.model)
    model, tok = mixviz.load_model(ref)
    layers = block_linears(inventory(model))
    if args.worker == "autoscheme":
        from mixviz.sensitivity.autoscheme import import_autoscheme, run_autoscheme

        with tempfile.TemporaryDirectory() as cache:
            _, seconds = run_autoscheme(  # times AutoRound(...) through post_init()
                model, tok, OPTIONS, args.calib, args.nsamples, args.seqlen, cache, avg_bits=6.0
            )
            prof = import_autoscheme(cache, args.model)
        scores = {f"{r.layer}|{r.option}": r.score for r in prof.rows}
    else:
        import re

        nsamples = args.kl_nsamples if args.worker == "kl" else args.nsamples
        subset = [x for x in layers if re.search(KL_SUBSET, x.name)]
        metric = METRICS[args.worker]
        t0 = time.perf_counter()  # the same span as AutoScheme's: text → scores
        ids = token_windows(tok, load_user_text(args.calib), nsamples, args.seqlen)
        raw = metric.score(
            model,
            subset if args.worker == "kl" else layers,
            parse_options(OPTIONS),
            ids,
            lambda m: None,
            batch_size=metric.batch_size,
        )
        seconds = time.perf_counter() - t0
        scores = {f"{k[0]}|{k[1]}": v for k, v in raw.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ppl = None
    if all(f"{x.name}|{o}" in scores for x in layers for o in OPTIONS):
        ppl = heldout_ppl(model, tok, layers, allocation(layers, scores, args.budget), args)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss, "scores": scores, "ppl": ppl}))


def allocation(layers, scores: dict, budget: float) -> dict[str, str]:
    """The exact optimum of the scores at ``budget`` average bits (scale bits ignored)."""
    from mixviz.allocation.knapsack import solve_mckp
    from mixviz.models.schemes import get_scheme, layer_bits

    cost = [
        [layer_bits(get_scheme(o), x.in_features, x.out_features, ignore_scale_bits=True)
         for o in OPTIONS]
        for x in layers
    ]  # fmt: skip
    score = [[scores[f"{x.name}|{o}"] for o in OPTIONS] for x in layers]
    total = int(budget * sum(x.numel for x in layers))
    picked = solve_mckp(cost, score, total)
    return {x.name: OPTIONS[j] for x, j in zip(layers, picked, strict=True)}


def heldout_ppl(model, tok, layers, choice: dict[str, str], args) -> float:
    """Token perplexity on the evaluation text of ``model`` quantized (RTN, auto-round's
    quantizers, activations too for MX formats) as ``choice`` says."""
    import math

    import torch

    from mixviz.models.schemes import get_scheme
    from mixviz.models.text import evaluation_text, token_windows
    from mixviz.sensitivity.quantizers import LayerQuantizer

    mods = dict(model.named_modules())
    hooks = []
    with torch.no_grad():
        for x in layers:
            lin = mods[x.name]
            q = LayerQuantizer(lin, get_scheme(choice[x.name]))
            lin.weight.data = q.weight()
            if q.act is not None:
                hooks.append(
                    lin.register_forward_pre_hook(lambda m, a, qa=q.act: (qa(a[0]), *a[1:]))
                )
        ids = token_windows(tok, evaluation_text(), args.eval_nsamples, args.seqlen)
        nll = 0.0
        for batch in ids.split(4):
            nll += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    for h in hooks:
        h.remove()
    return math.exp(nll / len(ids))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--kl-nsamples", type=int, default=4)
    ap.add_argument("--budget", type=float, default=5.0, help="average bits of the allocations")
    ap.add_argument("--eval-nsamples", type=int, default=32, help="held-out windows for ppl")
    ap.add_argument("--metrics", default="hessian,fisher,delta_loss,kl")
    ap.add_argument("--worker")
    ap.add_argument("--calib")
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import mixviz
    from mixviz.models.text import calibration_text, token_windows

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
            "--budget",
            str(args.budget),
            "--eval-nsamples",
            str(args.eval_nsamples),
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
        f"timed span: loaded model → per-layer scores (AutoScheme: AutoRound() … post_init());"
        f" held-out ppl: {args.eval_nsamples}×{args.seqlen} evaluation tokens, allocation at "
        f"{args.budget:g} bits"
    )

    def rho(ref: dict | None, r: dict, opt: str) -> float:
        if ref is None:
            return float("nan")
        keys = [k for k in ref["scores"] if k.endswith("|" + opt) and k in r["scores"]]
        return spearmanr([ref["scores"][k] for k in keys], [r["scores"][k] for k in keys]).statistic

    head = ["contender", "seconds", "× AS time", "peak RSS MB", "× AS RSS"]
    head += [f"ρ kl {o}" for o in OPTIONS] + [f"ρ AS {o}" for o in OPTIONS] + ["held-out ppl"]
    print(" | ".join(head))
    kl = results.get("kl")
    for who, r in results.items():
        cells = [
            who,
            f"{r['seconds']:.1f}",
            f"{r['seconds'] / anchor['seconds']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_rss_mb'] / anchor['peak_rss_mb']:.2f}",
        ]
        cells += [f"{rho(kl, r, o):.3f}" for o in OPTIONS]
        cells += [f"{rho(anchor, r, o):.3f}" for o in OPTIONS]
        cells.append(f"{r['ppl']:.2f}" if r.get("ppl") else "—")
        print(" | ".join(cells))
    from mixviz.sensitivity.profile import DEFAULT_METRIC

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
