"""The fast MX activation fake-quantizer equals auto-round's ``quant_mx`` bit for bit."""

from __future__ import annotations

import pytest
import torch
from auto_round.data_type.mxfp import quant_mx

from mixviz.models.schemes import SCHEMES
from mixviz.runs.evaluation.fastquant import (
    SameInput,
    quant_mx_fast,
    use_fast_activation_quant,
    use_fast_reload,
)
from mixviz.sensitivity.quantizers import LayerQuantizer


def _hard_tensor(shape, seed: int) -> torch.Tensor:
    """Random values over many magnitudes, with exact zeros, ties and values at the edges."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp2(torch.randint(-12, 12, shape, generator=g))
    flat = x.view(-1)
    n = flat.numel()
    flat[torch.randperm(n, generator=g)[: n // 20]] = 0.0
    ties = torch.tensor([0.25, 0.75, 1.25, 2.5, 3.5, 5.0, 6.0, 7.0, 448.0, 1e-30, 1.0 - 2**-24])
    idx = torch.randperm(n, generator=g)[: n // 10]
    flat[idx] = ties[torch.randint(0, len(ties), (len(idx),), generator=g)] * torch.where(
        torch.rand(len(idx), generator=g) < 0.5, -1.0, 1.0
    )
    flat[:32] = 0.0  # one all-zero group
    return x


@pytest.mark.parametrize("bits,data_type", [(4, "mx_fp4"), (8, "mx_fp8"), (8, "mx_fp8e5m2")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_mx_equals_auto_round_bit_for_bit(bits, data_type, dtype):
    for seed in range(4):
        x = _hard_tensor((3, 7, 256), seed).to(dtype)
        want = quant_mx(
            x.clone(), bits=bits, group_size=32, data_type=data_type, max_scale=torch.tensor(1.0)
        )
        got = quant_mx_fast(x.clone(), bits=bits, group_size=32, data_type=data_type)
        assert got[0].dtype == want[0].dtype and got[0].shape == want[0].shape
        assert torch.equal(got[0], want[0]), (got[0] != want[0]).sum()
        assert torch.equal(got[1].view(-1), want[1].view(-1))


def test_shapes_it_does_not_cover_fall_back_to_auto_round():
    x = torch.randn(2, 40)  # 40 is not a multiple of the group
    want = quant_mx(x.clone(), bits=4, group_size=32, data_type="mx_fp4")[0]
    assert torch.equal(quant_mx_fast(x.clone(), bits=4, group_size=32, data_type="mx_fp4")[0], want)


@pytest.mark.parametrize("name", ["MXFP4", "MXFP8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_quantizer_fast_path_equals_auto_rounds_wrapper(name, dtype):
    """The profiles' Q(W) and Q(x) for MX formats are auto-round's ``WrapperLinear`` numbers."""
    lin = torch.nn.Linear(256, 48).to(dtype)
    lin.weight.data = _hard_tensor((48, 256), 1).to(dtype)
    x = _hard_tensor((5, 256), 2).to(dtype)
    q = LayerQuantizer(lin, SCHEMES[name])
    assert q.fast_weight and q._fast_act
    fast_w, fast_x = q.weight(), q.act(x)
    q.fast_weight = q._fast_act = False  # auto-round's own path
    want_w, want_x = q.weight(), q.act(x)
    assert fast_w.dtype == want_w.dtype == dtype and fast_x.dtype == want_x.dtype == dtype
    assert torch.equal(fast_w, want_w), (fast_w != want_w).sum()
    assert torch.equal(fast_x, want_x), (fast_x != want_x).sum()
    assert torch.equal(q.weight_rows(lin.weight[5:17].detach()), want_w[5:17])


def test_layer_quantizer_keeps_auto_rounds_path_for_other_formats():
    lin = torch.nn.Linear(256, 48)
    for name in ("W4A16", "W2A16G64", "NVFP4"):
        q = LayerQuantizer(lin, SCHEMES[name])
        assert not q.fast_weight and not q._fast_act


class _Layer(torch.nn.Module):
    def __init__(self, act_data_type: str, act_max=None):
        super().__init__()
        self.act_quant_func = quant_mx
        self.act_data_type, self.act_bits, self.act_max = act_data_type, 4, act_max
        self.act_max_scale = self.act_min_scale = torch.tensor(1.0)


class _Wrapper(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.orig_layer = layer


def test_only_plain_mx_activation_layers_are_swapped():
    mx, nv, calibrated = _Layer("mx_fp4"), _Layer("nv_fp4"), _Layer("mx_fp4", act_max=3.0)
    nv.act_quant_func = lambda *a, **k: None
    model = torch.nn.ModuleList([_Wrapper(mx), _Wrapper(nv), _Wrapper(calibrated)])
    assert use_fast_activation_quant(model) == 1
    assert isinstance(mx.act_quant_func, SameInput)
    assert calibrated.act_quant_func is quant_mx


def test_same_input_reuses_only_an_unchanged_tensor():
    """q/k/v's shared input is quantized once; a changed tensor, another tensor with the same
    values or another format is quantized afresh, and every answer is auto-round's."""
    fast = SameInput()
    x = torch.randn(3, 64)

    def want(t, bits=4, data_type="mx_fp4"):
        return quant_mx(t.clone(), bits=bits, group_size=32, data_type=data_type)[0]

    first = fast(x, bits=4, group_size=32, data_type="mx_fp4")
    assert fast(x, bits=4, group_size=32, data_type="mx_fp4") is first
    assert torch.equal(first[0], want(x))
    x.mul_(3.0)  # changed in place: its version moves on
    again = fast(x, bits=4, group_size=32, data_type="mx_fp4")
    assert again is not first and torch.equal(again[0], want(x))
    twin = x.clone()
    assert fast(twin, bits=4, group_size=32, data_type="mx_fp4") is not again
    eight = fast(twin, bits=8, group_size=32, data_type="mx_fp8")
    assert torch.equal(eight[0], want(twin, 8, "mx_fp8"))
    with torch.inference_mode():
        y = torch.randn(2, 32)
        assert torch.equal(fast(y, bits=4, group_size=32, data_type="mx_fp4")[0], want(y))


