"""llama.cpp's own formats as options: exact sizes, budgets as llama.cpp users state them
(bpw, file size), llama.cpp's own mixes as baselines — checked against llama.cpp itself."""

from __future__ import annotations

import json

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.allocation.baselines import llamacpp_type
from mixviz.allocation.problem import Problem, parse_size, size_budget
from mixviz.allocation.strategies import allocate
from mixviz.models.schemes import get_scheme
from mixviz.runs.ship import llamacpp
from mixviz.sensitivity.synthetic import synthetic_profile

GGML_ALL = ["Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]
SMOL = {
    "self_attn.q_proj": (576, 576), "self_attn.k_proj": (576, 192),
    "self_attn.v_proj": (576, 192), "self_attn.o_proj": (576, 576),
    "mlp.gate_proj": (576, 1536), "mlp.up_proj": (576, 1536), "mlp.down_proj": (1536, 576),
}  # fmt: skip

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason="llama.cpp is not built here: bash .ci/llama_cpp.sh"
)


def test_llamacpp_mixes_as_strategies_on_smollm2_shapes():
    prof = synthetic_profile(SMOL, 30, GGML_ALL, seed=1)
    problem = Problem.from_profile(prof)
    lo, hi = problem.feasible_range()
    bpw = {}
    for ftype in ("Q3_K_M", "Q4_K_M", "Q5_K_M"):
        a = allocate(problem, hi, ftype)
        bpw[ftype] = a.avg_bits
        for name, option in a.layers.items():
            x = next(y for y in prof.layers if y.name == name)
            assert get_scheme(option).available_for(x.in_features), (ftype, name, option)
        # the exact optimum at the mix's own bits never predicts more loss than the mix
        best = allocate(problem, a.avg_bits, "optimal")
        assert best.predicted_loss <= a.predicted_loss + 1e-12 and best.avg_bits <= a.avg_bits
    assert bpw["Q3_K_M"] < bpw["Q4_K_M"] < bpw["Q5_K_M"]
    with pytest.raises(MixvizError, match="needs .* average bits, above this budget"):
        allocate(problem, lo, "Q5_K_M")
    mx = Problem.from_profile(synthetic_profile(SMOL, 2, ["MXFP4", "MXFP8"]))
    with pytest.raises(MixvizError, match="needs .* in the profile's options"):
        allocate(mx, 8.0, "Q4_K_M")


def test_sizes_and_bpw_budgets():
    assert parse_size("4.2GB") == 4_200_000_000 and parse_size("1.5GiB") == 3 * 2**29
    with pytest.raises(MixvizError, match="not a size"):
        parse_size("four gigs")
    problem = Problem.from_profile(synthetic_profile(SMOL, 4, ["Q4_0", "Q8_0"]))
    n = problem.total_numel
    avg = size_budget(problem, n, other_params=1000)  # one byte per allocated weight
    assert avg == pytest.approx((8 * n - 16 * 1000) / n)
    with pytest.raises(MixvizError, match="does not even hold"):
        size_budget(problem, 100, other_params=1000)


