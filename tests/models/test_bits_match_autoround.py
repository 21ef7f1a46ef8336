"""Average bits of mixed recipes against auto-round's own accounting.

``Recipe.average_bits`` (both accountings) and the worker's ``run_bits`` are checked against a
sum written here of ``auto_round.auto_scheme.utils.compute_layer_bits`` over real
``torch.nn.Linear`` modules (on the meta device) that carry a preset's attributes exactly as
auto-round sets them (``asdict(preset_name_to_scheme(name))``, as ``apply_quant_scheme``
does). A layer left without attributes is unquantized to auto-round (16 bits a weight), which
is what a plan's unnamed (BF16) layer must count as. The parameter count is the modules'
``weight.numel()``. Layers are the tiny model's and Qwen-like shapes (some with widths no
group size divides); options are drawn from the whole catalogue, among those available for
each layer's in_features.
"""

from __future__ import annotations

import random
from dataclasses import asdict

import pytest
import torch

from mixviz.models.inventory import Layer
from mixviz.models.schemes import SCHEMES
from mixviz.report.recipe import Recipe
from mixviz.runs.evaluation.quantize import run_bits

# (block-relative name, in_features, out_features)
QWEN_LIKE = {
    "qwen3-32b": [
        ("self_attn.q_proj", 5120, 8192),
        ("self_attn.k_proj", 5120, 1024),
        ("self_attn.v_proj", 5120, 1024),
        ("self_attn.o_proj", 8192, 5120),
        ("mlp.gate_proj", 5120, 25600),
        ("mlp.up_proj", 5120, 25600),
        ("mlp.down_proj", 25600, 5120),
    ],
    "qwen2.5-0.5b": [  # hidden 896 = 7·128, intermediate 4864 = 38·128
        ("self_attn.q_proj", 896, 896),
        ("self_attn.k_proj", 896, 128),
        ("self_attn.v_proj", 896, 128),
        ("self_attn.o_proj", 896, 896),
        ("mlp.gate_proj", 896, 4864),
        ("mlp.up_proj", 896, 4864),
        ("mlp.down_proj", 4864, 896),
    ],
    "smol-like": [  # 576 = 4.5·128: group 128 unavailable; 1000, 48, 24: odd widths
        ("self_attn.q_proj", 576, 576),
        ("self_attn.k_proj", 576, 192),
        ("self_attn.o_proj", 576, 576),
        ("mlp.gate_proj", 576, 1536),
        ("mlp.down_proj", 1536, 576),
        ("mlp.odd_proj", 1000, 48),
        ("mlp.narrow_proj", 48, 100),
        ("mlp.tiny_proj", 24, 40),
    ],
}


def _layers(shapes, n_blocks: int) -> list[Layer]:
    return [
        Layer(f"qwen.layers.{b}.{rel}", b, "other", i, o, i * o, None)
        for b in range(n_blocks)
        for rel, i, o in shapes
    ]


# GGML types count GGML's bytes, not auto-round's bits (tests/models/test_schemes.py checks those)
AUTO_ROUND_COUNTED = {n: s for n, s in SCHEMES.items() if not s.ggml}


def _random_plan(layers: list[Layer], rng: random.Random, skip: float = 0.0) -> dict[str, str]:
    """A random available catalogue option per layer; a fraction ``skip`` left unnamed."""
    plan = {}
    for x in layers:
        if rng.random() < skip:
            continue
        plan[x.name] = rng.choice(
            [n for n, s in AUTO_ROUND_COUNTED.items() if s.available_for(x.in_features)]
        )
    return plan


# --------------------------------------------------------------------------- the reference


def _module(x: Layer, option: str | None) -> torch.nn.Linear:
    """A real linear of the layer's shape; carrying the preset's attributes unless None."""
    from auto_round.schemes import preset_name_to_scheme

    mod = torch.nn.Linear(x.in_features, x.out_features, bias=False, device="meta")
    if option is not None:
        for k, v in asdict(preset_name_to_scheme(option)).items():
            setattr(mod, k, v)
    return mod


