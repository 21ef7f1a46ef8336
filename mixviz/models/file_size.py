"""What a checkpoint file weighs, to the byte, before it is written — every tensor at the type
its writer gives it, plus the format's metadata.

A GGUF written by ``llama-quantize`` (:mod:`~mixviz.runs.ship.gguf_writer`) holds the allocated
layers at their GGML types (:func:`~mixviz.models.schemes.layer_bits`), ``token_embd`` /
``output`` at :func:`embedding_type` (llama.cpp's rule for the output tensor: Q6_K where 256 divides
the row, else Q8_0 — mixviz passes it to llama-quantize for both), 1-D tensors (norms) at F32, each
tensor's data aligned to 32 bytes, after the header (the key–values, the tokenizer among them,
and the tensor infos). A safetensors checkpoint (auto_round, auto_gptq, llm_compressor) holds
what is not allocated in the precision the run stored it in (float32 on a CPU, as the model
was loaded), plus its JSON headers and the tokenizer and config files beside it. Each format
packs a quantized layer its own way: auto_round exactly the bits
:func:`~mixviz.models.schemes.layer_bits` counts; auto_gptq those plus an int32 ``g_idx`` per
input feature (and a tied output head again, in float16); llm_compressor no zero points for a
symmetric integer layer (the bit count has one, :func:`layer_bytes`) but an int64
``weight_shape`` pair.

>>> embedding_type(576), embedding_type(4096)
('Q8_0', 'Q6_K')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mixviz.models.ggml import GGML_TYPES

GGUF_ALIGNMENT = 32
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# files a safetensors checkpoint carries beside its weights (save_pretrained and auto-round)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")  # fmt: skip
CONFIG_BYTES = 4_000  # config.json, generation_config.json, quantization_config.json
CONFIG_PER_LAYER = 60  # a mixed plan's per-layer entries in them (measured on tiny: ~7 KB / 28)
SAFETENSORS_ENTRY = 100  # one tensor's entry in the JSON header (name, dtype, shape, offsets)


def embedding_type(n_embd: int) -> str:
    """The GGML type of ``token_embd`` and ``output`` in the GGUF mixviz writes: llama.cpp's
    choice for the output tensor (src/llama-quant.cpp: Q6_K, or Q8_0 where 256 does not divide
    the row), given to llama-quantize for both."""
    return "Q6_K" if n_embd % 256 == 0 else "Q8_0"


def _ggml_bytes(typ: str, shape: tuple[int, ...]) -> int:
    t = GGML_TYPES[typ]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * -(-shape[-1] // t.block) * t.nbytes


def _pad(n: int, to: int = GGUF_ALIGNMENT) -> int:
    return -(-n // to) * to


def layer_bytes(fmt: str, scheme, in_features: int, out_features: int) -> int:
    """The bytes of one quantized linear layer's weight data (``scheme`` under 16 bits) in format
    ``fmt``: llm_compressor leaves a symmetric integer layer's zero points out. (What a format
    adds per layer besides — auto_gptq's ``g_idx``, llm_compressor's ``weight_shape`` — is in
    :func:`safetensors_overhead`.)

    >>> from mixviz.models.schemes import get_scheme
    >>> w4 = get_scheme("W4A16G32")
    >>> [layer_bytes(f, w4, 64, 8) for f in ("auto_round", "auto_gptq", "llm_compressor")]
    [296, 296, 288]
    """
    from mixviz.models.schemes import layer_bits

    n = layer_bits(scheme, in_features, out_features) // 8
    if fmt == "llm_compressor" and _drops_zero_points(scheme):
        return n - out_features * -(-in_features // scheme.group_size) * scheme.bits // 8
    return n


def _drops_zero_points(scheme) -> bool:
    """llm_compressor stores no zero point for a symmetric integer layer."""
    return scheme.data_type == "int" and scheme.sym and not scheme.ggml


@dataclass(frozen=True)
class Overhead:
    """Bytes a file holds besides the allocated layers' data, and what they are made of.
    ``zero_point_group``: the format leaves out the zero points the bit count has, for layers
    in groups of that size (llm_compressor; 0: it keeps what is counted)."""

    format: str
    bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    zero_point_group: int = 0

    def counted_bits(self, file_bits: float) -> float:
        """The average bits as the allocation counts them, of layers whose data in this file
        is ``file_bits`` per weight: with zero points left out in groups of G (bits ``b``, a
        16-bit scale), ``f = b + 16/G`` per weight in the file is ``b + (16 + b)/G`` counted.

        >>> Overhead("llm_compressor", 0, zero_point_group=32).counted_bits(4.5)
        4.625
        """
        g = self.zero_point_group
        return file_bits * (1 + 1 / g) - 16 / g**2 if g else file_bits


def _others(model, allocated: set[str]) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of every stored tensor outside the allocated layers (tied once)."""
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=True):
        module = name.rsplit(".", 1)[0]
        if module in allocated and name.endswith(".weight"):
            continue
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, tuple(p.shape)))
    return out


