"""Export → import round trips: a mixed recipe on ``tiny`` comes back layer for layer.

Only the auto-round export can be imported back (``mixviz import`` reads auto-round layer
configs and mixviz recipes); the GPTQModel, llm-compressor and llama.cpp exports are one-way and
the importer refuses them with an error, never a wrong recipe.
"""

from __future__ import annotations

import json

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.models.schemes import SCHEMES as CATALOGUE
from mixviz.report.export import export
from mixviz.report.formats import import_recipe
from mixviz.report.recipe import Recipe

# auto-round's own catalogue; llama.cpp's types round-trip through GGUF (test_ship, test_gguf_types)
SCHEMES = {o: s for o, s in CATALOGUE.items() if not s.ggml}


def _mixed(layers, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every layer (lm_head included) gets an option it can take, options not used yet first,
    so that every option of the catalogue appears (group 128 only fits ``down_proj``)."""
    out: dict[str, str] = {}
    for i, x in enumerate(layers):
        fits = [o for o, s in SCHEMES.items() if s.available_for(x.in_features) and o not in skip]
        fresh = [o for o in fits if o not in out.values()]
        out[x.name] = fresh[0] if fresh else fits[i % len(fits)]
    return out


@pytest.fixture
def mixed(tiny_ref, tiny_layers) -> Recipe:
    recipe = Recipe("tiny", tiny_ref.hash, _mixed(tiny_layers))
    recipe.validate(tiny_layers)
    # the recipe really mixes: every option of the catalogue, lm_head named
    assert set(recipe.layers.values()) == set(SCHEMES) and "lm_head" in recipe.layers
    return recipe


def test_autoround_export_imports_back_to_the_same_layers(tmp_path, mixed, tiny_ref, tiny_layers):
    path = tmp_path / "autoround.json"
    path.write_text(export(mixed, "autoround"))
    back = import_recipe(path, "tiny", tiny_ref.hash, tiny_layers)
    assert back.layers == mixed.layers
    assert list(back.layers) == list(mixed.layers)  # same order too
    assert back.average_bits(tiny_layers) == mixed.average_bits(tiny_layers)
    # the bare layer_config (what a user copies out of the export) imports the same
    bare = tmp_path / "layer_config.json"
    bare.write_text(json.dumps(json.loads(path.read_text())["layer_config"]))
    assert import_recipe(bare, "tiny", tiny_ref.hash, tiny_layers).layers == mixed.layers


def test_saved_recipe_imports_back_unchanged(tmp_path, mixed, tiny_ref, tiny_layers):
    path = tmp_path / "recipe.json"
    mixed.save(path)
    assert import_recipe(path, "tiny", tiny_ref.hash, tiny_layers) == mixed


def test_auto_rounds_own_layer_config_imports_back(tmp_path, tiny_ref, tiny_layers):
    """Quantize with the exported layer_config; the layer_config auto-round hands back (dicts
    of bits, group size, data type, act bits per layer) imports to the same recipe.

    NVFP4 is left out: with ``iters=0`` auto-round still wants calibration data for it (the
    hub's pile-10k, offline here)."""
    from auto_round import AutoRound

    from mixviz.models.loading import load_model

    recipe = Recipe("tiny", tiny_ref.hash, _mixed(tiny_layers, skip=("NVFP4",)))
    assert set(recipe.layers.values()) == set(SCHEMES) - {"NVFP4"}
    exported = json.loads(export(recipe, "autoround"))
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
    _, layer_config = ar.quantize()
    assert all(isinstance(v, dict) for v in layer_config.values())
    path = tmp_path / "ar_layer_config.json"
    path.write_text(json.dumps(layer_config, default=str))
    back = import_recipe(path, "tiny", tiny_ref.hash, tiny_layers)
    assert back.layers == recipe.layers


@pytest.mark.parametrize("target", ["gptqmodel", "llmcompressor", "llamacpp"])
def test_one_way_exports_are_refused_by_the_importer(tmp_path, tiny_ref, tiny_layers, target):
    ints = {x.name: "W4A16G32" for x in tiny_layers}  # every exporter takes it
    path = tmp_path / f"{target}.out"
    path.write_text(export(Recipe("tiny", tiny_ref.hash, ints), target))
    with pytest.raises(MixvizError):
        import_recipe(path, "tiny", tiny_ref.hash, tiny_layers)


def test_cli_export_then_import(tmp_path, mixed, tiny_ref):
    src, exported, back = tmp_path / "r.json", tmp_path / "ar.json", tmp_path / "back.json"
    mixed.save(src)
    r = run_cli("export", src, "--to", "autoround", "--out", exported, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("import", exported, "--model", "tiny", "--out", back, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = Recipe.load(back)
    assert got.layers == mixed.layers
    assert (got.model, got.model_hash) == ("tiny", tiny_ref.hash)
    assert got.provenance == {"imported_from": str(exported)}
