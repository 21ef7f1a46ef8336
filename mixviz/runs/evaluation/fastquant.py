"""A faster, bit-identical MX activation fake-quantizer for evaluating auto-round's models.

auto-round leaves each MXFP4/MXFP8 layer wrapped so that every forward pass fake-quantizes its
input activations with ``auto_round.data_type.mxfp.quant_mx`` (the weights are quantized once,
at quantization time). On a CPU that function is about half of an evaluation's time: it
computes ``2.0 ** t`` twice, a float remainder for the ties and many temporaries.
:func:`~mixviz.sensitivity.quantizers.quant_mx_fast` (which the sensitivity metrics use for
weights and activations too) computes the same numbers bit for bit, 6–8× faster. Layers whose
settings it does not cover keep auto-round's.

q/k/v (and gate/up) quantize the *same* input tensor three (two) times in a row;
:class:`SameInput` hands the layers one function that remembers its last input and result, so a
decoder layer quantizes 4 activations instead of 7.
"""

from __future__ import annotations

import torch

from mixviz.sensitivity.quantizers import mx_format, plain_mx, quant_mx_fast

__all__ = ["SameInput", "quant_mx_fast", "use_fast_activation_quant", "use_fast_reload"]


class SameInput:
    """:func:`quant_mx_fast` that returns its last result again when called on the same tensor
    object, unchanged since (its version counter), with the same format.

    The input is held until the next call, so its memory cannot be reused by another tensor
    while it is remembered; a tensor without a version counter (made under
    ``torch.inference_mode``) is always quantized afresh.

    >>> q = SameInput()
    >>> x = torch.randn(2, 32)
    >>> fmt = {"bits": 4, "group_size": 32, "data_type": "mx_fp4"}
    >>> q(x, **fmt) is q(x, **fmt)
    True
    """

    def __init__(self) -> None:
        self.last: tuple | None = None

    def __call__(
        self, tensor: torch.Tensor, bits: int = 4, group_size: int = 32, data_type="mx_fp", **kw
    ):
        try:
            key = (tensor._version, bits, group_size, data_type)
        except RuntimeError:  # an inference tensor: no version counter to trust
            key = None
        last = self.last
        if key is not None and last is not None and last[0] is tensor and last[1] == key:
            return last[2]
        out = quant_mx_fast(tensor, bits=bits, group_size=group_size, data_type=data_type, **kw)
        self.last = None if key is None else (tensor, key, out)
        return out


def use_fast_activation_quant(model) -> int:
    """Give every MX-activation layer of an auto-round model :func:`quant_mx_fast` (one
    :class:`SameInput` for all); returns how many layers got it. Layers with calibrated
    activation ranges, non-unit scales or a non-MX activation type (NVFP4, INT) keep
    auto-round's function."""
    swapped, fast = 0, SameInput()
    for module in model.modules():
        layer = getattr(module, "orig_layer", None)
        if layer is None or not plain_mx(getattr(layer, "act_quant_func", None)):
            continue
        scales = (getattr(layer, "act_max_scale", 1.0), getattr(layer, "act_min_scale", 1.0))
        if getattr(layer, "act_max", None) is not None or any(float(s) != 1.0 for s in scales):
            continue
        if mx_format(str(layer.act_data_type), int(layer.act_bits)) is None:
            continue
        layer.act_quant_func = fast
        swapped += 1
    return swapped


def use_fast_reload(model) -> int:
    """Make a reloaded auto-round MX checkpoint compute as the in-memory model does: each
    ``MXFP4QuantLinear``/``MXFP8QuantLinear`` dequantizes its weight once (not on every
    forward) and quantizes its input with :func:`quant_mx_fast` (one :class:`SameInput` for
    all, so q/k/v share one quantization). The same numbers; returns how many layers changed.
    Layers whose activation function is not auto-round's plain ``quant_mx`` keep their own."""
    from auto_round.data_type.utils import get_quant_func

    swapped, fast = 0, SameInput()
    for module in model.modules():
        config = getattr(module, "config", None)
        if not (hasattr(module, "pre_dequantize") and hasattr(module, "qdq_input")):
            continue
        bits, group, dtype = config.act_bits, config.act_group_size, config.act_data_type
        func, _ = get_quant_func(dtype=dtype, bits=bits, sym=True)
        if not plain_mx(func) or mx_format(str(dtype), int(bits)) is None:
            continue
        module.pre_dequantize()
        module.qdq_input = _bound(fast, bits, group, dtype)
        swapped += 1
    return swapped


def _bound(fast: SameInput, bits: int, group_size: int, data_type: str):
    def qdq_input(activation: torch.Tensor) -> torch.Tensor:
        return fast(activation, bits=bits, group_size=group_size, data_type=data_type)[0]

    return qdq_input