def gguf_overhead(model, allocated: set[str], header_bytes: int) -> Overhead:
    """A GGUF's bytes outside the allocated layers' data: embedding/output at
    :func:`embedding_type`, 1-D tensors at F32, the alignment, and ``header_bytes``."""
    n_embd = int(getattr(model.config, "hidden_size", 0) or 0)
    emb = embedding_type(n_embd)
    parts = {"header": _pad(header_bytes)}
    for name, shape in _others(model, allocated):
        typ = "F32" if len(shape) == 1 else emb
        key = f"{'norms and 1-D' if len(shape) == 1 else name} ({typ})"
        parts[key] = parts.get(key, 0) + _pad(_ggml_bytes(typ, shape))
    n_alloc = len(allocated)
    parts["alignment of the allocated tensors (at most)"] = n_alloc * GGUF_ALIGNMENT // 2
    return Overhead("gguf", sum(parts.values()), parts)


def gguf_header_bytes(gguf_file: str | Path | None, model, tokenizer_dir: str | Path) -> int:
    """The header (key–values and tensor infos) of the model's GGUF: read off llama.cpp's own
    conversion where there is one (exact), else estimated from the tokenizer and the tensors."""
    if gguf_file is not None and Path(gguf_file).is_file():
        import gguf

        r = gguf.GGUFReader(str(gguf_file))
        return int(r.data_offset) + 200  # + general.quantization_version, file type: written
    n = 2_000  # fixed key–values
    tok = Path(tokenizer_dir) / "tokenizer.json"
    if tok.is_file():
        doc = json.loads(tok.read_text())
        vocab = (doc.get("model") or {}).get("vocab") or {}
        merges = (doc.get("model") or {}).get("merges") or []
        n += sum(8 + len(t.encode()) + 4 for t in vocab)  # token strings + token types
        n += sum(8 + len((m if isinstance(m, str) else " ".join(m)).encode()) for m in merges)
        cfg = Path(tokenizer_dir) / "tokenizer_config.json"
        if cfg.is_file():
            n += len(json.loads(cfg.read_text()).get("chat_template") or "")
    for name, p in model.named_parameters():
        n += 8 + len(name) + 4 + 8 * p.dim() + 4 + 8
    return n


