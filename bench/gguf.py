"""mixviz's allocation against llama.cpp's own mixes at the same **file size**, the comparison a
llama.cpp user makes: one importance matrix on both sides, both files written by
``llama-quantize`` from llama.cpp's own F32 conversion, both measured by
``llama-perplexity --kl-divergence`` on held-out text against llama.cpp's BF16 GGUF.

For each rule (``Q3_K_M``, ``Q4_K_M``, ``Q5_K_M``, ``IQ4_XS``): ``llama-quantize --imatrix IM
F32.gguf RULE.gguf RULE`` writes the rule's file; its size in bytes is the budget of mixviz's
exact optimum (``allocate --size BYTES --target llamacpp``: every tensor outside the allocation
priced as the file stores it), from one fisher profile of the demo over the GGML options,
weighted by the same imatrix (``profile --imatrix auto``; the values are llama-imatrix's, checked
in tests/sensitivity/test_imatrix.py). mixviz's file is written by
``llama-quantize --tensor-type-file … --imatrix IM`` (:mod:`mixviz.runs.ship.gguf_writer`).

Figures: mean KLD ± se and top-1 ± se as llama-perplexity prints them, its 99th percentile of
per-token KLD (llama.cpp prints no interval for it), and the paired difference mixviz − rule
over the held-out chunks (each chunk's mean KLD, recovered from llama-perplexity's running
means printed to 5 decimals; Student-t, df = chunks − 1). Then, per GGML type in mixviz's file,
the error the profile's quantizer predicts (``Σ imatrix ⊙ (Q(W) − W)²`` of LayerQuantizer)
against the error of the tensors read back from the file: the proof the profile quantizes as
llama.cpp does (ratio 1.000000).

    .venv/bin/python bench/gguf.py [--model demo] [--limit 16]

Goal (issue 32): lower KLD than each rule at equal file size, interval excluding 0.
Measure on a quiet machine: other processes change the times, not the KLDs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

OPTIONS = "IQ3_S,IQ4_XS,Q3_K,Q4_0,Q4_K,Q5_0,Q5_K,Q6_K,Q8_0"
RULES = ("Q3_K_M", "Q4_K_M", "Q5_K_M", "IQ4_XS")


def kld_run(model: Path, base: Path, limit: int) -> dict:
    """llama-perplexity --kl-divergence of ``model`` against ``base`` on the held-out text,
    with each chunk's mean KLD (``chunks``)."""
    from mixviz.runs.ship import llamacpp

    return llamacpp.kl_divergence(model, base, llamacpp.evaluation_file(), chunks=limit)


