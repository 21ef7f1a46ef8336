"""Bit accounting equals auto-round's own count, for every scheme and layer shape."""

from __future__ import annotations

import pytest

from mixviz import SCHEMES, MixvizError, get_scheme, layer_bits, parse_options
from mixviz.models.schemes import average_bits, unavailable_layers

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


@pytest.mark.parametrize("name", list(SCHEMES))
def test_scheme_matches_auto_round_preset(name):
    from auto_round.schemes import PRESET_SCHEMES

    ours, theirs = SCHEMES[name], PRESET_SCHEMES[name]
    assert (ours.bits, ours.group_size, ours.data_type) == (
        theirs.bits,
        theirs.group_size,
        theirs.data_type,
    )
    assert ours.act_bits == (theirs.act_bits or 16)


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("ignore", [False, True])
def test_bits_equal_auto_round_count(name, ignore):
    for in_f, out_f in SHAPES:
        ours = layer_bits(SCHEMES[name], in_f, out_f, ignore_scale_bits=ignore)
        assert ours == _auto_round_bits(name, in_f, out_f, ignore), (name, in_f, out_f)


def test_bits_on_model_shapes_equal_auto_round(tiny_layers):
    for layer in tiny_layers:
        for name in SCHEMES:
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


def test_average_bits_is_parameter_weighted(tiny_layers):
    blocks = [x for x in tiny_layers if x.block is not None]
    assert average_bits(blocks, get_scheme("MXFP4")) == 4.25
    assert average_bits(blocks, get_scheme("MXFP4"), ignore_scale_bits=True) == 4.0


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