def safetensors_overhead(
    model,
    allocated: set[str],
    dtype: str,
    folder: str | Path,
    fmt: str = "auto_round",
    options: tuple[str, ...] = (),
    quantized: set[str] | None = None,
) -> Overhead:
    """A safetensors checkpoint's bytes outside the allocated layers' data, every allocated layer
    taken as quantized: the other tensors in the run's ``dtype``, what ``fmt`` adds per layer
    (auto_gptq's ``g_idx``, llm_compressor's ``weight_shape``), the JSON headers, and the
    tokenizer and config files. ``options``: the allocation's, for llm_compressor's
    ``zero_point_group`` (when they share one group size); ``quantized``: the allocated layers
    a plan quantizes (default: all; the others are one BF16 tensor each)."""
    quantized = set(allocated) if quantized is None else quantized
    width = DTYPE_BYTES.get(dtype, 4)
    others = _others(model, allocated)
    data = 0
    for _, shape in others:
        k = 1
        for d in shape:
            k *= d
        data += k * width
    parts = {f"other tensors ({dtype})": data}
    mods = dict(model.named_modules())
    if fmt == "auto_gptq":
        parts["g_idx (int32 per input feature)"] = sum(4 * mods[n].in_features for n in quantized)
        head = _tied_head(model, allocated)
        if head:  # measured on the demo: auto_gptq writes a tied head again, in float16
            parts["output head, untied (float16)"] = 2 * head
    if fmt == "llm_compressor":
        parts["weight_shape (int64 pair per layer)"] = 16 * len(quantized)
    entries = len(others) + len(allocated) + 3 * len(quantized)
    parts["safetensors headers"] = 8 + SAFETENSORS_ENTRY * entries
    side = sum(
        (Path(folder) / f).stat().st_size for f in SIDE_FILES if (Path(folder) / f).is_file()
    )
    parts["tokenizer files"] = side
    parts["config files"] = CONFIG_BYTES + CONFIG_PER_LAYER * len(quantized)
    group = _zero_point_group(options) if fmt == "llm_compressor" else 0
    return Overhead(fmt, sum(parts.values()), parts, group)


def _tied_head(model, allocated: set[str]) -> int:
    """The parameters of the model's output head when it shares the embedding's weight and is
    not allocated (else 0)."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out is not None else None
    if head is None or get_in is None or head.weight is not get_in().weight:
        return 0
    name = next((n for n, m in model.named_modules() if m is head), "")
    return 0 if name in allocated else head.weight.numel()


def _zero_point_group(options) -> int:
    """The group size of the options whose zero points llm_compressor leaves out, when they all
    share one (else 0: the budget keeps the count with zero points)."""
    from mixviz.models.schemes import get_scheme

    quantized = [get_scheme(o) for o in options if get_scheme(o).bits < 16]
    sizes = {s.group_size for s in quantized}
    return (
        sizes.pop()
        if quantized and len(sizes) == 1 and all(map(_drops_zero_points, quantized))
        else 0
    )


def overhead(
    model, allocated: set[str], fmt: str, *, dtype: str, folder, gguf_file=None, options=()
) -> Overhead:
    """:func:`gguf_overhead` or :func:`safetensors_overhead` for checkpoint format ``fmt`` of
    ``model`` (a meta model is enough) from the model folder ``folder``."""
    if fmt == "gguf":
        return gguf_overhead(model, allocated, gguf_header_bytes(gguf_file, model, folder))
    return safetensors_overhead(model, allocated, dtype, folder, fmt, tuple(options))


def predicted_bytes(
    model, plan: dict[str, str], fmt: str, *, dtype: str, folder, gguf_file=None
) -> int:
    """The bytes of the checkpoint that writes ``plan`` (layer → option) in format ``fmt``: the
    layers' bytes (:func:`layer_bytes`; BF16 layers of a safetensors file in the run's
    ``dtype``) plus :func:`overhead` of the quantized ones."""
    from mixviz.models.schemes import get_scheme, layer_bits
    from mixviz.models.targets import gguf_option

    if fmt == "gguf":  # a layer is written as its GGML equivalent (W4A16G32 → Q4_0): priced so
        plan = {name: gguf_option(option) for name, option in plan.items()}
    mods = dict(model.named_modules())
    data, quantized = 0, set()
    for name, option in plan.items():
        lin, s = mods[name], get_scheme(option)
        if fmt == "gguf":
            data += layer_bits(s, lin.in_features, lin.out_features) // 8
        elif s.bits >= 16:
            data += lin.in_features * lin.out_features * DTYPE_BYTES.get(dtype, 4)
        else:
            data += layer_bytes(fmt, s, lin.in_features, lin.out_features)
            quantized.add(name)
    if fmt == "gguf":
        over = overhead(model, set(plan), fmt, dtype=dtype, folder=folder, gguf_file=gguf_file)
    else:
        over = safetensors_overhead(model, set(plan), dtype, folder, fmt, quantized=quantized)
    return data + over.bytes
