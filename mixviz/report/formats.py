"""Each tool's file format, written from one Recipe, and auto-round layer configs read back.

:mod:`mixviz.report.export` names these (the registry that ``--to`` and the app read); a
``*_why_not`` here says why a recipe can't be written in a format, and its writer raises that.

- ``autoround``: ``layer_config`` (full names, preset names — no regex), a Python snippet and
  the equivalent CLI line; :func:`autoround_layer_config` is the bare ``layer_config`` file
  auto-round reads and :func:`autoround_script` a runnable script for one model folder.
- ``gptqmodel``: the ``dynamic`` dict (``+:``/``-:`` regex keys); integer options only.
- ``llmcompressor``: a recipe YAML, one ``config_group`` per option with ``re:`` targets; the
  MX/NV groups are compressed-tensors' own presets (scale dtypes included).
- ``llamacpp``: ``--tensor-type PATTERN=TYPE`` lines, one anchored pattern per GGUF tensor;
  ``llamacpp-file`` the same as a ``--tensor-type-file`` (one ``PATTERN=TYPE`` a line).

Every line meant to be pasted into a shell quotes each value with :func:`shlex.quote`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass

from mixviz.errors import MixvizError
from mixviz.models.fused import shared_fused
from mixviz.models.schemes import Scheme, get_scheme
from mixviz.models.targets import gguf_tensor_name
from mixviz.paths import read_json
from mixviz.report.recipe import Recipe


def _default(recipe: Recipe) -> str:
    return Counter(recipe.layers.values()).most_common(1)[0][0]


BUILT_BY_MIXVIZ = ("demo", "tiny")


@dataclass(frozen=True)
class ModelSource:
    """How a written script or command line names the recipe's model so that it runs as
    written on any machine: a folder or hub id as it is; a model mixviz builds (``demo``,
    ``tiny``) found through mixviz there, never this machine's cache path.

    >>> ModelSource("Qwen/Qwen3-8B").shell(), ModelSource("demo").shell()
    ('Qwen/Qwen3-8B', '"$(mixviz info demo --path)"')
    >>> ModelSource("demo").python()
    "mixviz.resolve_model('demo').path"
    """

    name: str

    @property
    def built(self) -> bool:
        return self.name in BUILT_BY_MIXVIZ

    def python(self) -> str:
        """A Python expression for the path ``from_pretrained`` loads."""
        return f"mixviz.resolve_model({self.name!r}).path" if self.built else repr(self.name)

    def shell(self) -> str:
        """One shell word for it (quoted; a built model through the ``mixviz`` command)."""
        return f'"$(mixviz info {self.name} --path)"' if self.built else shlex.quote(self.name)

    def python_imports(self) -> str:
        """The import its expression needs (none for a folder or hub id)."""
        return "import mixviz  # finds (or builds) the model: pip install -r requirements.txt\n"


def _source(model: ModelSource | str) -> ModelSource:
    return model if isinstance(model, ModelSource) else ModelSource(model)


def _loading(source: ModelSource, model: str = "MODEL") -> str:
    """The lines that load ``model`` and its tokenizer (imports above, names defined)."""
    return (
        "from auto_round import AutoRound\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + (source.python_imports() if source.built else "")
        + "\n"
        + f"{model} = {source.python()}\n"
    )


# --------------------------------------------------------------------------- auto-round


def to_autoround(recipe: Recipe, model: ModelSource | str | None = None) -> dict:
    """``{"layer_config", "python", "cli"}``; keys are exact module names, values presets
    (a GGML type as auto-round names it: ``GGUF:Q4_0``). The snippet and the CLI line load
    ``model`` (the recipe's by default; see :class:`ModelSource`) and run as written."""
    source = _source(model or recipe.model)
    layer_config = {n: get_scheme(o).preset for n, o in recipe.layers.items()}
    default = get_scheme(_default(recipe)).preset
    text = json.dumps(layer_config)
    python = (
        _loading(source) + "model = AutoModelForCausalLM.from_pretrained(MODEL, dtype='auto')\n"
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)\n"
        f"layer_config = {json.dumps(layer_config, indent=4)}\n"
        f"ar = AutoRound(model, tokenizer, scheme={default!r}, layer_config=layer_config,\n"
        "               iters=0, disable_opt_rtn=True, enable_torch_compile=False)\n"
        "model, layer_config = ar.quantize()  # in memory; or ar.quantize_and_save(...)\n"
    )
    rest = [
        *("--scheme", default),
        *("--iters", "0"),
        *("--layer_config", text),
        *("--format", "auto_round"),
        *("--output_dir", "./quantized"),
    ]
    cli = f"auto-round --model {source.shell()} {shlex.join(rest)}"
    return {"layer_config": layer_config, "python": python, "cli": cli}


