"""KL divergence to the unquantized model over the held-out text — the ``mixviz_kld`` task.

As llama.cpp's ``perplexity --kl-divergence``: the evaluation text is cut into windows of
``SEQLEN`` tokens; at every position but the first the unquantized model's next-token
distribution P and the quantized model's Q give ``KLD(P ‖ Q)``, whether the top-1 token is the
same, and both models' negative log-likelihood of the true token.

**Exact per-token values.** The reference also keeps what the unquantized model's output head
saw at every scored position (its input vector) and a copy of the head itself, so P's full
distribution is recomputed, :data:`CHUNK` positions at a time (memory stays bounded: ``CHUNK ×
vocabulary`` floats), against Q's: every per-token KLD is exact over the full vocabulary, and
so are ``kld_median`` and ``kld_p99``. That costs one extra head matmul per window and
``tokens × hidden`` floats plus the head in the cache (≈ 80 + 113 MB for the demo). A model
whose logits are not a plain linear head of that input (a soft cap, a logit scale) is checked
on the first window and falls back to the estimate below; its per-token values are then noisy,
so no percentile is reported for it (``exact`` is False). refine's yardstick
(:mod:`mixviz.runs.evaluation.measure`) uses only means and keeps the cheaper estimate.

**The estimate.** P is kept as its ``TOPK`` largest log-probabilities (and their
token ids) plus ``TAIL_SAMPLES`` tokens drawn (seeded, with replacement) from P's renormalised
tail — the tokens outside the top-k — with their log-probabilities; Q is full at evaluation
time. Per position

    KLD ≈ Σ_{i∈K} p_i log(p_i/q_i) + p_T · mean_j log(p_j/q_j),   j ~ P restricted to the tail

is exact on the top-k and an unbiased Monte Carlo estimate of the tail's share
``Σ_{i∉K} p_i log(p_i/q_i)``, so the mean over tokens is unbiased. (Merging the tail into one
bin instead, the usual top-k shortcut, is a lower bound that on the demo model quantized to
MXFP4 read 12 % low with k = 64 and 5 % low with k = 256.) ``tests/runs/test_kld.py`` checks it
against the exact value on ``tiny``: equal when K is the whole vocabulary, and the mean within
a few percent with k = 16. The reference costs ``tokens × (TOPK + TAIL_SAMPLES) × 8`` bytes
(≈ 26 MB for the demo's 34 K tokens instead of 6.8 GB of full fp32 distributions), is computed
once per (model, its hash, dtype, text, seqlen, k, samples, windows, library versions) and
cached under ``cache/kld/``.

**Uncertainty.** Neighbouring tokens are not independent, so each standard error is that of
the mean over windows (the windows' means, ``ddof=1``), not the per-token binomial one —
wider, and honest about the correlation; its interval is Student-t's with ``df = windows − 1``
(the ``df`` row). ``tokens`` is how many positions each number rests on.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_bytes, cache_dir
from mixviz.runs.evaluation.tasks import KLD_TASK  # noqa: F401 — the run task this module computes
from mixviz.runs.runspec import SCORE_FROM, check_score_from  # noqa: F401 — re-exported

SEQLEN = 512
TOPK = 64
TAIL_SAMPLES = 32
CHUNK = 64  # positions whose full distributions are held at once for the exact KLD
_VERSION = 3  # 3: the head's input for exact per-token KLD; 2: Monte Carlo tail samples


@dataclass(frozen=True)
class Reference:
    """The unquantized model's top-k next-token log-probs over the evaluation windows.

    ``tokens`` ``[W, SEQLEN]``; ``logp``/``ids`` ``[W, SEQLEN-1, k]`` (descending);
    ``tail_logp``/``tail_ids`` ``[W, SEQLEN-1, m]``: tokens drawn from the tail;
    ``nll`` ``[W, SEQLEN-1]``: its negative log-likelihood of each true next token;
    ``hidden`` ``[W, SEQLEN-1, H]`` and ``head`` (``[V, H]``, ``head_bias``): the output
    head's input at each position and the head, for exact KLD (None where it cannot be).
    """

    key: str
    tokens: torch.Tensor
    logp: torch.Tensor
    ids: torch.Tensor
    tail_logp: torch.Tensor
    tail_ids: torch.Tensor
    nll: torch.Tensor
    hidden: torch.Tensor | None = None
    head: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None

    def arrays(self) -> dict[str, torch.Tensor]:
        keys = ("tokens", "logp", "ids", "tail_logp", "tail_ids", "nll", "hidden", "head")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        return out | ({} if self.head_bias is None else {"head_bias": self.head_bias})


@dataclass(frozen=True)
class TokenScores:
    """Per scored position ``[W, positions]``: KLD to the reference, same top-1, the model's NLL;
    ``exact``: every KLD over the full vocabulary (else the unbiased, noisy estimate);
    ``positions``: which of each window's positions these are (``SCORE_FROM``)."""

    kld: np.ndarray
    top1: np.ndarray
    nll: np.ndarray
    nll_ref: np.ndarray
    exact: bool = False
    positions: str = "all"

    def save(self, path) -> None:
        buf = io.BytesIO()
        arrays = {"kld": self.kld, "top1": self.top1, "nll": self.nll, "nll_ref": self.nll_ref}
        np.savez_compressed(
            buf, **arrays, exact=np.array(self.exact), positions=np.array(self.positions)
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> TokenScores:
        with np.load(path) as z:
            exact = bool(z["exact"]) if "exact" in z else False  # older files: the estimate
            where = str(z["positions"]) if "positions" in z else "all"  # older: every position
            return cls(z["kld"], z["top1"], z["nll"], z["nll_ref"], exact, where)


def windows(tokenizer, seqlen: int = SEQLEN) -> torch.Tensor:
    """The evaluation text as ``[W, seqlen]`` token windows (the remainder is left out)."""
    from mixviz.models.text import evaluation_text

    ids = tokenizer(evaluation_text().text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids) // seqlen
    if n < 2:
        raise MixvizError(f"the evaluation text has {len(ids)} tokens: too few for KLD")
    return torch.tensor(ids[: n * seqlen], dtype=torch.long).view(n, seqlen)


def reference_key(
    model_hash: str, dtype: str, seqlen: int = SEQLEN, topk: int = TOPK, limit: int | None = None
) -> str:
    """Digest of everything the reference depends on (``limit``: its first windows only)."""
    import transformers

    from mixviz.models.text import evaluation_text

    parts = [
        _VERSION,
        model_hash,
        dtype,
        seqlen,
        topk,
        TAIL_SAMPLES,
        limit,
        evaluation_text().hash,
        torch.__version__,
        transformers.__version__,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _logprobs(model, window: torch.Tensor) -> torch.Tensor:
    logits = model(window[None].to(_device(model))).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def _output_head(model) -> torch.nn.Linear | None:
    """The model's output head when it is a plain linear layer (else None)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if isinstance(head, torch.nn.Linear) else None


@torch.inference_mode()
def _logprobs_and_input(model, window: torch.Tensor, head) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probs of every position but the last, and the head's input there."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        logp = _logprobs(model, window)
    finally:
        hook.remove()
    return logp, seen[-1][0, : logp.shape[0]]


def _head_logprobs(h: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Log-probs from the head's input ``h`` ``[n, H]`` (as the model computes them)."""
    h = h.to(weight.device, weight.dtype)
    return torch.log_softmax(torch.nn.functional.linear(h, weight, bias).float(), dim=-1)


@torch.inference_mode()
def exact_kld(hidden, weight, bias, logq: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``KLD(P ‖ Q)`` per position over the full vocabulary, P recomputed from the head's input
    ``hidden`` ``[n, H]`` ``chunk`` positions at a time (``chunk × V`` floats held at once)."""
    out = torch.empty(logq.shape[0], dtype=torch.float32, device=logq.device)
    for i in range(0, logq.shape[0], chunk):
        logp = _head_logprobs(hidden[i : i + chunk], weight, bias).to(logq.device)
        out[i : i + chunk] = (logp.exp() * (logp - logq[i : i + chunk])).sum(-1)
    return out


@torch.inference_mode()
def _head_copy(model, tokens: torch.Tensor):
    """``(head, weight copy, bias copy)`` when the first window's log-probs are the head's
    linear map of its input (checked: every log-prob within 1e-4, 0.05 in 16-bit weights),
    else ``(None, None, None)``."""
    head = _output_head(model)
    if head is None or not len(tokens):
        return None, None, None
    logp, h = _logprobs_and_input(model, tokens[0], head)
    weight = head.weight.detach().clone()  # the model may be quantized in place later
    bias = None if head.bias is None else head.bias.detach().clone()
    if h.shape[0] != logp.shape[0]:
        return None, None, None
    again = _head_logprobs(h, weight, bias)
    tol = 1e-4 if weight.dtype == torch.float32 else 5e-2
    if not torch.allclose(again, logp, rtol=0.0, atol=tol):
        return None, None, None
    return head, weight, bias


def compute_reference(
    model,
    tokens: torch.Tensor,
    key: str = "",
    topk: int = TOPK,
    progress: Callable[[int, int], None] | None = None,
    samples: int = TAIL_SAMPLES,
    exact: bool = True,
) -> Reference:
    """Run the unquantized model over every window and keep its top-k and tail samples, and
    (``exact``) its head's input at every position with a copy of the head."""
    out: dict[str, list] = {k: [] for k in ("logp", "ids", "tail_logp", "tail_ids", "nll")}
    head, weight, bias = _head_copy(model, tokens) if exact else (None, None, None)
    hidden = []
    for w, window in enumerate(tokens):
        if head is not None:
            logp, h = _logprobs_and_input(model, window, head)
            hidden.append(h.cpu())
        else:
            logp = _logprobs(model, window)
        k = min(topk, logp.shape[-1])
        top = logp.topk(k, dim=-1)
        out["logp"].append(top.values.cpu())
        out["ids"].append(top.indices.to(torch.int32).cpu())
        out["nll"].append(-logp.gather(-1, window[1:, None].to(logp.device))[:, 0].cpu())
        m = samples if k < logp.shape[-1] else 0
        tail_ids = torch.zeros(logp.shape[0], m, dtype=torch.long, device=logp.device)
        if m:
            probs = (logp.exp() + 1e-30).scatter_(-1, top.indices, 0.0)
            gen = torch.Generator(device=logp.device).manual_seed(w)
            tail_ids = torch.multinomial(probs, m, replacement=True, generator=gen)
        out["tail_logp"].append(logp.gather(-1, tail_ids).cpu())
        out["tail_ids"].append(tail_ids.to(torch.int32).cpu())
        if progress:
            progress(w + 1, len(tokens))
    extra = {}
    if head is not None:
        cpu_bias = None if bias is None else bias.cpu()
        extra = {"hidden": torch.stack(hidden), "head": weight.cpu(), "head_bias": cpu_bias}
    return Reference(key, tokens, **{k: torch.stack(v) for k, v in out.items()}, **extra)


def reference(
    model,
    tokenizer,
    model_hash: str,
    dtype: str,
    progress=None,
    seqlen: int = SEQLEN,
    limit: int | None = None,
) -> Reference:
    """The cached reference for this model over the first ``limit`` windows (or all),
    computing (and caching) it on first use."""
    key = reference_key(model_hash, dtype, seqlen, limit=limit)
    path = cache_dir() / "kld" / f"{key}.pt"
    if path.is_file():
        try:
            return Reference(key, **torch.load(path, weights_only=True))
        except Exception:  # noqa: BLE001 — a damaged cache is recomputed, never trusted
            pass
    tokens = windows(tokenizer, seqlen)[:limit]
    ref = compute_reference(model, tokens, key, progress=progress)
    buf = io.BytesIO()
    torch.save(ref.arrays(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return ref


def kld_estimate(
    logp_top: torch.Tensor,
    ids: torch.Tensor,
    logq: torch.Tensor,
    tail_logp: torch.Tensor | None = None,
    tail_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``KLD(P ‖ Q)`` per position from P's top-k log-probs and tail samples (module doc) and
    Q's full log-probs; without tail samples, the merged-tail lower bound.

    >>> logq = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), -1)
    >>> logp = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.0, -1.0]]), -1)
    >>> exact = (logp.exp() * (logp - logq)).sum(-1)
    >>> top = logp.topk(4)
    >>> torch.allclose(kld_estimate(top.values, top.indices, logq), exact)
    True
    """
    lq = logq.gather(-1, ids.long())
    p = logp_top.exp()
    head = (p * (logp_top - lq)).sum(-1)
    if ids.shape[-1] >= logq.shape[-1]:  # the whole vocabulary: no tail
        return head
    log_pt = _log_tail(logp_top)
    if tail_ids is not None and tail_ids.shape[-1]:
        ratio = tail_logp - logq.gather(-1, tail_ids.long())
        return head + log_pt.exp() * ratio.mean(-1)
    log_qt = _log_tail(lq)
    tail = torch.where(log_pt > math.log(1e-29), log_pt.exp() * (log_pt - log_qt), 0.0)
    return (head + tail).clamp(min=0.0)


def _log_tail(logp: torch.Tensor) -> torch.Tensor:
    """``log(1 − Σ exp(logp))`` over the last axis, without cancellation (floored at 1e-30)."""
    total = torch.logsumexp(logp.double(), -1).clamp(max=0.0)  # float64: Σ of k terms
    return torch.log(torch.neg(torch.expm1(total)).clamp(min=1e-30)).to(logp.dtype)


def score(
    model,
    ref: Reference,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
    exact: bool = True,
) -> TokenScores:
    """The quantized model's per-position scores against the reference (its first ``limit``
    windows, or all): exact KLD where the reference holds its head (``exact=False``: the
    top-k + tail estimate all the same)."""
    klds, top1s, nlls = [], [], []
    tokens = ref.tokens[:limit]
    exact = exact and ref.hidden is not None
    if exact:
        dev = _device(model)
        weight = ref.head.to(dev)
        bias = None if ref.head_bias is None else ref.head_bias.to(dev)
    for w, window in enumerate(tokens):
        logq = _logprobs(model, window)
        ids = ref.ids[w].to(logq.device)
        dev = logq.device
        if exact:
            klds.append(exact_kld(ref.hidden[w], weight, bias, logq).cpu())
        else:
            tail = (ref.tail_logp[w].to(dev), ref.tail_ids[w].to(dev))
            klds.append(kld_estimate(ref.logp[w].to(dev), ids, logq, *tail).cpu())
        top1s.append((logq.argmax(-1) == ids[:, 0]).cpu())
        nlls.append(-logq.gather(-1, window[1:, None].to(logq.device))[:, 0].cpu())
        if progress:
            progress(w + 1, len(tokens))
    return TokenScores(
        torch.stack(klds).numpy(),
        torch.stack(top1s).numpy(),
        torch.stack(nlls).numpy(),
        ref.nll[:limit].numpy(),
        exact or (len(tokens) > 0 and ref.ids.shape[-1] >= logq.shape[-1]),  # top-k = all
    )


def identical(ref: Reference, limit: int | None = None) -> TokenScores:
    """The reference scored against itself (the BF16 run): zero divergence, same top-1."""
    nll = ref.nll[:limit].numpy()
    return TokenScores(np.zeros_like(nll), np.ones(nll.shape, dtype=bool), nll, nll, True)


def window_means(x: np.ndarray) -> np.ndarray:
    """Each window's mean over its positions (float64).

    >>> window_means(np.array([[1.0, 3.0], [2.0, 2.0]])).tolist()
    [2.0, 2.0]
    """
    return x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float64)


def window_mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean over all positions and its standard error from the windows' means.

    >>> window_mean_se(np.array([[1.0, 1.0], [3.0, 3.0]]))
    (2.0, 1.0)
    """
    means = window_means(x)
    se = float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else float("nan")
    return float(x.mean(dtype=np.float64)), se


