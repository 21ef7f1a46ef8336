"""Imported at start-up by every Python whose PYTHONPATH holds this folder: mixviz reloads an
llm_compressor checkpoint through transformers' ``dequantize=True`` route, which decompresses
every layer with the first config group's scheme (bench/llm_compressor_mix.py) — a checkpoint
that reloads wrong, for the test that the ship step catches one."""

from mixviz.runs.ship import reload as _reload

_original = _reload.reload


def _dequantize_on_load(out, spec, plan):
    if spec.ship.format != "llm_compressor":
        return _original(out, spec, plan)
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    config = CompressedTensorsConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, quantization_config=config
    )
    return model.eval()


_reload.reload = _dequantize_on_load