def autoround_layer_config(recipe: Recipe) -> str:
    """The bare ``layer_config`` JSON (``{module name: preset}``) — what auto-round's
    ``--layer_config`` and ``AutoRound(layer_config=…)`` take, nothing around it."""
    return json.dumps({n: get_scheme(o).preset for n, o in recipe.layers.items()}, indent=2) + "\n"


def autoround_script(
    recipe: Recipe, model: ModelSource | str, output_dir: str = "./quantized"
) -> str:
    """A Python script that quantizes ``model`` (a local folder or a hub id; a model mixviz
    builds is found through mixviz, see :class:`ModelSource`) with the recipe and saves it in
    auto-round's format; ``python the_script.py OTHER_MODEL`` quantizes another folder.

    >>> r = Recipe("demo", "", {"model.layers.0.mlp.up_proj": "MXFP8"})
    >>> "else '/models/smollm2'" in autoround_script(r, "/models/smollm2")
    True
    """
    source = _source(model)
    layer_config = {n: get_scheme(o).preset for n, o in recipe.layers.items()}
    return (
        '"""Quantize with the mixviz recipe (auto-round, RTN); run: python this_file.py [MODEL]"""'
        "\n\nimport sys\n\n"
        + _loading(source).replace("MODEL = ", "MODEL = sys.argv[1] if len(sys.argv) > 1 else ")
        + f"OUTPUT_DIR = {output_dir!r}\n"
        f"LAYER_CONFIG = {json.dumps(layer_config, indent=4)}\n\n"
        "model = AutoModelForCausalLM.from_pretrained(MODEL, dtype='auto')\n"
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)\n"
        f"ar = AutoRound(model, tokenizer, scheme={get_scheme(_default(recipe)).preset!r}, "
        "layer_config=LAYER_CONFIG,\n"
        "               iters=0, disable_opt_rtn=True, enable_torch_compile=False)\n"
        "ar.quantize_and_save(OUTPUT_DIR, format='auto_round')\n"
    )


# --------------------------------------------------------------------------- GPTQModel


def gptqmodel_why_not(recipe: Recipe) -> str | None:
    """GPTQModel quantizes integer weights only, and needs one layer to quantize."""
    for name, option in recipe.layers.items():
        if get_scheme(option).family not in ("int", "bf16"):
            return (
                f"GPTQModel quantizes integer weights only; {name} is {option} "
                "(use the auto-round or llm-compressor export for MX/NV formats, "
                "llama.cpp for GGML types)"
            )
    if all(get_scheme(o).bits >= 16 for o in recipe.layers.values()):
        return "nothing to quantize: every layer is BF16"
    return None


def to_gptqmodel(recipe: Recipe) -> dict:
    """GPTQModel's ``QuantizeConfig(bits=…, group_size=…, dynamic=…)``.

    The most common option is the base; other layers get a ``+:`` override with their bits
    and group size; BF16 layers are skipped with ``-:`` — each under its own name and, for a
    fused group in one format, under vLLM's fused name (``…self_attn.qkv_proj``) too.
    GPTQModel leaves ``lm_head`` alone unless ``lm_head=True``: that is set when the recipe
    quantizes it.
    """
    if why := gptqmodel_why_not(recipe):
        raise MixvizError(why)
    ints = {name: get_scheme(option) for name, option in recipe.layers.items()}
    quantized = [s for s in ints.values() if s.bits < 16]
    base = Counter((s.bits, s.group_size) for s in quantized).most_common(1)[0][0]
    dynamic = {}
    # a fused group in one format is named as vLLM's fused module too: vLLM matches `dynamic`
    # against `…qkv_proj` / `…gate_up_proj` (mixviz.runs.ship.overrides)
    fused = {f: get_scheme(o) for f, o in shared_fused(recipe.layers).items()}
    for name, s in {**ints, **fused}.items():
        pattern = "^" + re.escape(name) + "$"
        if s.bits >= 16:
            dynamic[f"-:{pattern}"] = {}
        elif (s.bits, s.group_size) != base:
            dynamic[f"+:{pattern}"] = {"bits": s.bits, "group_size": s.group_size}
    lm_head = "lm_head" in ints and ints["lm_head"].bits < 16
    return {
        "bits": base[0],
        "group_size": base[1],
        "sym": True,
        "lm_head": lm_head,
        "dynamic": dynamic,
    }