def paired(a: list[float], b: list[float]) -> str:
    """``b − a`` over paired chunks: mean [95 % Student-t interval], ``*`` where it excludes 0."""
    import numpy as np
    from scipy import stats

    d = np.asarray(b) - np.asarray(a)
    if len(d) < 2:
        return "— (fewer than 2 chunks)"
    se = d.std(ddof=1) / math.sqrt(len(d))
    h = float(stats.t.ppf(0.975, len(d) - 1)) * se
    star = " *" if abs(d.mean()) > h else ""
    return f"{d.mean():+.4f} [{d.mean() - h:+.4f}, {d.mean() + h:+.4f}]{star} (df {len(d) - 1})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--limit", type=int, default=16, help="held-out chunks of 512 tokens")
    ap.add_argument("--out", help="folder for the GGUF files (default: a temporary one)")
    args = ap.parse_args()

    from mixviz.allocation.problem import Problem, size_budget
    from mixviz.allocation.strategies import allocate
    from mixviz.models.file_size import overhead
    from mixviz.models.loading import meta_model, resolve_model
    from mixviz.runs.ship import llamacpp
    from mixviz.runs.ship.gguf_writer import write_with_llamacpp
    from mixviz.sensitivity.imatrix import auto_path
    from mixviz.sensitivity.profile import profile_model
    from mixviz.sensitivity.spec import ProfileSpec

    ref = resolve_model(args.model)
    spec = ProfileSpec(options=OPTIONS, metric="fisher", imatrix="auto")
    prof = profile_model(ref, spec)
    imx = auto_path(ref.hash, spec)
    problem = Problem.from_profile(prof, target="llamacpp")
    meta = meta_model(ref)
    f32 = llamacpp.bf16_gguf(ref.path, ref.hash, outtype="f32")
    base = llamacpp.bf16_gguf(ref.path, ref.hash)
    root = Path(args.out or tempfile.mkdtemp(prefix="mixviz-gguf-"))
    root.mkdir(parents=True, exist_ok=True)
    over = overhead(meta, set(problem.layers), "gguf", dtype=prof.dtype, folder=ref.path,
                    gguf_file=f32)  # fmt: skip
    every = {x.name: "BF16" for x in prof.layers if x.block is not None}
    print(
        f"{args.model}: fisher profile over {OPTIONS} ({prof.calib.nsamples}×"
        f"{prof.calib.seqlen} calibration tokens) with its importance matrix ({imx.name}), the "
        f"same imatrix for both files; KLD over {args.limit} held-out chunks of 512 tokens by "
        f"llama-perplexity (second half of each chunk); CPU, {os.cpu_count()} cores\n"
    )
    print(
        "| rule | file bytes: rule → mixviz | rule: KLD | mixviz: KLD | Δ KLD paired by chunk "
        "[95 %] | p99 KLD rule → mixviz | top-1 rule → mixviz |\n|---|---|---|---|---|---|---|"
    )
    mixes = {}
    for rule in RULES:
        rule_file = llamacpp.quantize(f32, root / f"{rule}.gguf", rule, imatrix=imx)
        size = rule_file.stat().st_size
        budget = size_budget(problem, size, overhead_bytes=over.bytes)
        for _ in range(3):  # a predicted byte count off by a block: step under the file's size
            best = allocate(problem, budget, "optimal")
            out = root / f"{rule}-mixviz"
            out.mkdir(exist_ok=True)
            for old in out.glob("*.gguf"):
                old.unlink()
            mine = write_with_llamacpp(ref.path, ref.hash, {**every, **best.layers}, out,
                                       imatrix=str(imx), n_embd=meta.config.hidden_size,
                                       name=f"{rule}-mixviz")  # fmt: skip
            excess = mine.stat().st_size - size
            if excess <= 0:
                break
            budget -= 8 * excess / problem.total_numel
        mixes[rule] = (mine, best)
        r, m = kld_run(rule_file, base, args.limit), kld_run(mine, base, args.limit)
        print(
            f"| {rule} | {size:,} → {mine.stat().st_size:,} | {r['kld'][0]:.4f} ± "
            f"{r['kld'][1]:.4f} | {m['kld'][0]:.4f} ± {m['kld'][1]:.4f} | "
            f"{paired(r['chunks'], m['chunks'])} | {r['kld_p99'][0]:.4f} → {m['kld_p99'][0]:.4f}"
            f" | {100 * r['top1'][0]:.2f} ± {100 * r['top1'][1]:.2f} % → "
            f"{100 * m['top1'][0]:.2f} ± {100 * m['top1'][1]:.2f} % |",
            flush=True,
        )
    print("\nThe profile's predicted weight error against the file's, per GGML type (all rules' "
          "mixviz files; Σ imatrix ⊙ (Q(W) − W)² over the tensors of that type):\n")  # fmt: skip
    print("| type | tensors | predicted (profile's quantizer) | measured (read from the file) | "
          "ratio |\n|---|---|---|---|---|")  # fmt: skip
    for typ, (n, pred, meas) in sorted(_errors(ref, mixes, imx).items()):
        print(f"| {typ} | {n} | {pred:.6g} | {meas:.6g} | {meas / pred:.6f} |")
    return 0


def _errors(ref, mixes, imx) -> dict:
    """Per written type: tensors, Σ imatrix·(Q(W) − W)² by LayerQuantizer and from the file."""
    import gguf
    import numpy as np
    import torch

    from mixviz.models.loading import load_model
    from mixviz.models.schemes import get_scheme
    from mixviz.models.targets import gguf_tensor_name
    from mixviz.sensitivity.imatrix import for_layers, read
    from mixviz.sensitivity.quantizers import LayerQuantizer, importance

    model, _ = load_model(ref, dtype="float32", device="cpu")
    mods = dict(model.named_modules())
    im = read(imx)
    out: dict[str, list] = {}
    for path, best in mixes.values():
        tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
        weights = for_layers(im, list(best.layers))
        with importance(model, weights):
            for name, option in best.layers.items():
                s = get_scheme(option)
                if not s.ggml or "q_proj" in name or "k_proj" in name:  # rope-permuted rows
                    continue
                t = tensors[gguf_tensor_name(name) + ".weight"]
                w = mods[name].weight.detach()
                q = LayerQuantizer(mods[name], s).weight()
                f = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
                c = torch.from_numpy(weights[name]).double()
                pred = float((c * (q.double() - w.double()) ** 2).sum())
                meas = float((c * (torch.from_numpy(f).double() - w.double()) ** 2).sum())
                row = out.setdefault(t.tensor_type.name, [0, 0.0, 0.0])
                row[0], row[1], row[2] = row[0] + 1, row[1] + pred, row[2] + meas
    return {k: tuple(v) for k, v in out.items()}


if __name__ == "__main__":
    raise SystemExit(main())
