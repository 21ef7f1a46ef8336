"""Offloaded profiling: weights on the CPU, one block at a time on the device, same scores.

On the CPU the "device" is the CPU too, so these tests check the arithmetic (the block-wise
backward with recomputation against autograd through the whole model) and the choreography
(one module resident at a time, every block visited, each run only while resident); the moves
themselves are ``Module.to``.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch
from cli import run_cli

from mixviz import MixvizError
from mixviz.models.inventory import block_linears
from mixviz.models.loading import load_model
from mixviz.models.text import calibration_text, token_windows
from mixviz.sensitivity import offload as offload_module
from mixviz.sensitivity.blocks import decoder_parts, head_of
from mixviz.sensitivity.metrics import METRICS, Metric
from mixviz.sensitivity.offload import Offload, move
from mixviz.sensitivity.profile import profile_model

METRIC_NAMES = ("fisher", "hessian", "delta_loss", "kl")
OPTIONS = "W2A16G32,W4A16G32,MXFP4,BF16"
KW = dict(
    options=OPTIONS,
    nsamples=4,
    seqlen=32,
    include_lm_head=True,  # the head's paths too: lm_head scored, quantized, backpropagated
    use_cache=False,
    device="cpu",
    dtype="float32",
)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_offloaded_scores_equal_the_whole_model_scores(metric):
    seen: list[tuple[int, int]] = []
    whole = profile_model("tiny", metric=metric, **KW)
    off = profile_model(
        "tiny", metric=metric, offload=True, progress=lambda d, t, m: seen.append((d, t)), **KW
    )
    assert [(r.layer, r.option) for r in off.rows] == [(r.layer, r.option) for r in whole.rows]
    a = torch.tensor([r.score for r in whole.rows], dtype=torch.float64)
    b = torch.tensor([r.score for r in off.rows], dtype=torch.float64)
    assert (a > 0).sum() >= len(whole.layers) * 3  # every quantized option scored, not all zero
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-12)
    # the same progress as without offloading: every step of the metric's count, in order
    total = seen[0][1]
    assert [d for d, _ in seen] == list(range(total + 1)) and seen[-1] == (total, total)
    # nothing says it was offloaded: same device, dtype and cache key
    assert (off.device, off.dtype, off.key) == (whole.device, whole.dtype, whole.key)


@pytest.fixture(scope="module")
def tiny_run(tiny_ref, tiny_layers):
    """The tiny model on the CPU, its candidate layers (lm_head included) and 4×32 tokens."""
    model, tok = load_model(tiny_ref, dtype="float32", device="cpu", offload=True)
    layers = block_linears(tiny_layers) + [x for x in tiny_layers if x.kind == "lm_head"]
    ids = token_windows(tok, calibration_text("pydoc"), 4, 32)
    return model, layers, ids


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_one_block_resident_at_a_time(metric, tiny_run, monkeypatch):
    """Every block (and the head) is made resident, one at a time, and runs only then."""
    from mixviz.models.schemes import parse_options

    model, layers, ids = tiny_run
    blocks, norm = decoder_parts(model)
    head = model.get_output_embeddings()
    resident: list = []
    visits: list = []
    real = offload_module.on_device

    @contextmanager
    def recording(module, device):
        assert not resident, f"{type(module).__name__} moved while another module is resident"
        resident.append(module)
        visits.append(module)
        try:
            with real(module, device):
                yield module
        finally:
            resident.pop()

    def only_resident(mod, args, out):
        assert resident and any(m is mod for m in resident[-1].modules()), type(mod).__name__

    monkeypatch.setattr(offload_module, "on_device", recording)
    handles = [m.register_forward_hook(only_resident) for m in (*blocks, norm, head)]
    try:
        m = METRICS[metric]
        m.score(
            model,
            layers,
            parse_options(OPTIONS),
            ids,
            lambda msg: None,
            batch_size=m.batch_size,
            offload=Offload(torch.device("cpu")),
        )
    finally:
        for h in handles:
            h.remove()
    assert not resident
    for b in blocks:
        assert any(v is b for v in visits)
    heads = [v for v in visits if isinstance(v, torch.nn.ModuleList)]
    assert heads and all(v[0] is norm and v[1] is head for v in heads)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_on_device_keeps_parameters_and_what_was_put_in_them():
    lin = torch.nn.Linear(4, 2)
    w = lin.weight
    with offload_module.on_device(lin, torch.device("cpu")) as mod:
        assert mod is lin and lin.weight is w
        lin.weight.data = torch.zeros(2, 4)  # a quantized copy goes back with the block
    assert lin.weight is w and not w.any() and w.device.type == "cpu"
    kw = move({"mask": None, "rope": (torch.ones(1), torch.ones(1))}, torch.device("meta"))
    assert kw["mask"] is None and all(t.device.type == "meta" for t in kw["rope"])


def test_head_of_is_norm_and_lm_head(tiny_run):
    model, _, _ = tiny_run
    norm, head = head_of(model)
    assert norm is decoder_parts(model)[1] and head is model.get_output_embeddings()


def test_a_metric_without_offload_is_refused(monkeypatch):
    toy = Metric("toyoff", lambda *a, **k: {}, 1, lambda *a: 1, "no offload here")
    monkeypatch.setitem(METRICS, "toyoff", toy)
    with pytest.raises(MixvizError, match="toyoff does not support --offload"):
        profile_model("tiny", metric="toyoff", offload=True, nsamples=2, seqlen=32)


def test_offload_is_not_part_of_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path))
    kw = dict(options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32, device="cpu")
    made = profile_model("tiny", offload=True, **kw)
    assert profile_model("tiny", compute=False, **kw) == made  # the same profile, cached once


def test_cli_profile_offload(tmp_path):
    r = run_cli(
        "profile",
        "tiny",
        "--offload",
        "--metric",
        "hessian",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--device",
        "cpu",
        "--json",
        "--no-cache",
        env={"MIXVIZ_CACHE": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["metric"] == "hessian" and len(doc["rows"]) == 56
    assert "offload" not in json.dumps(doc)
    whole = profile_model(
        "tiny", metric="hessian", nsamples=2, seqlen=32, device="cpu", use_cache=False
    )
    got = {(r["layer"], r["option"]): r["score"] for r in doc["rows"]}
    for row in whole.rows:
        assert got[(row.layer, row.option)] == pytest.approx(row.score, rel=1e-5)
