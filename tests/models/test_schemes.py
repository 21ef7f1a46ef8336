"""Bit accounting equals auto-round's own count, for every scheme and layer shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixviz import SCHEMES, MixvizError, get_scheme, layer_bits, parse_options
from mixviz.models.schemes import average_bits, unavailable_layers
from mixviz.report.recipe import Recipe

SHAPES = [
    (64, 64),
    (128, 64),
    (64, 512),
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
    (4096, 4096),
    (5120, 25600),
]


def _auto_round_bits(name: str, in_f: int, out_f: int, ignore: bool) -> int:
    import torch
    from auto_round.auto_scheme.utils import compute_layer_bits
    from auto_round.schemes import PRESET_SCHEMES

    layer = torch.nn.Linear(in_f, out_f, bias=False, device="meta")
    for key, value in PRESET_SCHEMES[name].to_dict().items():
        if value is not None:
            setattr(layer, key, value)
    total, _ = compute_layer_bits(layer, ignore_scale_zp_bits=ignore)
    return total


COUNTED_BY_AUTO_ROUND = [n for n, s in SCHEMES.items() if not s.ggml]  # GGML: GGML's bytes


@pytest.mark.parametrize("name", [n for n in SCHEMES if not n.startswith("IQ")])
def test_scheme_matches_auto_round_preset(name):  # the i-quants are ggml's alone
    from auto_round.schemes import PRESET_SCHEMES

    ours = SCHEMES[name]
    theirs = PRESET_SCHEMES[ours.preset]
    assert (ours.bits, ours.group_size, ours.data_type) == (
        theirs.bits,
        theirs.group_size,
        theirs.data_type,
    )
    assert ours.act_bits == (theirs.act_bits or 16)


@pytest.mark.parametrize("name", COUNTED_BY_AUTO_ROUND)
@pytest.mark.parametrize("ignore", [False, True])
def test_bits_equal_auto_round_count(name, ignore):
    for in_f, out_f in SHAPES:
        ours = layer_bits(SCHEMES[name], in_f, out_f, ignore_scale_bits=ignore)
        assert ours == _auto_round_bits(name, in_f, out_f, ignore), (name, in_f, out_f)


def test_bits_on_model_shapes_equal_auto_round(tiny_layers):
    for layer in tiny_layers:
        for name in COUNTED_BY_AUTO_ROUND:
            for ignore in (False, True):
                assert layer_bits(
                    SCHEMES[name], layer.in_features, layer.out_features, ignore_scale_bits=ignore
                ) == _auto_round_bits(name, layer.in_features, layer.out_features, ignore)


@pytest.mark.parametrize(
    "name, per_weight",
    [
        ("W2A16", 2.1406),
        ("W4A16", 4.1562),
        ("W8A16", 8.1875),
        ("MXFP4", 4.25),
        ("MXFP8", 8.25),
        ("NVFP4", 4.5),
        ("BF16", 16.0),
    ],
)
def test_known_bits_per_weight_on_4096_square(name, per_weight):
    assert layer_bits(SCHEMES[name], 4096, 4096) / 4096**2 == pytest.approx(per_weight, abs=1e-4)


def test_group_128_unavailable_where_it_does_not_divide(tiny_layers):
    w4 = get_scheme("W4A16")
    assert not w4.available_for(576) and w4.available_for(1536)
    assert get_scheme("W4A16G64").available_for(576)
    missing = unavailable_layers(tiny_layers, w4)
    # hidden 64: every linear but down_proj (in 128) is out of reach of G128
    assert missing and all(not name.endswith("down_proj") for name in missing)
    assert len(missing) == len(tiny_layers) - 4
    assert unavailable_layers(tiny_layers, get_scheme("MXFP4")) == []


SAVED = Path(__file__).resolve().parents[1] / "data" / "recipe_v1_tiny.json"


def test_average_bits_is_parameter_weighted(tiny_layers):
    """Hand-derived totals over tiny's blocks, where an unweighted mean gives other values.

    tiny's block layers (in × out): q 64×64 = 4096, k and v 64×32 = 2048, o 64×64 = 4096,
    gate and up 64×128 = 8192, down 128×64 = 8192: 36864 weights a block, 147456 in 4 blocks.
    """
    blocks = [x for x in tiny_layers if x.block is not None]
    assert sum(x.numel for x in blocks) == 147456

    # One scheme whose overhead differs by shape: W4A16 is group 128, one group per row
    # (ceil), 16-bit scale + 4-bit zero point = 20 bits a group. Rows (out_features) with
    # in 64: 64+32+32+64+128+128 = 448 a block → 1792; down_proj (in 128): 64 a block → 256.
    # 4·147456 + (1792 + 256)·20 = 589824 + 40960 = 630784. Per-layer mean: 4.2902.
    w4 = get_scheme("W4A16")
    assert average_bits(blocks, w4) == 630784 / 147456
    assert average_bits(blocks, w4, ignore_scale_bits=True) == 4.0

    # The saved v1 recipe mixes MXFP4, MXFP8 and BF16 (weights per option, by block):
    #   block 0: MXFP8 q k v down = 16384 → 131072 bits; MXFP4 o gate up = 20480 →  81920
    #   block 1: MXFP8 v down     = 10240 →  81920 bits; MXFP4 the rest = 26624 → 106496
    #   block 2: MXFP4 all        = 36864 → 147456 bits
    #   block 3: MXFP8 all but down = 28672 → 229376 bits; BF16 down = 8192 → 131072
    # Without scales: 212992 + 188416 + 147456 + 360448 = 909312 bits over 147456 weights.
    # The unweighted mean of the 28 layers' bits is 172 / 28 = 6.1429, not 6.1667.
    # With scales: MX formats add an 8-bit scale per 32 weights (0.25 bit a weight), BF16 none:
    # (147456 − 8192)·0.25 = 34816 more bits → 944128.
    recipe = Recipe.load(SAVED)
    assert recipe.ignore_scale_bits  # its default accounting is without scales
    assert recipe.average_bits(tiny_layers) == 909312 / 147456
    assert recipe.average_bits(tiny_layers, ignore_scale_bits=True) == 909312 / 147456
    assert recipe.average_bits(tiny_layers, ignore_scale_bits=False) == 944128 / 147456


def test_aliases_and_errors():
    assert get_scheme("w4g128").name == "W4A16"
    assert get_scheme("W2G64").name == "W2A16G64"
    assert get_scheme("mxfp8").label == "MXFP8"
    assert get_scheme("W4A16G32").label == "W4 G32"
    assert [s.name for s in parse_options("MXFP8, MXFP4")] == ["MXFP4", "MXFP8"]
    with pytest.raises(MixvizError, match="unknown option 'FP5'"):
        get_scheme("FP5")
    with pytest.raises(MixvizError, match="twice"):
        parse_options("MXFP4,mxfp4")
    with pytest.raises(MixvizError, match="no options"):
        parse_options(" , ")


def test_ggml_types_count_ggml_bytes_exactly():
    """Block sizes and bytes per block are the gguf package's (llama.cpp's) own table; bits per
    weight include the scales, as llama.cpp states them (Q4_K 4.5, Q6_K 6.5625, Q8_0 8.5)."""
    import gguf

    from mixviz.models.schemes import GGML_BLOCKS

    for name, (width, nbytes) in GGML_BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (width, nbytes), name
    bpw = {n: layer_bits(s, 2048, 8) / (2048 * 8) for n, s in SCHEMES.items() if s.ggml}
    assert bpw == {
        "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5,
        "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625,
        "IQ4_XS": 4.25, "IQ4_NL": 4.5, "IQ3_S": 3.4375, "IQ3_XXS": 3.0625, "IQ2_S": 2.5625,
        "IQ2_XS": 2.3125, "IQ2_XXS": 2.0625, "IQ1_M": 1.75, "IQ1_S": 1.5625,
    }  # fmt: skip
    assert layer_bits(SCHEMES["Q4_K"], 2048, 8, ignore_scale_bits=True) == 4 * 2048 * 8


def test_k_types_need_a_256_wide_row_and_name_llama_cpps_fallback():
    q4k = SCHEMES["Q4_K"]
    assert q4k.available_for(1536) and not q4k.available_for(576)
    assert "falls back to Q5_0" in q4k.why_unavailable(576)
    assert SCHEMES["Q4_0"].available_for(576) and not SCHEMES["Q4_0"].available_for(48)
    assert get_scheme("q6_k").name == "Q6_K"
