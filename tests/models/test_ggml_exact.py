"""The profile's GGML types are llama.cpp's: mixviz's quantizer (ggml's C code through ctypes)
and the real ``llama-quantize`` give the same bytes and the same dequantized weights, for every
GGML type mixviz offers, with and without an importance matrix — read back with ``gguf``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixviz.models import ggml
from mixviz.models.schemes import SCHEMES, layer_bits
from mixviz.runs.ship import llamacpp

needs_llamacpp = pytest.mark.skipif(
    not (llamacpp.available() and ggml.available()),
    reason="llama.cpp is not built here: bash .ci/llama_cpp.sh",
)
OFFERED = [n for n, s in SCHEMES.items() if s.ggml]


def test_every_offered_type_has_ggmls_block_layout():
    import gguf

    for name in OFFERED:
        t = ggml.GGML_TYPES[name]
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == (t.block, t.nbytes)
        assert gguf.GGMLQuantizationType[name].value == t.id, name


def test_k_types_on_576_wide_rows_are_priced_as_llamacpps_fallback():
    # Q4_K on SmolLM2's 576-wide q_proj is written as Q5_0 (5.5 bpw), not a padded Q4_K (5.625)
    assert SCHEMES["Q4_K"].written_as(576) == "Q5_0"
    assert layer_bits(SCHEMES["Q4_K"], 576, 576) == 576 * 576 * 5.5
    assert layer_bits(SCHEMES["Q4_K"], 1536, 576) == 1536 * 576 * 4.5
    assert SCHEMES["IQ4_XS"].written_as(576) == "IQ4_NL"
    assert ggml.written_type("Q4_0", 48) == "Q4_0" and not SCHEMES["Q4_0"].servable_by_llamacpp(48)
    assert ggml.written_type("Q4_K", 48) == "F16" and not SCHEMES["Q4_K"].servable_by_llamacpp(48)


@needs_llamacpp
def test_ggml_quantize_round_trips_and_refuses_clearly():
    from mixviz import MixvizError

    w = np.random.default_rng(0).standard_t(4, size=(8, 256)).astype(np.float32)
    for name in ("Q4_0", "Q4_K", "IQ4_XS"):
        blocks = ggml.quantize(w, name)
        t = ggml.GGML_TYPES[name]
        assert blocks.nbytes == 8 * (256 // t.block) * t.nbytes
        deq = ggml.dequantize(blocks, name, 256)
        assert deq.shape == w.shape and 0 < np.square(deq - w).mean() < np.square(w).mean() / 10
    with pytest.raises(MixvizError, match="needs an importance matrix"):
        ggml.quantize(w, "IQ2_XXS")
    with pytest.raises(MixvizError, match="does not divide rows of 100"):
        ggml.quantize(w[:, :100], "Q4_K")
    # an importance matrix changes what is chosen (and reweights the error where it is large)
    imx = np.linspace(0.01, 10, 256).astype(np.float32)
    q = ggml.dequantize(ggml.quantize(w, "Q4_K", imx), "Q4_K", 256)
    plain = ggml.dequantize(ggml.quantize(w, "Q4_K"), "Q4_K", 256)
    assert not np.array_equal(q, plain)
    assert (imx * np.square(q - w)).sum() < (imx * np.square(plain - w)).sum()


# One tensor per type: ffn_down (rows of 1536: every type natively) and attn_output
# (rows of 576: K- and i-quants as llama.cpp's fallback) of a block of its own.
def _plan(types: list[str]) -> dict[str, str]:
    plan = {}
    for i, t in enumerate(types):
        plan[f"blk.{i}.ffn_down.weight"] = t
        plan[f"blk.{i}.attn_output.weight"] = t
    return plan


@pytest.fixture(scope="module")
def demo_f32(demo_ref):
    return llamacpp.bf16_gguf(demo_ref.path, demo_ref.hash, outtype="f32")


@pytest.fixture(scope="module")
def demo_imatrix(demo_ref, tmp_path_factory):
    from mixviz.models.loading import load_model
    from mixviz.models.text import calibration_text, token_windows
    from mixviz.sensitivity import imatrix

    model, tok = load_model(demo_ref, dtype="float32", device="cpu")
    ids = token_windows(tok, calibration_text("pydoc"), 4, 128)
    im = imatrix.compute(model, ids)
    path = imatrix.write_gguf(im, tmp_path_factory.mktemp("imx") / "demo.imatrix.gguf")
    return im, path


def _check_file(written, src_f32, plan, im=None):
    """Every planned tensor: llama-quantize's bytes == mixviz's, and gguf's dequantization of
    the file == the weight mixviz's profile uses (LayerQuantizer)."""
    import gguf

    src = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(src_f32)).tensors}
    out = {t.name: t for t in gguf.GGUFReader(str(written)).tensors}
    checked = 0
    for name, want in plan.items():
        t = out[name]
        w = src[name]  # [rows, row] float32, as the converter wrote it
        row = w.shape[-1]
        typ = ggml.written_type(want, row)
        assert t.tensor_type.name == typ, (name, want, t.tensor_type.name)
        imx = None if im is None else im.values(name)
        ours = ggml.quantize(w.astype(np.float32), typ, imx)
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), ours.reshape(-1)), (
            f"{name} at {typ}: bytes differ from llama-quantize's"
        )
        theirs = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        mine = ggml.dequantize(ours, typ, row)
        assert np.array_equal(theirs.astype(np.float32), mine), f"{name} at {typ}: dequantized"
        checked += 1
    return checked


