"""Quantize-dequantize with auto-round's own quantizers (its ``WrapperLinear``, RTN settings).

Nothing here implements a number format: auto-round does. We set a scheme's attributes on a
linear layer the way auto-round does before quantizing, wrap it in auto-round's
``WrapperLinear`` with tuning off, and ask it for the dequantized weight and, for formats that
quantize activations (MXFP4/8, NVFP4), for the activation quantizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mixviz.models.schemes import Scheme


def _scheme_attrs(scheme: Scheme) -> dict:
    from auto_round.schemes import PRESET_SCHEMES

    attrs = {k: v for k, v in PRESET_SCHEMES[scheme.name].to_dict().items()}
    # AutoScheme's own choice of scale dtype for scoring (delta_loss.get_score_for_scheme).
    attrs["scale_dtype"] = torch.bfloat16 if scheme.act_bits <= 8 else torch.float16
    return attrs


class LayerQuantizer:
    """auto-round's RTN quantizer for one layer at one scheme.

    >>> q = LayerQuantizer(torch.nn.Linear(64, 8), SCHEMES["MXFP4"])   # doctest: +SKIP
    >>> q.weight().shape, q.act is not None                            # doctest: +SKIP
    (torch.Size([8, 64]), True)
    """

    def __init__(self, linear: torch.nn.Linear, scheme: Scheme):
        from auto_round.wrapper import WrapperLinear

        self.scheme = scheme
        self._linear = linear
        if scheme.bits >= 16:  # BF16: kept as is
            return
        saved = {k: getattr(linear, k) for k in _scheme_attrs(scheme) if hasattr(linear, k)}
        for k, v in _scheme_attrs(scheme).items():
            setattr(linear, k, v)
        try:
            with torch.no_grad():
                self._wrapper = WrapperLinear(
                    linear,
                    enable_minmax_tuning=False,
                    enable_round_tuning=False,
                    enable_norm_bias_tuning=False,
                    enable_torch_compile=False,
                    disable_opt_rtn=True,
                    device=str(linear.weight.device),
                )
        finally:
            for k in _scheme_attrs(scheme):
                if k in saved:
                    setattr(linear, k, saved[k])
                elif hasattr(linear, k):
                    delattr(linear, k)
        self._linear_attrs = _scheme_attrs(scheme)

    @torch.no_grad()
    def weight(self) -> torch.Tensor:
        """Q(W): the dequantized weight, same dtype and shape as the original."""
        if self.scheme.bits >= 16:
            return self._linear.weight.detach().clone()
        one = torch.tensor(1.0, device=self._linear.weight.device)
        with _attrs(self._wrapper.orig_layer, self._linear_attrs):
            w, _, _ = self._wrapper._qdq_weight(torch.zeros_like(one), one, one)
        return w.detach()

    @property
    def act(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Q(x) for activations when the scheme quantizes them (act_bits ≤ 8), else None."""
        if self.scheme.act_bits > 8:
            return None
        wrapper, attrs = self._wrapper, self._linear_attrs

        def qdq(x: torch.Tensor) -> torch.Tensor:
            with _attrs(wrapper.orig_layer, attrs):
                y, _, _ = wrapper._qdq_act(x, wrapper.act_min_scale, wrapper.act_max_scale)
            return y.to(x.dtype)

        return qdq


class _attrs:
    """Temporarily set auto-round's per-layer attributes on a module."""

    def __init__(self, module, attrs: dict):
        self.module, self.attrs = module, attrs

    def __enter__(self):
        self.saved = {k: getattr(self.module, k) for k in self.attrs if hasattr(self.module, k)}
        for k, v in self.attrs.items():
            setattr(self.module, k, v)

    def __exit__(self, *exc):
        for k in self.attrs:
            if k in self.saved:
                setattr(self.module, k, self.saved[k])
            else:
                delattr(self.module, k)