def test_allocate_cli_bpw_and_size_on_tiny(tmp_path, tiny_ref):
    prof = tmp_path / "p.json"
    r = run_cli("profile", "tiny", "--options", "Q4_0,Q5_0,Q8_0", "--metric", "hessian",
                "--nsamples", "2", "--seqlen", "32", "--out", prof, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(prof.read_text())["rows"]
    by = {}
    for row in rows:
        by.setdefault(row["layer"], {})[row["option"]] = row["score"]
    # more bits, less damage, layer by layer (GGML's own quantizers through auto-round)
    assert all(s["Q8_0"] < s["Q5_0"] < s["Q4_0"] for s in by.values())
    r = run_cli("allocate", prof, "--bpw", "6", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["avg_bits"] <= 6.0 and doc["budget_from"] == {"bpw": 6.0}
    assert not doc["ignore_scale_bits"]
    import mixviz

    numel = sum(
        x["numel"] for x in json.loads(prof.read_text())["layers"] if x["block"] is not None
    )
    from mixviz.models.file_size import embedding_type, overhead

    model = mixviz.meta_model(tiny_ref)
    emb = model.model.embed_tokens.weight
    names = {x["name"] for x in json.loads(prof.read_text())["layers"]}
    # the rest of a GGUF: the embedding at llama.cpp's output type, norms F32, the header
    assert embedding_type(emb.shape[1]) == "Q8_0"
    over = overhead(model, names, "gguf", dtype="float32", folder=tiny_ref.path).bytes
    assert emb.numel() * 34 // 32 < over < emb.numel() * 34 // 32 + 200_000  # + header
    size = int(6.2 * numel / 8 + over)  # room for 6.2 bits per allocated weight
    r = run_cli("allocate", prof, "--size", str(size), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["budget_from"]["file_format"] == "gguf"
    assert doc["budget_from"]["overhead_bytes"] == over
    assert doc["budget_from"]["avg_bits"] == pytest.approx(6.2, abs=1e-4)  # int bytes
    assert doc["avg_bits"] * numel / 8 + over <= size
    # an auto_round checkpoint of a float32 run stores the embedding (and norms) in float32
    st = overhead(model, names, "auto_round", dtype="float32", folder=tiny_ref.path)
    assert st.bytes > 4 * emb.numel() and st.parts["other tensors (float32)"] >= 4 * emb.numel()
    r = run_cli("allocate", prof, "--bpw", "6", "--ignore-scale-bits")
    assert r.returncode == 2 and "count scale bits" in r.stderr


@pytest.mark.slow
@needs_llamacpp
def test_llamacpp_rules_are_what_llama_quantize_writes(tmp_path, demo_ref, demo_layers):
    """llama-quantize itself makes Q3_K_M, Q4_K_M and Q5_K_M of the demo's BF16 GGUF; every block
    linear's type read back with GGUFReader is what the rule predicts (fallbacks included)."""
    from mixviz.models.targets import gguf_tensor_name
    from mixviz.runs.ship.checkpoint_files import read_gguf_types

    base = llamacpp.bf16_gguf(demo_ref.path, demo_ref.hash)
    linears = [x for x in demo_layers if x.block is not None]
    n_blocks = 1 + max(x.block for x in linears)
    for ftype in ("Q3_K_M", "Q4_K_M", "Q5_K_M"):
        out = llamacpp.quantize(base, tmp_path / f"{ftype}.gguf", ftype)
        got = {n: t for n, (t, _) in read_gguf_types(out, [x.name for x in linears]).items()}
        want = {
            x.name: llamacpp_type(ftype, x.kind, x.block, n_blocks, k_ok=x.in_features % 256 == 0)
            for x in linears
        }
        assert got == want, (ftype, {gguf_tensor_name(n): (got[n], want[n])
                                     for n in got if got[n] != want[n]})  # fmt: skip


@pytest.mark.slow
@needs_llamacpp
def test_tensor_type_file_is_what_llama_quantize_applies(tmp_path, demo_ref, demo_layers):
    from mixviz.report.export import export
    from mixviz.report.recipe import Recipe
    from mixviz.runs.ship.checkpoint_files import read_gguf_types

    base = llamacpp.bf16_gguf(demo_ref.path, demo_ref.hash)
    linears = [x for x in demo_layers if x.block is not None]
    types = ["Q4_0", "Q5_1", "Q8_0", "Q5_0"]
    plan = {x.name: types[i % 4] if x.in_features % 256 else "Q6_K" for i, x in enumerate(linears)}
    path = tmp_path / "types.txt"
    path.write_text(export(Recipe("demo", demo_ref.hash, plan), "llamacpp-file"))
    out = llamacpp.quantize(base, tmp_path / "mixed.gguf", "Q4_0", tensor_type_file=path)
    got = {n: t for n, (t, _) in read_gguf_types(out, list(plan)).items()}
    assert got == plan


@needs_llamacpp
def test_a_k_type_where_no_row_takes_it_is_llamacpps_fallback(tmp_path):
    """Q4_K on tiny's 64/128-wide rows: profiled and priced as the Q5_0 llama.cpp writes there;
    only --target llamacpp takes that substitution, and a pin elsewhere says why, how many."""
    from mixviz.models.schemes import SCHEMES, layer_bits

    prof = tmp_path / "p.json"
    r = run_cli("profile", "tiny", "--options", "Q4_K,Q8_0", "--metric", "hessian",
                "--nsamples", "2", "--seqlen", "32", "--out", prof, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(prof.read_text())
    widths = {x["name"]: (x["in_features"], x["out_features"]) for x in doc["layers"]}
    q4k = [row for row in doc["rows"] if row["option"] == "Q4_K"]
    assert q4k and all(row["score"] is not None for row in q4k)
    for row in q4k:
        assert row["bits"] == layer_bits(SCHEMES["Q5_0"], *widths[row["layer"]])
    r = run_cli("allocate", prof, "--avg-bits", "6", "--target", "llamacpp", "--json")
    assert r.returncode == 0, r.stderr
    assert "Q4_K" in json.loads(r.stdout)["layers"].values()
    r = run_cli("allocate", prof, "--avg-bits", "8.5", "--json")
    assert r.returncode == 0 and set(json.loads(r.stdout)["layers"].values()) == {"Q8_0"}
    name = doc["layers"][0]["name"]
    r = run_cli("allocate", prof, "--avg-bits", "8.5", "--pin", f"{name}=Q4_K")
    assert r.returncode == 2
    assert "256-wide super-block" in r.stderr and "falls back to Q5_0" in r.stderr
    assert f"{len(widths)} layers are like it" in r.stderr and "--target llamacpp" in r.stderr


@pytest.mark.slow
@needs_llamacpp
def test_profile_quantizers_against_llama_quantizes_own(tmp_path, demo_ref):
    """The GGML quantizers mixviz profiles with (ggml's, through ctypes) against llama.cpp's
    through its BF16 GGUF: the real llama-quantize's tensors, dequantized with the gguf package,
    equal LayerQuantizer's on the same bf16 weights exactly, q/k in the converter's rope order
    included. (Until 2026-12-07 mixviz used auto-round's GGUF quantizers: Q5_K's error was
    5.34× ggml's on blk.3.ffn_down; tests/models/test_ggml_exact.py covers every type.)"""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from mixviz.models.loading import load_model
    from mixviz.models.schemes import SCHEMES
    from mixviz.sensitivity.quantizers import LayerQuantizer

    same = {"blk.0.attn_q.weight": "Q4_0", "blk.0.attn_k.weight": "Q5_1",
            "blk.0.attn_v.weight": "Q8_0", "blk.0.ffn_down.weight": "Q5_K"}  # fmt: skip
    types = tmp_path / "types.txt"
    types.write_text("\n".join(f"^{re_escape(k)}$={v.lower()}" for k, v in same.items()))
    base = llamacpp.bf16_gguf(demo_ref.path, demo_ref.hash)
    out = llamacpp.quantize(base, tmp_path / "q.gguf", "Q8_0", tensor_type_file=types)
    tensors = {t.name: t for t in GGUFReader(str(out)).tensors}
    model, _ = load_model(demo_ref, dtype="float32", device="cpu")
    hf = {"attn_q": ("self_attn.q_proj", 9), "attn_k": ("self_attn.k_proj", 3),
          "attn_v": ("self_attn.v_proj", None), "ffn_down": ("mlp.down_proj", None)}  # fmt: skip
    for name, option in same.items():
        t = tensors[name]
        assert t.tensor_type.name == option
        _, block, kind, _ = name.split(".")
        module, heads = hf[kind]
        w = model.get_submodule(f"model.layers.{block}.{module}").weight.detach()
        w = w.to(torch.bfloat16).float()  # what llama.cpp quantized: the BF16 GGUF
        if heads:  # llama.cpp's converter stores q/k rows in its rope order
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2)
            w = w.reshape(-1, w.shape[-1])
        theirs = torch.from_numpy(
            dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
        )
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data = w.clone()
        ours = LayerQuantizer(lin, SCHEMES[option]).weight().float()
        assert torch.equal(ours, theirs), option


def re_escape(name: str) -> str:
    import re

    return re.escape(name)
