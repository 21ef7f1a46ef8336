"""``profile --around``: each metric's in-context scores against a reference computed directly
— the whole model quantized by hand, the gradient or KL taken on it."""

from __future__ import annotations

import json

import pytest
import torch
from cli import run_cli

from mixviz.errors import MixvizError
from mixviz.models.loading import load_model
from mixviz.models.schemes import get_scheme
from mixviz.models.text import calibration_text, token_windows
from mixviz.sensitivity.profile import profile_model
from mixviz.sensitivity.quantizers import LayerQuantizer
from mixviz.sensitivity.spec import ProfileSpec

OPTIONS = "W2A16G32,W4A16G32"
LOW, HIGH = get_scheme("W2A16G32"), get_scheme("W4A16G32")
SPEC = dict(options=OPTIONS, nsamples=2, seqlen=32, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny(tiny_ref):
    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    ids = token_windows(tok, calibration_text(), 2, 32)
    return model, ids


def _linears(model, layers):
    mods = dict(model.named_modules())
    return {x.name: mods[x.name] for x in layers if x.block is not None}


def test_fisher_around_is_the_gradient_at_the_quantized_model(tiny_ref, tiny, tiny_layers):
    prof = profile_model(tiny_ref, ProfileSpec(**SPEC, around="W2A16G32"), use_cache=False)
    model, ids = tiny
    lins = _linears(model, tiny_layers)
    original = {n: lin.weight.detach().clone() for n, lin in lins.items()}
    quant = {n: {s.name: LayerQuantizer(lin, s).weight() for s in (LOW, HIGH)}
             for n, lin in lins.items()}  # fmt: skip
    want = {(n, s): 0.0 for n in lins for s in (LOW.name, HIGH.name)}
    for p in model.parameters():
        p.requires_grad_(False)
    for n, lin in lins.items():  # every linear at the low format, by hand
        lin.weight.data = quant[n][LOW.name].clone()
        lin.weight.requires_grad_(True)
    model.get_input_embeddings().weight.requires_grad_(True)
    try:
        for row in ids:  # one sequence per batch, as fisher's batch size
            model.zero_grad(set_to_none=True)
            model(input_ids=row[None], labels=row[None], use_cache=False).loss.backward()
            for n, lin in lins.items():
                for s in (LOW.name, HIGH.name):
                    d = original[n] - quant[n][s]
                    want[(n, s)] += 0.5 * float((lin.weight.grad * d).square().sum())
    finally:
        for n, lin in lins.items():
            lin.weight.data = original[n]
            lin.weight.requires_grad_(False)
            lin.weight.grad = None
    for (n, s), v in want.items():
        assert prof.score(n, s) == pytest.approx(v, rel=1e-3), (n, s)
    plain = profile_model(tiny_ref, ProfileSpec(**SPEC), use_cache=False)
    name = next(iter(lins))
    assert prof.score(name, LOW.name) != pytest.approx(plain.score(name, LOW.name), rel=1e-3)
    assert prof.around == "W2A16G32" and prof.key != plain.key


def _kl(model, ids, ref_logp) -> float:
    with torch.no_grad():
        logq = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.double(), -1)
    return float((ref_logp.exp() * (ref_logp - logq)).sum()) / ids.numel()


def test_kl_around_is_the_in_context_swap(tiny_ref, tiny, tiny_layers):
    prof = profile_model(
        tiny_ref, ProfileSpec(**SPEC, metric="kl", around="W2A16G32"), use_cache=False
    )
    model, ids = tiny
    lins = _linears(model, tiny_layers)
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.double(), -1)
    original = {n: lin.weight.data for n, lin in lins.items()}
    name = "model.layers.1.mlp.down_proj"
    try:
        for lin in lins.values():
            lin.weight.data = LayerQuantizer(lin, LOW).weight()
        lins[name].weight.data = original[name]
        base = _kl(model, ids, ref)
        lins[name].weight.data = LayerQuantizer(lins[name], HIGH).weight()
        high = _kl(model, ids, ref)
    finally:
        for n, lin in lins.items():
            lin.weight.data = original[n]
    assert prof.score(name, HIGH.name) == pytest.approx(max(high - base, 0.0), rel=1e-4, abs=1e-9)


def test_around_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(MixvizError, match="cannot score around"):
        ProfileSpec(metric="hessian", around="MXFP4")
    with pytest.raises(MixvizError, match="not offloaded"):
        ProfileSpec(around="MXFP4", offload=True)
    with pytest.raises(MixvizError, match="neither an option"):
        ProfileSpec(around="W9Z")
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"layers": {"model.layers.99.mlp.down_proj": "MXFP4"}}))
    r = run_cli("profile", "tiny", "--around", str(bad), "--nsamples", "2", "--seqlen", "32")
    assert r.returncode == 2 and "has no layer" in r.stderr


def test_around_a_recipe_keys_the_file(tiny_ref, tiny_layers, tmp_path):
    names = [x.name for x in tiny_layers if x.block is not None]
    recipe = tmp_path / "alloc.json"
    recipe.write_text(json.dumps({"layers": {n: "W2A16G32" for n in names}}))
    by_file = profile_model(tiny_ref, ProfileSpec(**SPEC, around=str(recipe)), use_cache=False)
    by_name = profile_model(tiny_ref, ProfileSpec(**SPEC, around="W2A16G32"), use_cache=False)
    n = names[0]
    assert by_file.score(n, LOW.name) == pytest.approx(by_name.score(n, LOW.name), rel=1e-6)
    assert by_file.around.startswith("alloc.json@")
