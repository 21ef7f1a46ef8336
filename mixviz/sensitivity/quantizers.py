"""Quantize-dequantize with auto-round's own quantizers (its ``WrapperLinear``, RTN settings).

Nothing here defines a number format: auto-round does. We set a scheme's attributes on a
linear layer the way auto-round does before quantizing, wrap it in auto-round's
``WrapperLinear`` with tuning off, and ask it for the dequantized weight and, for formats that
quantize activations (MXFP4/8, NVFP4), for the activation quantizer.

One shortcut: for MXFP, whose quantize-dequantize is most of a fisher profile's time on a CPU
(auto-round's ``quant_mx`` computes ``2.0 ** t`` twice, a float remainder for the ties and many
temporaries), :func:`quant_mx_fast` computes the same numbers with ``exp2`` and ``round`` (ties
to even, as auto-round's ``"even"`` mantissa rounding) from the same ``log2``-based exponents:
equal bit for bit, 6–8× faster on a weight (``tests/sensitivity/test_fastquant.py`` checks it
against auto-round's function, ties and zeros included, and :class:`LayerQuantizer` against
auto-round's wrapper).

GGML types (``Q4_K``, ``IQ4_XS``, …) are not auto-round's to define either: they are
quantized by ggml's own C code (:mod:`mixviz.models.ggml`, the code ``llama-quantize`` runs),
as the type llama.cpp writes on the layer's rows (its fallback where the block does not
divide them), weighted by the layer's importance-matrix column where :func:`importance` gives
one — bit for bit the weight of the GGUF file.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from mixviz.models.schemes import Scheme


def mx_format(data_type: str, bits: int) -> tuple[int, int, int, float] | None:
    from auto_round.data_type.mxfp import MXFP_FORMAT_CACHE

    name = data_type if data_type in MXFP_FORMAT_CACHE else f"mx_fp{bits}"
    fmt = MXFP_FORMAT_CACHE.get(name)
    if fmt is None or fmt[0] == 0:  # mx_int*: no private exponent; keep auto-round's path
        return None
    ebits, mbits, emax, max_norm, _ = fmt
    return ebits, mbits, emax, max_norm


@torch.no_grad()
def quant_mx_fast(
    tensor: torch.Tensor, bits: int = 4, group_size: int = 32, data_type: str = "mx_fp", **kwargs
):
    """``quant_mx(tensor, bits, group_size, data_type=...)`` with ``v=0``, unit scales and
    even mantissa rounding — auto-round's activation settings — as ``(qdq, exponent, None)``.

    >>> x = torch.tensor([[0.3, -1.25, 2.5, 7.0] * 8])
    >>> quant_mx_fast(x, bits=4, group_size=32, data_type="mx_fp4")[0][0, :4].tolist()
    [0.5, -1.0, 2.0, 6.0]
    >>> quant_mx_fast(x.index_fill(1, torch.tensor([3]), torch.inf), 4, 32, "mx_fp4")[0][0, 0]
    tensor(nan)
    """
    fmt = mx_format(data_type, bits)
    if fmt is None or group_size <= 0 or tensor.shape[-1] % group_size:
        from auto_round.data_type.mxfp import quant_mx

        return quant_mx(tensor, bits=bits, group_size=group_size, data_type=data_type, **kwargs)
    ebits, mbits, emax, max_norm = fmt
    shape, dtype = tensor.shape, tensor.dtype
    t = tensor.reshape(-1, group_size).to(torch.float32)
    a = t.abs()  # magnitudes throughout: round-half-even and the clamps are symmetric
    max_val = a.amax(dim=-1, keepdim=True)
    shared = torch.where(max_val == 0, torch.ones_like(max_val), torch.log2(max_val)).floor_()
    # a group holding ±inf (an fp16 activation past 65504) has no exponent: NaN, as auto-round's
    # floor_ste makes it (inf − inf), so the whole group comes out NaN there too
    shared = shared.masked_fill_(shared.isinf(), float("nan"))
    shared = shared.sub_(emax).clamp_(-127.0, 127.0)
    scale = torch.exp2(shared)
    a = a.div_(scale).clamp_(max=max_norm)
    # a zero's exponent is -inf here (auto-round's is 0): clamped, and 0 stays 0 either way
    private = torch.log2(a).floor_().clamp_(min=-(2.0 ** (ebits - 1)) + 2)
    step = torch.exp2(private.sub_(mbits - 2))
    a = torch.round(a.div_(step)).mul_(step).clamp_(max=max_norm).mul_(scale)
    t = a.copysign_(t)
    return t.reshape(shape).to(dtype), shared.to(dtype), None


def _scheme_attrs(scheme: Scheme) -> dict:
    from auto_round.schemes import PRESET_SCHEMES

    attrs = {k: v for k, v in PRESET_SCHEMES[scheme.preset].to_dict().items()}
    # AutoScheme's own choice of scale dtype for scoring (delta_loss.get_score_for_scheme);
    # GGML types keep float32 scales, as auto-round's GGUF quantizers do
    attrs["scale_dtype"] = torch.bfloat16 if scheme.act_bits <= 8 else torch.float16
    if scheme.ggml:
        attrs["scale_dtype"] = torch.float32
    return attrs


_IMPORTANCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# ggml's quantized blocks kept per quantizer (4–9 bits a weight; dequantizing them is ~100×
# cheaper than quantizing, which for i-quants searches a grid), up to this many bytes in all
_GGML_BLOCKS_LEFT = [int(float(os.environ.get("MIXVIZ_GGML_CACHE_MB", "4096")) * 2**20)]


def _release(nbytes: int) -> None:
    _GGML_BLOCKS_LEFT[0] += nbytes


@contextmanager
def importance(model: torch.nn.Module, imatrix: dict | None) -> Iterator[None]:
    """Inside the ``with``, GGML types on ``model``'s linears are quantized with their
    importance-matrix column (``imatrix``: module name → one float per input feature, as
    :func:`mixviz.sensitivity.imatrix.for_layers` gives), as llama-quantize weights them."""
    mods = dict(model.named_modules())
    set_here = [mods[n] for n in (imatrix or {}) if n in mods]
    for name in imatrix or {}:
        if name in mods:
            _IMPORTANCE[mods[name]] = imatrix[name]
    try:
        yield None
    finally:
        for m in set_here:
            _IMPORTANCE.pop(m, None)


class LayerQuantizer:
    """auto-round's RTN quantizer for one layer at one scheme (ggml's for a GGML type).

    >>> q = LayerQuantizer(torch.nn.Linear(64, 8), SCHEMES["MXFP4"])   # doctest: +SKIP
    >>> q.weight().shape, q.act is not None                            # doctest: +SKIP
    (torch.Size([8, 64]), True)
    """

    def __init__(self, linear: torch.nn.Linear, scheme: Scheme):
        from auto_round.wrapper import WrapperLinear

        self.scheme = scheme
        self._linear = linear
        self.fast_weight = False
        if scheme.bits >= 16:  # BF16: kept as is
            return
        if scheme.ggml:  # ggml's own quantizer, as llama-quantize writes the layer
            from mixviz.models import ggml

            ggml.library()  # no silent substitute: say how to build it
            self._ggml = scheme.written_as(linear.in_features)
            self._imatrix = _IMPORTANCE.get(linear)
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
        # auto-round's own MX settings here: no tuning offset, unit scales, "even" rounding
        self.fast_weight = type(linear) is torch.nn.Linear and plain_mx(
            self._wrapper.weight_quant_func
        )
        self._fast_act = plain_mx(getattr(self._wrapper, "act_quant_func", None)) and all(
            float(s) == 1.0 for s in (self._wrapper.act_min_scale, self._wrapper.act_max_scale)
        )

    @torch.no_grad()
    def weight(self) -> torch.Tensor:
        """Q(W): the dequantized weight, same dtype and shape as the original."""
        if self.scheme.bits >= 16:
            return self._linear.weight.detach().clone()
        if self.scheme.ggml:
            return self._ggml_weight()
        if self.fast_weight:
            return self.weight_rows(self._linear.weight.detach())
        one = torch.tensor(1.0, device=self._linear.weight.device)
        with _attrs(self._wrapper.orig_layer, self._linear_attrs):
            w, _, _ = self._wrapper._qdq_weight(torch.zeros_like(one), one, one)
        return w.detach()

    def _ggml_weight(self) -> torch.Tensor:
        """ggml's Q(W), from the blocks kept after the first call while they fit the budget."""
        import numpy as np

        from mixviz.models import ggml
        from mixviz.models.device import cpu_device

        w = self._linear.weight
        blocks = getattr(self, "_blocks", None)
        if blocks is None:
            imx = None if self._imatrix is None else np.asarray(self._imatrix, np.float32)
            blocks = ggml.quantize(w.detach().to(cpu_device(), torch.float32).numpy(),
                                   self._ggml, imx)  # fmt: skip
            if blocks.nbytes <= _GGML_BLOCKS_LEFT[0]:
                _GGML_BLOCKS_LEFT[0] -= blocks.nbytes
                self._blocks = blocks
                weakref.finalize(self, _release, blocks.nbytes)
        deq = ggml.dequantize(blocks, self._ggml, w.shape[1])
        return torch.from_numpy(deq).to(w.device, w.dtype)

    @torch.no_grad()
    def weight_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Q of whole rows of W (``W[i:j]``), where :attr:`fast_weight`: an MX group lies
        within a row, so ``weight_rows(W[i:j])`` equals ``weight()[i:j]``.

        Lets a metric walk a large weight a cache-sized piece at a time; on this CPU that is
        2.6× faster on a 2048×6144 weight than the whole at once."""
        a = self._linear_attrs
        return quant_mx_fast(rows, a["bits"], a["group_size"], self._wrapper.data_type)[0]

    @property
    def act(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Q(x) for activations when the scheme quantizes them (act_bits ≤ 8), else None."""
        if self.scheme.act_bits > 8 or self.scheme.ggml:
            return None
        wrapper, attrs = self._wrapper, self._linear_attrs
        if self._fast_act:
            bits, group, dtype = attrs["act_bits"], attrs["act_group_size"], wrapper.act_data_type
            return lambda x: quant_mx_fast(x, bits, group, dtype)[0]

        def qdq(x: torch.Tensor) -> torch.Tensor:
            with _attrs(wrapper.orig_layer, attrs):
                y, _, _ = wrapper._qdq_act(x, wrapper.act_min_scale, wrapper.act_max_scale)
            return y.to(x.dtype)

        return qdq


def plain_mx(func) -> bool:
    """Whether auto-round would call its ``quant_mx`` with default settings (no activation
    scale set in its environment), which :func:`quant_mx_fast` reproduces."""
    import math

    import auto_round.envs as envs
    from auto_round.data_type.mxfp import quant_mx

    return func is quant_mx and math.isclose(envs.AR_ACT_SCALE, 1.0, rel_tol=1e-6)


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