def test_quantized_tiny_gives_auto_rounds_logits_with_fewer_quantizations(tiny_ref, monkeypatch):
    """An MXFP4 auto-round model of ``tiny``: the same logits, bit for bit, with auto-round's
    activation quantizer and with the swapped one, which quantizes 4 inputs per decoder layer
    (q/k/v's and gate/up's shared) instead of 7."""
    from mixviz import Recipe
    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.quantize import quantize
    from mixviz.runs.runspec import RunSpec

    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    recipe = dict(Recipe.uniform(tiny_ref, "MXFP4").layers)
    spec = RunSpec(model="tiny", recipe=recipe, tasks=("t",))
    qmodel = quantize(model, tok, spec)
    ids = torch.randint(0, qmodel.config.vocab_size, (2, 40))
    with torch.no_grad():
        want = qmodel(ids).logits
    assert use_fast_activation_quant(qmodel) == 7 * qmodel.config.num_hidden_layers
    computed: list[int] = []
    inner = SameInput.__call__

    def counting(self, tensor, **kw):
        before = self.last
        out = inner(self, tensor, **kw)
        computed.append(int(self.last is not before))
        return out

    monkeypatch.setattr(SameInput, "__call__", counting)
    with torch.no_grad():
        got = qmodel(ids).logits
    assert torch.equal(got, want)
    assert sum(computed) == 4 * qmodel.config.num_hidden_layers
    assert len(computed) == 7 * qmodel.config.num_hidden_layers


def test_reloaded_mx_checkpoint_gives_auto_rounds_logits_with_weights_dequantized_once(
    tiny_ref, tmp_path
):
    """An MXFP4/MXFP8 mix of ``tiny`` written in auto-round's format and reloaded: with
    :func:`use_fast_reload` its MX linears hold float weights (dequantized once) and quantize
    their inputs with the fast quantizer, and the logits are auto-round's own, bit for bit."""
    from transformers import AutoModelForCausalLM

    from mixviz.models.loading import load_model
    from mixviz.runs.evaluation.quantize import autoround, quantize_with
    from mixviz.runs.runspec import RunSpec

    model, tok = load_model(tiny_ref, dtype="float32", device="cpu")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:-1]
    recipe = {n: ("MXFP4", "MXFP8")[i % 2] for i, n in enumerate(names)}
    ar = autoround(model, tok, RunSpec(model="tiny", recipe=recipe, tasks=("t",)))
    quantize_with(ar, RunSpec(model="tiny", recipe=recipe, tasks=("t",)))
    ar.save_quantized(str(tmp_path), format="auto_round", inplace=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 64))
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    fast = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert use_fast_reload(fast) == len(recipe)
    mods = dict(fast.named_modules())
    assert all(mods[n].weight.dtype == torch.float32 and mods[n].pre_dequantized for n in recipe)
    with torch.no_grad():
        assert torch.equal(fast(ids).logits, plain(ids).logits)


# --------------------------------------------------------------------------- non-finite groups


@pytest.mark.parametrize("data_type,bits", [("mx_fp4", 4), ("mx_fp8", 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), 70000.0, 1e5, 500.0, 7.0]
)
def test_non_finite_and_past_max_groups_match_autoround_bit_for_bit(data_type, bits, dtype, value):
    """A group holding ±inf or NaN is NaN throughout, exponent included (auto-round's floor_ste
    makes inf − inf); finite values past the format's max clamp alike. 70000 is inf in fp16."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    x[1, 5] = value  # one group of the second row; the rest stay finite
    x = x.to(dtype)
    want = quant_mx(x, bits=bits, group_size=32, data_type=data_type)
    got = quant_mx_fast(x, bits=bits, group_size=32, data_type=data_type)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0, equal_nan=True)
    if not torch.isfinite(x[1, 5]):
        assert got[0][1, :32].isnan().all() and got[0][1, 32:].isfinite().all()
