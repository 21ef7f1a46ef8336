"""transformers' ``dequantize=True`` reloads a mixed compressed-tensors checkpoint wrong.

The tiny model quantized with auto-round (RTN) as W4A16G32 and W8A16G32 layers in turn, written
with ``save_quantized(format="llm_compressor")``: two ``pack-quantized`` config groups (4 and 8
bits), each naming its layers. Each layer's reloaded weight is compared with the in-memory
quantized one, for two loads of the same files:

- ``from_pretrained(dir)`` (compressed-tensors' own route: every module gets its group's
  scheme, decompressed on the first forward) — every layer matches;
- ``from_pretrained(dir, quantization_config=CompressedTensorsConfig(dequantize=True))`` —
  transformers' ``CompressedTensorsDequantize.convert`` (integrations/compressed_tensors.py)
  decompresses every dense module with ``get_dense_scheme(config)``, the *first* config group,
  whatever group names the module: the 8-bit layers are unpacked as 4-bit (relative error ≈ 1).

The files are right (unpacking a W8 layer's ``weight_packed`` at 8 bits gives the in-memory
weight); mixviz reloads through the first route. Seen with transformers 5.24.0,
compressed-tensors 0.20.0, auto-round 0.16.1.

    .venv/bin/python bench/llm_compressor_mix.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/ holds a profile.py that would shadow the standard library's (torch imports cProfile)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))


def main() -> int:
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    from mixviz.models.loading import resolve_model

    path = resolve_model("tiny").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    linears = model.named_modules()
    names = [n for n, m in linears if isinstance(m, torch.nn.Linear) and ".layers." in n]
    plan = {n: ("W4A16G32", "W8A16G32")[i % 2] for i, n in enumerate(names)}
    ar = AutoRound(model, tok, scheme="W4A16G32", layer_config=plan, iters=0,
                   disable_opt_rtn=True, enable_torch_compile=False, device_map="cpu")  # fmt: skip
    qmodel, _ = ar.quantize()
    memory = {n: m.weight.detach().clone() for n, m in qmodel.named_modules() if n in plan}
    out = Path(tempfile.mkdtemp(prefix="lc-mix-"))
    ar.save_quantized(str(out), format="llm_compressor", inplace=True)
    loads = {
        "from_pretrained(dir)": {},
        "dequantize=True": {"quantization_config": CompressedTensorsConfig(dequantize=True)},
    }
    print("| load | W4A16G32 layers: max rel. error | W8A16G32 layers: max rel. error |")
    print("|---|---|---|")
    for label, kwargs in loads.items():
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, **kwargs)
        if not kwargs:  # compressed-tensors unpacks on the first forward: do it now
            reloaded.hf_quantizer.compressor.decompress_model(reloaded)
        mods = dict(reloaded.named_modules())
        worst = {"W4A16G32": 0.0, "W8A16G32": 0.0}
        for name, option in plan.items():
            w = mods[name].weight.detach().float()
            err = float((w - memory[name]).norm() / memory[name].norm())
            worst[option] = max(worst[option], err)
        print(f"| {label} | {worst['W4A16G32']:.1e} | {worst['W8A16G32']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