def summarize(s: TokenScores) -> list[tuple[str, float, float | None]]:
    """``(metric, value, stderr)`` rows as llama.cpp reports them: mean KLD, its median and
    99th percentile (only from exact per-token values: percentiles of noisy estimates are
    biased), same-top-token share, both models' perplexity, the token count, and the
    degrees of freedom of every interval here (``df`` = windows − 1: Student-t)."""
    kld, kld_se = window_mean_se(s.kld)
    top1, top1_se = window_mean_se(s.top1.astype(np.float64))
    nll, nll_se = window_mean_se(s.nll)
    nll_ref, nll_ref_se = window_mean_se(s.nll_ref)
    tails = [
        ("kld_median", float(np.median(s.kld)), None),
        ("kld_p99", float(np.percentile(s.kld, 99)), None),
    ]
    return [
        ("kld", kld, kld_se),
        *(tails if s.exact else []),
        ("top1", top1, top1_se),
        ("ppl", math.exp(nll), math.exp(nll) * nll_se),  # delta method
        ("ppl_ref", math.exp(nll_ref), math.exp(nll_ref) * nll_ref_se),
        ("tokens", float(s.kld.size), None),
        ("df", float(s.kld.shape[0] - 1), None),
    ]


def llamacpp_positions(s: TokenScores) -> TokenScores:
    """The positions ``llama-perplexity`` scores: the second half of each window (its
    ``first = n_ctx / 2``: logits at positions ``n/2 … n−2``, each predicting the next token).
    Every comparison with llama.cpp's numbers uses these. Scores already cut are returned as
    they are.

    >>> t = TokenScores(*(np.arange(8.0).reshape(1, 8),) * 4)  # a 9-token window
    >>> half = llamacpp_positions(t)
    >>> half.kld.tolist(), half.positions, llamacpp_positions(half).kld.tolist()
    ([[4.0, 5.0, 6.0, 7.0]], 'half', [[4.0, 5.0, 6.0, 7.0]])
    """
    if s.positions == "half":
        return s
    first = (s.kld.shape[1] + 1) // 2
    cut = (s.kld[:, first:], s.top1[:, first:], s.nll[:, first:], s.nll_ref[:, first:])
    return TokenScores(*cut, s.exact, "half")


def scored_from(s: TokenScores, score_from: str) -> TokenScores:
    """``s`` on the positions ``score_from`` names (``all`` or ``half``: :data:`SCORE_FROM`);
    scores already cut to llama.cpp's half cannot give back all positions."""
    check_score_from(score_from)
    if score_from == "half":
        return llamacpp_positions(s)
    if s.positions != "all":
        raise MixvizError("these scores hold only llama.cpp's positions (the second half of each "
                          "window): score both sides from half")  # fmt: skip
    return s
