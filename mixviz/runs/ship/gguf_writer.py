"""Write a GGUF checkpoint the way llama.cpp users write theirs: llama.cpp's own converter, then
``llama-quantize --tensor-type-file … [--imatrix …]`` — so every tensor is quantized by the code
the profile simulated (:mod:`mixviz.models.ggml`), from the same float32 weights.

Where llama.cpp is not built, auto-round's GGUF exporter writes the file instead (the fallback),
and the ship document says which writer was used.
"""

from __future__ import annotations

import re
from pathlib import Path

from mixviz.models.file_size import embedding_type
from mixviz.models.schemes import get_scheme
from mixviz.models.targets import gguf_option, gguf_tensor_name
from mixviz.paths import atomic_write_bytes, safe_filename

LLAMA_QUANTIZE = "llama-quantize"
AUTO_ROUND = "auto-round"


def tensor_types(plan: dict[str, str]) -> str:
    """A ``--tensor-type-file``: one anchored ``PATTERN=TYPE`` line per planned layer.

    >>> print(tensor_types({"model.layers.3.mlp.down_proj": "Q4_K"}), end="")
    ^blk\\.3\\.ffn_down\\.weight$=q4_k
    """
    lines = []
    for name, option in plan.items():
        t = gguf_option(option)
        typ = "bf16" if get_scheme(t).bits >= 16 else t.lower()
        lines.append(f"^{re.escape(gguf_tensor_name(name) + '.weight')}$={typ}")
    return "\n".join(lines) + "\n"


def write_with_llamacpp(model_dir, model_hash: str, plan: dict[str, str], out: Path,
                        *, imatrix: str | None, n_embd: int, name: str) -> Path:  # fmt: skip
    """``out/<name>.gguf``, written by llama-quantize from llama.cpp's F32 conversion of the
    model: the plan's types per tensor, the embedding and output at :func:`embedding_type`,
    the importance matrix where one is given."""
    from mixviz.runs.ship import llamacpp

    src = llamacpp.bf16_gguf(model_dir, model_hash, outtype="f32")
    types = out.parent / f".{out.name}.tensor-types.txt"
    atomic_write_bytes(types, tensor_types(plan).encode())
    try:
        dst = out / f"{safe_filename(name)}.gguf"
        emb = embedding_type(n_embd)
        llamacpp.quantize(src, dst, "Q8_0", types, imatrix=imatrix, embedding_type=emb)
    finally:
        types.unlink(missing_ok=True)
    return dst


def write_gguf(ar, spec, loaded, out: Path, fallback_format: str) -> str:
    """Write ``spec``'s GGUF into ``out``: by llama-quantize where llama.cpp is built, else by
    auto-round (``ar.save_quantized(format=fallback_format)``); returns the writer's name."""
    from mixviz.models import ggml
    from mixviz.models.loading import resolve_model
    from mixviz.runs.ship import llamacpp

    if not (llamacpp.available() and ggml.available()):
        ar.save_quantized(str(out), format=fallback_format, inplace=True)
        return AUTO_ROUND
    ref = resolve_model(spec.model, trust_remote_code=spec.trust_remote_code)
    n_embd = int(getattr(loaded.model.config, "hidden_size", 0) or 0)
    write_with_llamacpp(ref.path, loaded.model_hash, loaded.plan, out, imatrix=spec.quant.imatrix,
                        n_embd=n_embd, name=spec.model)  # fmt: skip
    return LLAMA_QUANTIZE