# --------------------------------------------------------------------------- llm-compressor


def _targets(names: list[str]) -> list[str]:
    """Compact ``re:`` targets, one per module suffix, listing its blocks exactly.

    >>> _targets(["model.layers.0.mlp.up_proj", "model.layers.3.mlp.up_proj"])
    ['re:^model\\\\.layers\\\\.(0|3)\\\\.mlp\\\\.up_proj$']
    """
    by_suffix: dict[tuple[str, str], list[str]] = defaultdict(list)
    singles = []
    for n in names:
        m = re.match(r"^(.*?\.)(\d+)(\..*)$", n)
        if m:
            by_suffix[(m[1], m[3])].append(m[2])
        else:
            singles.append(n)
    out = []
    for (prefix, suffix), blocks in by_suffix.items():
        alt = "|".join(sorted(blocks, key=int))
        out.append(f"re:^{re.escape(prefix)}({alt}){re.escape(suffix)}$")
    out += [f"re:^{re.escape(n)}$" for n in singles]
    return out


# compressed-tensors' presets (``PRESET_SCHEMES`` in compressed_tensors/quantization/
# quant_scheme.py, checked against 0.20.0): MX formats keep E8M0 group scales (stored as
# uint8), NVFP4 FP8 E4M3 ones; the zero-point dtypes are the presets' too.
_SCALE_DTYPES = {
    "mxfp": {"scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"},
    "nvfp": {"scale_dtype": "torch.float8_e4m3fn", "zp_dtype": "torch.float8_e4m3fn"},
}


def llmcompressor_why_not(recipe: Recipe) -> str | None:
    """compressed-tensors has no GGML types."""
    for option in recipe.layers.values():
        if get_scheme(option).family == "ggml":
            return f"compressed-tensors has no {option} (a GGML type): export it for llama.cpp"
    return None


def _ct_args(s: Scheme) -> dict:
    """compressed-tensors QuantizationArgs for a scheme's weights (not a GGML type's)."""
    if s.family == "int":
        return {
            "num_bits": s.bits,
            "type": "int",
            "symmetric": True,
            "strategy": "group",
            "group_size": s.group_size,
            "dynamic": False,
        }
    strategy = "tensor_group" if s.family == "nvfp" else "group"
    return {
        "num_bits": s.bits,
        "type": "float",
        "symmetric": True,
        "strategy": strategy,
        "group_size": s.group_size,
        "dynamic": False,
        **_SCALE_DTYPES[s.family],
    }


def _ct_input_args(s: Scheme) -> dict:
    """QuantizationArgs for the input activations of a scheme with ``act_bits <= 8``: MX
    formats are dynamic per group; NVFP4 is ``local`` with a static min-max global scale."""
    args = {**_ct_args(s), "dynamic": True if s.family == "mxfp" else "local"}
    if s.family == "nvfp":
        args["observer"] = "static_minmax"
    return args


def to_llmcompressor(recipe: Recipe) -> str:
    """A recipe YAML for llm-compressor's ``oneshot`` (QuantizationModifier)."""
    if why := llmcompressor_why_not(recipe):
        raise MixvizError(why)
    groups: dict[str, list[str]] = defaultdict(list)
    for name, option in recipe.layers.items():
        groups[option].append(name)
    lines = ["quant_stage:", "  quant_modifiers:", "    QuantizationModifier:"]
    # lm_head stays unquantized unless the recipe quantizes it (a BF16 one is ignored below)
    ignore = [] if "lm_head" in recipe.layers else ["lm_head"]
    ignore += _targets(groups.pop("BF16", []))
    lines.append("      ignore: " + json.dumps(ignore))
    lines.append("      config_groups:")
    for i, (option, names) in enumerate(sorted(groups.items())):
        s = get_scheme(option)
        lines.append(f"        group_{i}:  # {option}")
        lines.append("          targets: " + json.dumps(_targets(names)))
        lines.append("          weights: " + json.dumps(_ct_args(s)))
        if s.act_bits <= 8:
            lines.append("          input_activations: " + json.dumps(_ct_input_args(s)))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- llama.cpp


