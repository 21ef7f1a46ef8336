"""Test doubles for the worker's quantize step.

:func:`fake_quantize` does what auto-round does to a layer's attributes — sets ``bits``,
``group_size``, ``data_type`` and ``act_bits`` — without touching the weights, so the worker's
verify step and bit counting run on a model that *says* what it carries, in milliseconds.
"""

from __future__ import annotations

from mixviz.models.inventory import inventory
from mixviz.models.schemes import get_scheme
from mixviz.runs.evaluation.quantize import layer_plan


def mark(module, option: str) -> None:
    """Give ``module`` the attributes auto-round leaves on a layer quantized with ``option``."""
    s = get_scheme(option)
    if s.bits >= 16:
        return
    module.bits, module.group_size = s.bits, s.group_size
    module.data_type, module.act_bits = s.data_type, s.act_bits


def fake_quantize(model, tokenizer, spec, override: dict[str, dict] | None = None):
    """Mark every layer with its planned option; ``override`` then sets attributes by hand
    (``{layer: {"group_size": 64}}``) to plant a quantizer that got a layer wrong."""
    mods = dict(model.named_modules())
    for name, option in layer_plan(spec, inventory(model)).items():
        mark(mods[name], option)
    for name, attrs in (override or {}).items():
        for k, v in attrs.items():
            setattr(mods[name], k, v)
    return model


def tiny_llama(seed: int = 0, **config):
    """A 2-block random Llama (hidden 64, vocab 128) built from a config; ``config`` overrides
    ``LlamaConfig`` fields (``attention_bias=True``, ``tie_word_embeddings=False``, …)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **{
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            **config,
        }
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def wait_for(store, run_id: str, pred, timeout: float):
    """Poll the store until ``pred(row)`` holds for the run; fail after ``timeout`` seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        row = store.get(run_id)
        if pred(row):
            return row
        time.sleep(0.1)
    raise AssertionError(f"timed out; last {row}")
