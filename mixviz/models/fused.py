"""Which modules a serving runtime fuses (vLLM, SGLang: ``qkv_proj``, ``gate_up_proj``), read
from its model definitions, and what a recipe gives their parts.

A fused module is one linear at load time, so it takes one format: :func:`split_groups` says
which groups a recipe splits; :func:`shared_fused` names the fused modules whose parts share
one option, for the writers whose per-layer overrides the runtime looks up by the fused name.

>>> p = "model.layers.5.self_attn."
>>> split_groups({p + "q_proj": "W8A16G64", p + "k_proj": "W4A16G64", p + "v_proj": "W4A16G64"})
['block 5: q_proj W8A16G64 vs k_proj/v_proj W4A16G64']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mixviz.models.schemes import get_scheme


@dataclass(frozen=True)
class Fused:
    """One linear a runtime builds from several of the checkpoint's: the inventory's group
    (``Layer.group``), the runtime's module name, and the checkpoint's parts it packs."""

    group: str
    module: str
    parts: tuple[str, ...]


_LLAMA_PACKED = (
    Fused("qkv", "qkv_proj", ("q_proj", "k_proj", "v_proj")),
    Fused("gate_up", "gate_up_proj", ("gate_proj", "up_proj")),
)
PACKED_SOURCE = (
    "vLLM's model definitions: `packed_modules_mapping = {'qkv_proj': ['q_proj', 'k_proj', "
    "'v_proj'], 'gate_up_proj': ['gate_proj', 'up_proj']}` (vllm/model_executor/models/llama.py "
    "LlamaForCausalLM; qwen2.py, qwen3.py, mistral via llama.py, gemma2.py, gemma3.py alike); "
    "phi3.py's checkpoint is fused already (qkv_proj, gate_up_proj) and packs nothing more"
)
PACKED_MODULES: dict[str, tuple[Fused, ...]] = {
    **dict.fromkeys(
        (
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
        ),
        _LLAMA_PACKED,
    ),
    "Phi3ForCausalLM": (),
}
"""The fused modules vLLM/SGLang build for an architecture (``config.architectures[0]``);
one not listed is taken as Llama-like (:data:`PACKED_SOURCE`)."""


def packed_modules(architecture: str | None = None) -> tuple[Fused, ...]:
    """The fused modules of ``architecture`` (Llama's for an unknown or unnamed one).

    >>> [f.module for f in packed_modules("Qwen2ForCausalLM")], packed_modules("Phi3ForCausalLM")
    (['qkv_proj', 'gate_up_proj'], ())
    """
    return PACKED_MODULES.get(architecture or "", _LLAMA_PACKED)


def fused_modules(names, architecture: str | None = None) -> dict[str, tuple[str, ...]]:
    """The fused modules the runtime builds over these layer names → the parts it packs, for
    each module whose every part is among ``names``.

    >>> p = "model.layers.3.self_attn."
    >>> fused = fused_modules([p + "q_proj", p + "k_proj", p + "v_proj", p + "o_proj"])
    >>> {k: [v.rsplit(".", 1)[1] for v in vs] for k, vs in fused.items()}
    {'model.layers.3.self_attn.qkv_proj': ['q_proj', 'k_proj', 'v_proj']}
    """
    order = list(dict.fromkeys(names))
    names = set(order)
    out = {}
    for name in order:
        parent, _, last = name.rpartition(".")
        for f in packed_modules(architecture):
            if last == f.parts[0]:
                parts = tuple(f"{parent}.{p}" if parent else p for p in f.parts)
                if all(p in names for p in parts):
                    out[f"{parent}.{f.module}" if parent else f.module] = parts
    return out


def shared_fused(plan: dict[str, str], architecture: str | None = None) -> dict[str, str]:
    """Each fused module whose parts the plan gives one option → that option (canonical name).
    Where a writer names layers one by one, it names these too: vLLM looks its fused layers up
    by the fused name (``…self_attn.qkv_proj``; :data:`OVERRIDE_SOURCE`).

    >>> p = "model.layers.0.mlp."
    >>> shared_fused({p + "gate_proj": "W8A16G64", p + "up_proj": "W8A16G64"})
    {'model.layers.0.mlp.gate_up_proj': 'W8A16G64'}
    """
    out = {}
    for fused, parts in fused_modules(plan, architecture).items():
        options = {get_scheme(plan[p]).name for p in parts}
        if len(options) == 1:
            out[fused] = options.pop()
    return out


OVERRIDE_SOURCE = (
    "vllm/model_executor/layers/quantization/utils/gptq_utils.py: get_linear_quant_method "
    "matches GPTQ `dynamic` with re.match(pattern, prefix) where prefix is the fused module "
    "(`model.layers.3.self_attn.qkv_proj`), so a per-projection pattern never matches it"
)


def split_groups(plan: dict[str, str], architecture: str | None = None) -> list[str]:
    """The fused modules whose parts the plan gives different options, said as a user reads it.

    >>> p = "model.layers.5.self_attn."
    >>> split_groups({p + "q_proj": "W8A16G64", p + "k_proj": "W4A16G64", p + "v_proj": "W4A16G64"})
    ['block 5: q_proj W8A16G64 vs k_proj/v_proj W4A16G64']
    """
    out = []
    for fused, parts in fused_modules(plan, architecture).items():
        by_option: dict[str, list[str]] = {}
        for p in parts:
            by_option.setdefault(get_scheme(plan[p]).name, []).append(p.rsplit(".", 1)[-1])
        if len(by_option) > 1:
            m = re.search(r"\.(\d+)\.", fused)
            where = f"block {m[1]}" if m else fused.rsplit(".", 1)[0]
            said = " vs ".join(f"{'/'.join(ps)} {o}" for o, ps in by_option.items())
            out.append(f"{where}: {said}")
    return out