def gguf_tensor_pattern(hf_name: str) -> str:
    """A ``--tensor-type`` pattern that finds exactly this layer's weight tensor.

    llama-quantize *searches* each pattern in every tensor name (an unanchored regex), so a
    bare ``output`` would also hit every ``blk.N.attn_output.weight``: anchor and escape it.

    >>> gguf_tensor_pattern("lm_head")
    '^output\\\\.weight$'
    """
    return "^" + re.escape(gguf_tensor_name(hf_name) + ".weight") + "$"


def _closest_ggml(option: str) -> str | None:
    s = get_scheme(option)
    if s.family == "ggml":  # llama.cpp's own type: exactly itself
        return s.ggml.lower()
    if s.family == "bf16":
        return "bf16"
    if s.family == "mxfp" and s.bits == 4:
        return "mxfp4"
    if s.family == "int":
        if s.bits == 4:
            return "q4_0" if s.group_size == 32 else "q4_k"
        return {2: "q2_k", 3: "q3_k", 8: "q8_0"}.get(s.bits)
    return None


def ggml_type(option: str) -> str:
    """The GGML type closest to an option; an error where none exists.

    >>> ggml_type("W4A16G32"), ggml_type("Q4_K")
    ('q4_0', 'q4_k')
    """
    if (t := _closest_ggml(option)) is None:
        raise MixvizError(f"llama.cpp has no GGML type for {option}")
    return t


def llamacpp_why_not(recipe: Recipe) -> str | None:
    """An option with no GGML type (:func:`ggml_type`) can't be written for llama.cpp."""
    bad = next((o for o in recipe.layers.values() if _closest_ggml(o) is None), None)
    return None if bad is None else f"llama.cpp has no GGML type for {bad}"


def to_llamacpp(recipe: Recipe) -> list[str]:
    """``llama-quantize`` arguments, one ``--tensor-type '^TENSOR$=TYPE'`` per layer (quoted for
    the shell).

    ``lm_head`` maps to ``output.weight``; a model with tied embeddings (SmolLM2) has no such
    tensor in its GGUF (llama.cpp uses ``token_embd.weight`` as the head), so there the lm_head
    line changes nothing.
    """
    return [
        "--tensor-type " + shlex.quote(f"{gguf_tensor_pattern(n)}={ggml_type(o)}")
        for n, o in recipe.layers.items()
    ]


def to_llamacpp_file(recipe: Recipe) -> list[str]:
    """``llama-quantize --tensor-type-file FILE`` lines: one ``PATTERN=TYPE`` a line (llama.cpp
    reads whitespace-separated ``--tensor-type`` values from it; the anchored patterns have no
    spaces, so nothing needs quoting).

    >>> print(*to_llamacpp_file(Recipe("m", "", {"model.layers.3.mlp.down_proj": "Q4_K"})))
    ^blk\\.3\\.ffn_down\\.weight$=q4_k
    """
    return [f"{gguf_tensor_pattern(n)}={ggml_type(o)}" for n, o in recipe.layers.items()]


# --------------------------------------------------------------------------- import


def import_recipe(path, model: str, model_hash: str, layers) -> Recipe:
    """An auto-round ``layer_config`` (AutoScheme's final one included) or a mixviz recipe,
    checked against the model's layers."""
    from mixviz.sensitivity.autoscheme import scheme_from_autoround

    doc = read_json(path, "recipe")
    if isinstance(doc, dict) and doc.get("format") == "mixviz.recipe":
        recipe = Recipe.from_dict(doc)
        if recipe.model_hash and model_hash and recipe.model_hash != model_hash:
            raise MixvizError(
                f"this recipe was made for {recipe.model!r} "
                f"(hash {recipe.model_hash}), not {model!r}"
            )
        recipe.validate(layers)
        return recipe
    if isinstance(doc, dict) and isinstance(doc.get("layer_config"), dict):
        doc = doc["layer_config"]
    if not isinstance(doc, dict) or not doc:
        raise MixvizError(
            "expected a mixviz recipe or an auto-round layer_config "
            "(a JSON object of layer name → scheme)"
        )
    out = {}
    for name, cfg in doc.items():
        if isinstance(cfg, str):
            out[name] = get_scheme(cfg).name
        elif isinstance(cfg, dict):
            if int(cfg.get("bits", 16)) >= 16:
                out[name] = "BF16"
            else:
                out[name] = scheme_from_autoround(cfg).name
        else:
            raise MixvizError(f"layer {name}: scheme must be a preset name or a dict")
    recipe = Recipe(model, model_hash, out, provenance={"imported_from": str(path)})
    recipe.validate(layers)
    return recipe
