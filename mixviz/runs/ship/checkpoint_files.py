"""What a written checkpoint holds, read from its files: each layer's format and the bytes it
takes (safetensors headers and ``quantization_config``, or GGUF tensor types), against the
recipe's prediction."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.models.schemes import get_scheme, layer_bits
from mixviz.models.targets import gguf_option, gguf_tensor_name


def checkpoint_file(out: Path, fmt: str) -> Path:
    """The GGUF file, or the folder, a user points their runtime at."""
    if fmt != "gguf":
        return out
    files = sorted(out.glob("*.gguf"))
    if len(files) != 1:
        raise MixvizError(f"expected one .gguf file in {out}, found {len(files)}")
    return files[0]


def read_gguf_types(path: Path, names: list[str]) -> dict[str, tuple[str, int]]:
    """``{layer: (GGML type, bytes)}`` of each layer's weight tensor, read with GGUFReader."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    out = {}
    for name in names:
        t = tensors.get(gguf_tensor_name(name) + ".weight")
        out[name] = ("missing", 0) if t is None else (t.tensor_type.name, int(t.n_bytes))
    return out


def read_safetensors_layers(out: Path, names: list[str]) -> dict[str, dict[str, tuple]]:
    """``{layer: {tensor suffix: (dtype, shape, bytes)}}`` from the safetensors headers."""
    from safetensors import safe_open

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1, "I64": 8}
    sizes.update({"F8_E5M2": 1, "I16": 2, "U16": 2, "U32": 4, "BOOL": 1, "F8_E8M0": 1})
    tensors: dict[str, tuple] = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                shape = tuple(sl.get_shape())
                dtype = sl.get_dtype()
                tensors[key] = (dtype, shape, math.prod(shape) * sizes.get(dtype, 4))
    layers = {}
    for name in names:
        pre = name + "."
        layers[name] = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
    return layers


def _stored_bits(parts: dict[str, tuple], numel: int) -> float:
    """Bits per weight of a layer's weight tensor as stored (packed int32: its bits exactly)."""
    for key in ("qweight", "weight_packed", "weight"):
        if key in parts:
            return 8 * parts[key][2] / numel
    return 0.0


def read_formats(out: Path, fmt: str, plan: dict[str, str], layers) -> dict[str, dict]:
    """Per planned layer, what the files say it holds and whether that is what the plan asked:
    ``{name: {"asked", "found", "bytes", "ok"}}``."""
    numel = {x.name: x.numel for x in layers}
    found: dict[str, dict] = {}
    if fmt == "gguf":
        types = read_gguf_types(checkpoint_file(out, fmt), list(plan))
        widths = {x.name: x.in_features for x in layers}
        for name, option in plan.items():
            want = gguf_option(option)
            if name in widths:  # a K-type on a row its super-block does not divide: fallback
                want = get_scheme(want).written_as(widths[name])
            got, nbytes = types[name]
            ok = got == want if want != "BF16" else got in ("BF16", "F16", "F32")
            found[name] = {"asked": want, "found": got, "bytes": nbytes, "ok": ok}
        return found
    parts = read_safetensors_layers(out, list(plan))
    config = _quant_config(out)
    for name, option in plan.items():
        s = get_scheme(option)
        bits = _stored_bits(parts[name], numel[name])
        declared = _declared_bits(config, name, fmt)
        want = 16 if s.bits >= 16 else s.bits
        ok = (bits in (16.0, 32.0) if want == 16 else bits == want) and declared in (None, want)
        desc = f"{bits:g}-bit weights" + ("" if declared is None else f", config {declared}-bit")
        found[name] = {
            "asked": option,
            "found": desc,
            "bytes": sum(p[2] for p in parts[name].values()),
            "ok": ok,
        }
    return found


def _quant_config(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return {}


def _declared_bits(config: dict, name: str, fmt: str) -> int | None:
    """The bits the checkpoint's ``quantization_config`` declares for a layer (None: unsaid)."""
    import re

    if fmt == "auto_round":
        extra = (config.get("extra_config") or {}).get(name)
        bits = (extra or {}).get("bits", config.get("bits"))
        return None if bits is None else int(bits)
    if fmt == "auto_gptq":
        for key, value in (config.get("dynamic") or {}).items():
            rule, _, pattern = key.partition(":")
            if re.match(pattern, name):
                return 16 if rule == "-" else int(value.get("bits", config.get("bits")))
        return int(config["bits"]) if "bits" in config else None
    return None  # llm_compressor: the stored tensors say it


def sizes(formats: dict[str, dict], plan: dict[str, str], layers) -> dict:
    """Bytes the block linears take in the files against the recipe's prediction (exact bit
    counts ÷ 8): over all of them, and over the quantized ones (BF16 layers are stored in the
    run's precision, float32 on a CPU)."""
    shapes = {x.name: x for x in layers}

    def predicted(n: str) -> float:
        return layer_bits(get_scheme(plan[n]), shapes[n].in_features, shapes[n].out_features) / 8

    names = [n for n in plan if n in shapes]
    quantized = [n for n in names if get_scheme(plan[n]).bits < 16]
    total, q_total = sum(map(predicted, names)), sum(map(predicted, quantized))
    on_disk = sum(formats[n]["bytes"] for n in names)
    q_on_disk = sum(formats[n]["bytes"] for n in quantized)
    return {
        "predicted_bytes": total,
        "linear_bytes_on_disk": on_disk,
        "bytes_ratio": on_disk / total if total else None,
        "quantized_bytes_ratio": q_on_disk / q_total if q_total else None,
    }
