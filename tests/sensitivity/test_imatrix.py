"""llama.cpp's importance matrix, end to end: computed from the calibration text as
``llama-imatrix`` computes it, read from its files (GGUF and the legacy ``.dat``), written back,
keyed in the profile, and weighting the GGML errors as llama-quantize weights them."""

from __future__ import annotations

import json
import struct
import subprocess

import numpy as np
import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.models import ggml
from mixviz.runs.ship import llamacpp
from mixviz.sensitivity import imatrix
from mixviz.sensitivity.spec import ProfileSpec

needs_llamacpp = pytest.mark.skipif(
    not (llamacpp.available() and ggml.available()),
    reason="llama.cpp is not built here: bash .ci/llama_cpp.sh",
)


def test_legacy_dat_and_gguf_files_read_back_as_llama_quantize_reads_them(tmp_path):
    # legacy: the values are means × ncall; llama-quantize divides by ncall
    name = b"blk.0.ffn_down.weight"
    vals = np.array([2.0, 6.0, 0.5], dtype="<f4")
    blob = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name
    blob += struct.pack("<ii", 4, 3) + vals.tobytes() + struct.pack("<i", 10)
    (tmp_path / "im.dat").write_bytes(blob)
    im = imatrix.read(tmp_path / "im.dat")
    assert im.values("blk.0.ffn_down.weight").tolist() == [0.5, 1.5, 0.125]
    # GGUF: in_sum2 / counts, written and read back
    g = imatrix.Imatrix({"blk.1.attn_q.weight": (np.array([3.0, 9.0], np.float32), 3)}, "t", 2, 8)
    back = imatrix.read(imatrix.write_gguf(g, tmp_path / "im.gguf"))
    assert back.values("blk.1.attn_q.weight").tolist() == [1.0, 3.0]
    assert (back.chunk_count, back.chunk_size) == (2, 8) and back.digest() == g.digest()
    (tmp_path / "bad.dat").write_bytes(b"\x05\x00")
    with pytest.raises(MixvizError, match="neither GGUF nor llama.cpp's legacy .dat"):
        imatrix.read(tmp_path / "bad.dat")


def test_spec_checks_and_keys_the_imatrix(tmp_path):
    with pytest.raises(MixvizError, match="GGML types only"):
        ProfileSpec(options="MXFP4,MXFP8", imatrix="auto")
    with pytest.raises(MixvizError, match="without an importance matrix"):
        ProfileSpec(options="Q4_K,IQ2_XXS")
    with pytest.raises(MixvizError, match="neither auto nor a file"):
        ProfileSpec(options="Q4_0", imatrix=str(tmp_path / "missing.gguf"))
    plain = ProfileSpec(options="Q4_0,Q8_0", metric="hessian")
    auto = ProfileSpec(options="Q4_0,Q8_0", metric="hessian", imatrix="auto")
    from mixviz.sensitivity.spec import Calib

    cal = Calib("pydoc", "h", 4, 64)
    assert plain.key("m", cal, ("cpu", "float32")) != auto.key("m", cal, ("cpu", "float32"))


@needs_llamacpp
def test_profile_with_imatrix_auto_weights_ggml_errors(tmp_path):
    base = ["profile", "tiny", "--options", "Q4_0,IQ4_XS,Q8_0", "--metric", "hessian",
            "--nsamples", "2", "--seqlen", "32", "--json"]  # fmt: skip
    r0 = run_cli(*base)
    r1 = run_cli(*base, "--imatrix", "auto")
    assert r0.returncode == 0 and r1.returncode == 0, r1.stderr
    plain, weighted = json.loads(r0.stdout), json.loads(r1.stdout)
    assert weighted["imatrix"] == "auto" and plain["imatrix"] is None
    s0 = {(r["layer"], r["option"]): r["score"] for r in plain["rows"]}
    s1 = {(r["layer"], r["option"]): r["score"] for r in weighted["rows"]}
    assert s0.keys() == s1.keys() and s0 != s1  # the imatrix changes what Q(W) is
    path = weighted["imatrix_file"]
    im = imatrix.read(path)
    assert len(im.entries) == len(plain["layers"]) and im.chunk_count == 2
    assert all(c == 64 for _, c in im.entries.values())  # 2 windows × 32 tokens each
    # the same values from the file: the same scores (another key: the file is named)
    r2 = run_cli(*base, "--imatrix", path)
    assert r2.returncode == 0, r2.stderr
    s2 = {(r["layer"], r["option"]): r["score"] for r in json.loads(r2.stdout)["rows"]}
    assert s2 == s1


@needs_llamacpp
@pytest.mark.slow
def test_imatrix_auto_is_llama_imatrixs_on_the_same_tokens(demo_ref, tmp_path):
    """llama-imatrix on the demo's F32 GGUF over a text, and mixviz's computation over the same
    tokens (the HF tokenizer's, BOS first in each chunk where llama.cpp adds one): the same
    values within float tolerance (llama.cpp's arithmetic is its own), counts exactly."""
    import gguf
    import torch

    from mixviz.models.loading import load_model
    from mixviz.models.text import calibration_text

    src = llamacpp.bf16_gguf(demo_ref.path, demo_ref.hash, outtype="f32")
    text = calibration_text("pydoc").text[:20_000]
    (tmp_path / "t.txt").write_text(text)
    ctx, chunks = 128, 4
    for fmt in ("gguf", "dat"):
        cmd = [str(llamacpp.tools().imatrix), "-m", str(src), "-f", str(tmp_path / "t.txt"),
               "-o", str(tmp_path / f"im.{fmt}"), "-c", str(ctx), "-b", str(ctx),
               "--chunks", str(chunks), "-t", "2", "--no-ppl", "--output-format", fmt]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    theirs = imatrix.read(tmp_path / "im.gguf")
    legacy = imatrix.read(tmp_path / "im.dat")
    model, tok = load_model(demo_ref, dtype="float32", device="cpu")
    ids = tok(text, add_special_tokens=False)["input_ids"][: ctx * chunks]
    windows = torch.tensor(ids).view(chunks, ctx)
    fields = gguf.GGUFReader(str(src)).fields
    add_bos = fields.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and bool(add_bos.parts[add_bos.data[0]][0]):
        bos = fields["tokenizer.ggml.bos_token_id"]
        windows[:, 0] = int(bos.parts[bos.data[0]][0])
    ours = imatrix.compute(model, windows)
    assert set(ours.entries) <= set(theirs.entries)
    worst = []
    for name, (_sums, count) in ours.entries.items():
        assert theirs.entries[name][1] == count == ctx * chunks, name
        a, b = ours.values(name), theirs.values(name)
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-8)
        # llama.cpp's float32 forward vs torch's: per value within 1 %, typically 1e-4
        assert rel.max() < 1e-2 and np.median(rel) < 5e-4, (name, rel.max(), np.median(rel))
        worst.append(float(rel.max()))
        np.testing.assert_allclose(legacy.values(name), b, rtol=1e-6)
    assert len(worst) == 210 and np.median(worst) < 3e-3
