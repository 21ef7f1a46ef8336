"""Metrics score what their docstrings say (issue 13 items 4 and 5).

- fisher's activation term uses each layer's *own* input gradient: a model whose q/k/v (and
  gate/up) share one input tensor, as HF Llama's do, scores exactly like the same model where
  each layer is fed a copy of that tensor.
- hessian's exact output error for activation-quantizing formats does not count the bias: a
  constant bias on a layer leaves its score unchanged.
"""

from __future__ import annotations

import pytest
import torch
from fakes import tiny_llama

from mixviz.models.inventory import inventory
from mixviz.models.schemes import SCHEMES
from mixviz.sensitivity.metrics.fisher import fisher
from mixviz.sensitivity.metrics.hessian import hessian


def _llama(bias: bool = False, seed: int = 0):
    return tiny_llama(seed, attention_bias=bias, mlp_bias=bias)


def _block_layers(model):
    return [x for x in inventory(model) if x.block is not None]


def _ids():
    return torch.randint(0, 128, (3, 32), generator=torch.Generator().manual_seed(1))


def _own_input_copies(model):
    """Feed k/v and up a copy of their input: same values, no tensor shared with q / gate."""
    for name, mod in model.named_modules():
        if name.endswith(("k_proj", "v_proj", "up_proj")):
            mod.register_forward_pre_hook(lambda m, args: (args[0].clone(), *args[1:]))


def test_fisher_activation_term_is_per_layer():
    schemes = [SCHEMES["MXFP8"], SCHEMES["MXFP4"]]
    shared = _llama()
    copies = _llama()
    copies.load_state_dict(shared.state_dict())
    _own_input_copies(copies)
    layers = _block_layers(shared)
    a = fisher(shared, layers, schemes, _ids(), lambda s: None)
    b = fisher(copies, layers, schemes, _ids(), lambda s: None)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-12), key
    # and the activation term is really there (an MXFP score exceeds its weight-only part)
    assert any(a[(x.name, "MXFP4")] > 0 for x in layers)


def test_hessian_output_error_ignores_a_constant_bias():
    schemes = [SCHEMES["MXFP4"], SCHEMES["W4A16G32"]]
    plain = _llama(bias=True)
    with torch.no_grad():
        for mod in plain.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.zero_()
    biased = _llama(bias=True)
    biased.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for mod in biased.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.fill_(3.0)
    layers = _block_layers(plain)
    a = hessian(plain, layers, schemes, _ids(), lambda s: None)
    b = hessian(biased, layers, schemes, _ids(), lambda s: None)
    # q/k/v of block 0 see the same input in both models: their scores must not move
    first = [x.name for x in layers if x.block == 0 and x.kind in ("q", "k", "v")]
    assert len(first) == 3
    for name in first:
        for s in schemes:
            assert b[(name, s.name)] == pytest.approx(a[(name, s.name)], rel=1e-4), (name, s.name)
        assert a[(name, "MXFP4")] > 0