def _auto_round_average(
    layers: list[Layer], plan: dict[str, str | None], ignore_scale_bits: bool
) -> float:
    """Σ compute_layer_bits / Σ weight.numel over ``plan``'s layers (None: unquantized)."""
    from auto_round.auto_scheme.utils import compute_layer_bits

    shapes = {x.name: x for x in layers}
    total = numel = 0
    for name, option in plan.items():
        mod = _module(shapes[name], option)
        bits, _ = compute_layer_bits(mod, ignore_scale_bits)
        assert float(bits).is_integer(), (name, option, bits)
        total += int(bits)
        numel += mod.weight.numel()
    return total / numel


# --------------------------------------------------------------------------- the tests


def test_every_option_alone_matches_auto_round(tiny_layers):
    """One option on every layer it serves, per shape set: the single-scheme case first."""
    sets = [list(tiny_layers)] + [_layers(s, 1) for s in QWEN_LIKE.values()]
    for layers in sets:
        for name, s in AUTO_ROUND_COUNTED.items():
            served = [x for x in layers if s.available_for(x.in_features)]
            if not served:
                continue
            r = Recipe("m", "h", {x.name: name for x in served})
            for ignore in (False, True):
                assert r.average_bits(layers, ignore) == _auto_round_average(
                    layers, r.layers, ignore
                ), (name, ignore, [x.name for x in served][:3])


@pytest.mark.parametrize("seed", range(6))
def test_mixed_recipe_average_bits_matches_auto_round(seed, tiny_layers):
    rng = random.Random(seed)
    layers = list(tiny_layers) + _layers(QWEN_LIKE[rng.choice(list(QWEN_LIKE))], 3)
    plan = _random_plan(layers, rng)  # lm_head included: a recipe may name it
    for flag in (False, True):
        r = Recipe("m", "h", plan, ignore_scale_bits=flag)
        assert r.average_bits(layers) == _auto_round_average(layers, plan, flag)
        for ignore in (False, True):
            assert r.average_bits(layers, ignore) == _auto_round_average(layers, plan, ignore)


@pytest.mark.parametrize("seed", range(6))
def test_run_bits_matches_auto_round(seed, tiny_layers):
    """run_bits: every block linear, a layer the plan does not name counting as unquantized."""
    rng = random.Random(100 + seed)
    shapes = QWEN_LIKE[list(QWEN_LIKE)[seed % len(QWEN_LIKE)]]
    layers = (list(tiny_layers) + _layers(shapes, 2)) if seed % 2 else _layers(shapes, 4)
    assert len({x.name for x in layers}) == len(layers)
    plan = _random_plan(layers, rng, skip=0.3)
    blocks = [x for x in layers if x.block is not None]
    full = {x.name: plan.get(x.name) for x in blocks}  # None → no attributes → 16 bits
    got = run_bits(plan, layers)
    assert got == (
        _auto_round_average(layers, full, False),
        _auto_round_average(layers, full, True),
    )


def test_run_bits_of_the_tiny_model_with_a_plan_naming_lm_head(tiny_layers):
    """run_bits averages over the block linears only: an lm_head in the plan is not counted."""
    rng = random.Random(7)
    plan = _random_plan(list(tiny_layers), rng)
    assert "lm_head" in plan
    blocks = {x.name: plan[x.name] for x in tiny_layers if x.block is not None}
    assert run_bits(plan, tiny_layers) == (
        _auto_round_average(tiny_layers, blocks, False),
        _auto_round_average(tiny_layers, blocks, True),
    )


def test_reference_agrees_with_auto_rounds_documented_examples():
    """The reference itself: the per-weight figures auto-round gives for a 4096² layer."""
    x = Layer("l.0.q", 0, "q", 4096, 4096, 4096**2, None)
    want = {"W2A16": 2.140625, "W4A16": 4.15625, "W8A16": 8.1875, "MXFP4": 4.25}
    want |= {"MXFP8": 8.25, "NVFP4": 4.5, "BF16": 16.0}
    for option, bits in want.items():
        assert _auto_round_average([x], {x.name: option}, False) == bits
