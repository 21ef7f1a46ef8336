"""Score held-out windows with vLLM — a script run by the vLLM venv's python, not imported.

    python vllm_score.py IN.npz OUT.npz MODEL_DIR [DTYPE]

``IN.npz`` holds ``tokens`` ``[W, S]`` and the reference's token ids per scored position,
``ids`` ``[W, S-1, k]`` and ``tail_ids`` ``[W, S-1, m]`` (:mod:`~mixviz.runs.evaluation.kld`). vLLM
loads
``MODEL_DIR`` as a user serves it (``LLM(model=…, dtype=DTYPE, enforce_eager=True)``, DTYPE
``bfloat16`` unless given) and
scores every window with prompt logprobs (``SamplingParams(prompt_logprobs=1, max_tokens=1)``).
The log-probabilities of the reference's tokens are read from the logits vLLM computes for
those prompt logprobs (a forward hook on the model's ``logits_processor``, in-process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``); vLLM's own prompt logprob of each true token must agree
with them, or the script fails. ``OUT.npz``: ``lq_top``, ``lq_tail`` (Q at the reference's
ids), ``argmax``, ``nll`` (vLLM's prompt logprobs, negated), ``hook_gap`` and the seconds the
load and the scoring took. A refusal to load exits non-zero with vLLM's own error last on
stderr. Stays standalone: it imports vLLM, torch and numpy only (its own venv has no mixviz).

With ``MIXVIZ_VLLM_CPU_ISA=avx2`` on a CPU that has AVX-512, vLLM is made to take the path it
takes on a CPU without (its ``_C_AVX2`` kernels, its AVX2 attention): torch's AVX-512 tests
answer False before vLLM is imported, so ``vllm-cpu-avx2``'s rules are proven on any x86 CPU.
"""

from __future__ import annotations

import os
import sys
import time


def as_avx2() -> None:
    """Make vLLM pick the kernels of a CPU without AVX-512 (its ``import_kernels`` and
    attention ask torch)."""
    import torch

    torch.cpu._is_avx512_supported = lambda: False
    torch.cpu._is_avx512_bf16_supported = lambda: False


def main(argv: list[str]) -> int:
    import numpy as np
    import torch

    if os.environ.get("MIXVIZ_VLLM_CPU_ISA") == "avx2":
        as_avx2()
    from vllm import LLM, SamplingParams

    src, dst, model_dir, dtype = [*argv, "bfloat16"][:4]
    data = np.load(src)
    tokens, ids, tail_ids = data["tokens"], data["ids"], data["tail_ids"]
    seqlen = tokens.shape[1]
    t0 = time.perf_counter()
    llm = LLM(
        model=model_dir,
        dtype=dtype,
        enforce_eager=True,
        max_model_len=max(512, seqlen + 16),
        max_num_batched_tokens=max(2048, seqlen + 16),
        max_num_seqs=1,
        seed=0,
    )
    load_s = time.perf_counter() - t0
    captured: list = []

    def hook(module, args, output):
        if output is not None and output.dim() == 2 and output.shape[0] > 1:
            captured.append(output.detach().float().log_softmax(-1).cpu())

    llm.apply_model(lambda model: model.logits_processor.register_forward_hook(hook))
    params = SamplingParams(prompt_logprobs=1, max_tokens=1, temperature=0.0)
    out = {k: [] for k in ("lq_top", "lq_tail", "argmax", "nll", "hook_gap")}
    t1 = time.perf_counter()
    for w, window in enumerate(tokens):
        captured.clear()
        (res,) = llm.generate({"prompt_token_ids": window.tolist()}, params, use_tqdm=False)
        logq = torch.cat(captured)[: seqlen - 1]
        if logq.shape[0] != seqlen - 1:
            raise SystemExit(f"window {w}: captured {logq.shape[0]} rows, want {seqlen - 1}")
        true = torch.from_numpy(window[1:].astype(np.int64))
        theirs = torch.tensor(
            [lp[int(t)].logprob for lp, t in zip(res.prompt_logprobs[1:], window[1:], strict=True)]
        )
        ours = logq.gather(-1, true[:, None])[:, 0]
        out["hook_gap"].append(float((ours - theirs).abs().max()))
        out["lq_top"].append(logq.gather(-1, torch.from_numpy(ids[w].astype(np.int64))).numpy())
        tail = torch.from_numpy(tail_ids[w].astype(np.int64))
        out["lq_tail"].append(logq.gather(-1, tail).numpy())
        out["argmax"].append(logq.argmax(-1).numpy())
        out["nll"].append(-theirs.numpy())
    score_s = time.perf_counter() - t1
    arrays = {k: np.stack(v) if k != "hook_gap" else np.array(v) for k, v in out.items()}
    np.savez(dst, **arrays, load_s=load_s, score_s=score_s)
    return 0


if __name__ == "__main__":  # vLLM spawns its engine: the guard keeps it from re-running this
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ.get("MIXVIZ_VLLM_CPU_ISA") == "avx2":  # as_avx2 holds in this process only
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    sys.exit(main(sys.argv[1:]))