@needs_llamacpp
@pytest.mark.slow
def test_bit_identical_with_llama_quantize_without_imatrix(demo_f32, tmp_path):
    types = [n for n in OFFERED if not ggml.GGML_TYPES[n].needs_imatrix]
    plan = _plan(types)
    tt = tmp_path / "types.txt"
    tt.write_text("".join(f"^{k.replace('.', chr(92) + '.')}$={v}\n" for k, v in plan.items()))
    out = llamacpp.quantize(demo_f32, tmp_path / "q.gguf", "Q8_0", tt)
    assert _check_file(out, demo_f32, plan) == 2 * len(types)


@needs_llamacpp
@pytest.mark.slow
def test_bit_identical_with_llama_quantize_with_imatrix(demo_f32, demo_imatrix, tmp_path):
    im, path = demo_imatrix
    plan = _plan(OFFERED)
    tt = tmp_path / "types.txt"
    tt.write_text("".join(f"^{k.replace('.', chr(92) + '.')}$={v}\n" for k, v in plan.items()))
    out = llamacpp.quantize(demo_f32, tmp_path / "q.gguf", "Q8_0", tt, imatrix=path)
    assert _check_file(out, demo_f32, plan, im) == 2 * len(OFFERED)


@needs_llamacpp
@pytest.mark.slow
def test_profile_quantizer_is_ggmls_on_the_demo(demo_ref, demo_imatrix):
    """The weight every metric scores (LayerQuantizer) is ggml's — and Q4_1 of the demo, whose
    weights *are* a dequantized Q4_1, has zero error, as in ggml."""
    from mixviz.models.loading import load_model
    from mixviz.sensitivity.imatrix import for_layers
    from mixviz.sensitivity.quantizers import LayerQuantizer, importance

    model, _ = load_model(demo_ref, dtype="float32", device="cpu")
    name = "model.layers.3.mlp.down_proj"
    lin = dict(model.named_modules())[name]
    w = lin.weight.detach()
    assert torch.equal(LayerQuantizer(lin, SCHEMES["Q4_1"]).weight(), w)
    for t in ("Q5_K", "Q2_K", "Q6_K", "Q4_K"):
        want = ggml.dequantize(ggml.quantize(w.numpy(), t), t, w.shape[1])
        q = LayerQuantizer(lin, SCHEMES[t])
        assert np.array_equal(q.weight().numpy(), want), t
        assert np.array_equal(q.weight().numpy(), want), t  # again, from its kept blocks
    im, _ = demo_imatrix
    with importance(model, for_layers(im, [name])):
        got = LayerQuantizer(lin, SCHEMES["IQ4_XS"]).weight().numpy()
    imx = im.values("blk.3.ffn_down.weight")
    assert np.array_equal(
        got, ggml.dequantize(ggml.quantize(w.numpy(), "IQ4_XS", imx), "IQ4_XS", 1536)
    )
