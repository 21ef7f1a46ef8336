"""The layer inventory: every quantizable linear of a model, with its block, kind and fused group.

>>> [l.name for l in inventory(meta)][:2]          # doctest: +SKIP
['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj']
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

KINDS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head", "other")

# Last name component → kind. Covers Llama/Qwen/Mistral/Gemma/Phi-3-style names and the
# w1/w2/w3 naming of Mixtral experts. A bare "gate" is a MoE router, not gate_proj: "other".
_KIND_OF = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "out_proj": "o",
    "gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up",
    "down_proj": "down", "w2": "down", "lm_head": "lm_head",
}  # fmt: skip
_FUSED = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
_BLOCK = re.compile(r"^(?P<prefix>.+?)\.(?P<n>\d+)\.")


@dataclass(frozen=True)
class Layer:
    """One quantizable linear layer."""

    name: str
    block: int | None
    kind: str
    in_features: int
    out_features: int
    numel: int
    group: str | None  # the vLLM-fused group ("qkv", "gate_up"), None when unfused

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Layer:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def kind_of(name: str) -> str:
    """The kind (one of :data:`KINDS`) of a linear, from the last component of its name.

    >>> kind_of("model.layers.3.mlp.down_proj"), kind_of("block_sparse_moe.gate")
    ('down', 'other')
    """
    return _KIND_OF.get(name.rsplit(".", 1)[-1], "other")


def fused_group(kind: str) -> str | None:
    """The group vLLM fuses a layer of ``kind`` into (``qkv``, ``gate_up``), or None.

    >>> fused_group("k"), fused_group("down")
    ('qkv', None)
    """
    return _FUSED.get(kind)


def inventory(model) -> list[Layer]:
    """All ``nn.Linear`` layers of ``model`` in module order (works on the ``meta`` device).

    Block index = the number after the model's block list (the largest ``ModuleList``), so
    ``model.layers.3.mlp.down_proj`` is block 3; layers outside it (``lm_head``) get ``None``.
    """
    import torch

    blocks_prefix = block_list_name(model)
    layers = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        block = None
        m = _BLOCK.match(name)
        if m and m["prefix"] == blocks_prefix:
            block = int(m["n"])
        kind = kind_of(name)
        if kind == "lm_head" and block is not None:
            kind = "other"
        layers.append(
            Layer(
                name=name,
                block=block,
                kind=kind,
                in_features=mod.in_features,
                out_features=mod.out_features,
                numel=mod.in_features * mod.out_features,
                group=fused_group(kind),
            )
        )
    return layers


def grid_columns(layers: list[Layer]) -> dict[str, str]:
    """The column of each block linear in a block × module grid: its kind, unless several
    layers of one block share that kind (Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` are
    both ``other``; MoE experts repeat ``gate``/``up``/``down``) — then every layer of that kind
    gets its path inside the block, so each layer is a cell of its own.

    >>> ls = [Layer(f"m.layers.0.{n}", 0, "other", 8, 8, 64, None) for n in ("a.qkv", "b.up")]
    >>> sorted(grid_columns(ls).values())
    ['a.qkv', 'b.up']
    """
    blocks = [x for x in layers if x.block is not None]
    seen: dict[tuple, int] = {}
    for x in blocks:
        seen[(x.block, x.kind)] = seen.get((x.block, x.kind), 0) + 1
    crowded = {k for (_, k), n in seen.items() if n > 1}
    return {x.name: _in_block(x.name) if x.kind in crowded else x.kind for x in blocks}


def _in_block(name: str) -> str:
    """``model.layers.3.self_attn.qkv_proj`` → ``self_attn.qkv_proj``."""
    m = _BLOCK.match(name)
    return name[m.end() :] if m else name


def block_linears(layers: list[Layer]) -> list[Layer]:
    """The layers inside transformer blocks (what auto-round quantizes by default)."""
    return [layer for layer in layers if layer.block is not None]


def block_list_name(model) -> str | None:
    """The dotted name of the model's transformer block list (its largest ``ModuleList``),
    e.g. ``model.layers``; None when the model has no ``ModuleList``."""
    import torch

    best, size = None, 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > size:
            best, size = name, len(mod)
    return best


def _fallbacks(blocks: list[Layer], s) -> dict[str, int]:
    """``{type: layers}`` a GGML type is written as where its block does not divide the row."""
    out: dict[str, int] = {}
    for x in blocks:
        t = s.written_as(x.in_features)
        if t != s.name:
            out[t] = out.get(t, 0) + 1
    return out


def inventory_report(model_name: str, layers: list[Layer]) -> dict:
    """The ``mixviz info --json`` document: layers, and per scheme the average bits over the
    block linears (parameter-weighted) in both accountings — a GGML type as llama.cpp writes it,
    its fallback where its block does not divide a row (``fallback``: how many layers) — the
    average over the layers it serves itself (``avg_bits_served``), and those it cannot serve.
    """
    from mixviz.models.schemes import SCHEMES, average_bits, unavailable_layers

    blocks = block_linears(layers)
    if not blocks:
        from mixviz.errors import MixvizError

        raise MixvizError(f"model {model_name!r} has no linear layers inside transformer blocks")

    def served(s) -> float | None:
        own = [x for x in blocks if s.available_for(x.in_features)]
        return round(average_bits(own, s), 6) if own else None

    schemes = {
        name: {
            "avg_bits": round(average_bits(blocks, s), 6),
            "avg_bits_no_scale": round(average_bits(blocks, s, ignore_scale_bits=True), 6),
            "avg_bits_served": served(s),
            "fallback": _fallbacks(blocks, s),
            "unavailable": unavailable_layers(layers, s),
        }
        for name, s in SCHEMES.items()
    }
    return {"model": model_name, "layers": [x.to_dict() for x in layers], "schemes": schemes}
