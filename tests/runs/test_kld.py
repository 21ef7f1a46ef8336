"""KL divergence to the unquantized model (``mixviz_kld``) against a direct computation on tiny."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixviz.models.loading import load_model, resolve_model
from mixviz.runs.evaluation import kld


@pytest.fixture(scope="module")
def tiny_pair():
    model, tok = load_model(resolve_model("tiny"))
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in noisy.named_parameters():
            if name.endswith("proj.weight"):  # a crude "quantization": relative noise
                p.add_(torch.randn(p.shape, generator=g) * p.abs().mean() * 2.0)
    tokens = kld.windows(tok, seqlen=64)[:6]
    return model, noisy, tokens


def _exact(model, noisy, tokens):
    """KLD(P‖Q), same top-1 and NLLs, straight from both models' full distributions."""
    with torch.no_grad():
        logp = F.log_softmax(model(tokens).logits[:, :-1].float(), -1)
        logq = F.log_softmax(noisy(tokens).logits[:, :-1].float(), -1)
    exact = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    top1 = logp.argmax(-1) == logq.argmax(-1)
    nxt = tokens[:, 1:, None]
    return exact, top1, -logq.gather(-1, nxt)[..., 0], -logp.gather(-1, nxt)[..., 0], logp, logq


def test_kld_with_the_whole_vocabulary_is_exact(tiny_pair):
    model, noisy, tokens = tiny_pair
    exact, top1, nll, nll_ref, *_ = _exact(model, noisy, tokens)
    ref = kld.compute_reference(model, tokens, topk=model.config.vocab_size)
    s = kld.score(noisy, ref)
    assert exact.mean() > 1e-3  # the perturbation matters
    np.testing.assert_allclose(s.kld, exact.numpy(), rtol=1e-4, atol=1e-6)
    assert (s.top1 == top1.numpy()).mean() > 0.99  # ties in argmax may differ
    np.testing.assert_allclose(s.nll, nll.numpy(), rtol=1e-5)
    np.testing.assert_allclose(s.nll_ref, nll_ref.numpy(), rtol=1e-5)


def test_top_k_with_tail_samples_is_unbiased(tiny_pair):
    """k = 16 of 512 tokens: ~90 % of P's mass is in the tail, which 512 samples estimate."""
    model, noisy, tokens = tiny_pair
    exact = _exact(model, noisy, tokens)[0]
    ref = kld.compute_reference(model, tokens, topk=16, samples=512, exact=False)
    s = kld.score(noisy, ref)  # the estimate (refine's yardstick), not the exact values
    assert s.kld.mean() == pytest.approx(float(exact.mean()), rel=0.05)
    # per token it is noisy, but centred: no drift with the size of the divergence
    err = s.kld - exact.numpy()
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(err.size)


def test_merged_tail_is_a_lower_bound_short_by_the_tail_term(tiny_pair):
    model, noisy, tokens = tiny_pair
    exact, _, _, _, logp, logq = _exact(model, noisy, tokens)
    k = 16
    top = logp.topk(k)
    merged = kld.kld_estimate(top.values, top.indices, logq)
    assert (merged <= exact + 1e-5).all()
    # the gap is p_T · KLD(P_T ‖ Q_T) over the tokens outside P's top-k
    outside = torch.ones_like(logp, dtype=torch.bool).scatter(-1, top.indices, False)
    lp = logp.masked_fill(~outside, -torch.inf)
    lq = logq.masked_fill(~outside, -torch.inf)
    pt, qt = lp.logsumexp(-1), lq.logsumexp(-1)
    tails = (lp - pt[..., None]).exp() * ((lp - pt[..., None]) - (lq - qt[..., None]))
    gap = pt.exp() * tails.nan_to_num(0.0).sum(-1)
    np.testing.assert_allclose(merged, exact - gap, rtol=1e-3, atol=1e-5)


def test_summary_of_a_model_against_itself(tiny_pair):
    model, _, tokens = tiny_pair
    ref = kld.compute_reference(model, tokens, topk=32)
    same = kld.score(model, ref)
    assert np.abs(same.kld).max() < 1e-6 and same.top1.all()  # the tail samples too
    rows = {m: (v, se) for m, v, se in kld.summarize(kld.identical(ref))}
    assert rows["kld"] == (0.0, 0.0) and rows["top1"] == (1.0, 0.0)
    assert rows["tokens"][0] == 6 * 63
    assert rows["ppl"][0] == pytest.approx(float(ref.nll.double().mean().exp()))


def test_reference_is_cached_by_model_and_dtype(tiny_pair):
    model, tok = load_model(resolve_model("tiny"))
    a = kld.reference(model, tok, "hash-a", "float32", seqlen=256)
    assert (kld.cache_dir() / "kld" / f"{a.key}.pt").is_file()
    b = kld.reference(None, tok, "hash-a", "float32", seqlen=256)  # no model needed: cached
    assert torch.equal(a.logp, b.logp) and torch.equal(a.ids, b.ids)
    assert kld.reference_key("hash-a", "float32") != kld.reference_key("hash-b", "float32")
    assert kld.reference_key("hash-a", "float32") != kld.reference_key("hash-a", "bfloat16")
