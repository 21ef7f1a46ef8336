"""The scheme catalogue (candidate formats) and exact bit accounting, as auto-round counts it.

Option names are auto-round's own preset names (``W4A16`` is group 128, ``W4A16G64`` group 64,
``MXFP4``, ``NVFP4``, ``BF16`` ...), so a recipe's ``layer_config`` passes straight to auto-round.
Short aliases are accepted: ``W4G128`` → ``W4A16``, ``w2g64`` → ``W2A16G64``.

Bits per layer follow ``auto_round.auto_scheme.utils.compute_layer_bits`` exactly (a test checks
every scheme and layer shape against it). They are recomputed here rather than called because
importing auto-round costs ~10 s, too slow for a CLI ``info`` or a slider.

>>> layer_bits(SCHEMES["MXFP4"], 4096, 4096) / 4096**2
4.25
>>> layer_bits(SCHEMES["W4A16"], 4096, 4096, ignore_scale_bits=True) / 4096**2
4.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mixviz.errors import MixvizError


@dataclass(frozen=True)
class Scheme:
    """One candidate format: the fields of auto-round's ``QuantizationScheme`` that matter here."""

    name: str
    bits: int
    group_size: int
    data_type: str
    sym: bool = True
    act_bits: int = 16

    @property
    def label(self) -> str:
        """Short label for charts: ``W4 G64``, ``MXFP4``."""
        m = re.fullmatch(r"W(\d)A16(?:G(\d+))?", self.name)
        return f"W{m[1]} G{m[2] or 128}" if m else self.name

    @property
    def family(self) -> str:
        """``int``, ``mxfp``, ``nvfp`` or ``bf16``."""
        return {"int": "int", "mx_fp": "mxfp", "nv_fp": "nvfp", "fp": "bf16"}[self.data_type]

    def available_for(self, in_features: int) -> bool:
        """A grouped scheme needs its group size to divide the layer's in_features."""
        return self.bits >= 16 or in_features % self.group_size == 0


def _catalogue() -> dict[str, Scheme]:
    out: dict[str, Scheme] = {}
    for bits in (2, 3, 4, 8):
        for g in (128, 64, 32):
            name = f"W{bits}A16" + ("" if g == 128 else f"G{g}")
            out[name] = Scheme(name, bits, g, "int")
    out["MXFP4"] = Scheme("MXFP4", 4, 32, "mx_fp", act_bits=4)
    out["MXFP8"] = Scheme("MXFP8", 8, 32, "mx_fp", act_bits=8)
    out["NVFP4"] = Scheme("NVFP4", 4, 16, "nv_fp", act_bits=4)
    out["BF16"] = Scheme("BF16", 16, 128, "fp")
    return out


SCHEMES: dict[str, Scheme] = _catalogue()


def get_scheme(name: str) -> Scheme:
    """Look up an option by auto-round preset name or alias (case-insensitive).

    >>> get_scheme("w4g64").name
    'W4A16G64'
    """
    key = name.strip().upper()
    m = re.fullmatch(r"W(\d)G(\d+)", key)
    if m:
        key = f"W{m[1]}A16" + ("" if m[2] == "128" else f"G{m[2]}")
    if key not in SCHEMES:
        raise MixvizError(f"unknown option {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[key]


def parse_options(text: str | list[str]) -> list[Scheme]:
    """``"MXFP4,MXFP8"`` → schemes, sorted by bits (then name); duplicates refused."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n for n in (s.strip() for s in names) if n]
    if not names:
        raise MixvizError("no options given (e.g. --options MXFP4,MXFP8)")
    schemes = [get_scheme(n) for n in names]
    if len({s.name for s in schemes}) != len(schemes):
        raise MixvizError(f"option listed twice in {','.join(names)}")
    return sorted(schemes, key=lambda s: (s.bits, s.name))


def layer_bits(
    scheme: Scheme, in_features: int, out_features: int, *, ignore_scale_bits: bool = False
) -> int:
    """Total bits of one linear layer under ``scheme``, as auto-round's AutoScheme counts them.

    ``bits·numel + groups·(scale bits + zero-point bits)``: scales are 8 bits for MX/NV
    formats and 16 otherwise; integer formats count a zero point of ``bits`` even when
    symmetric. With ``ignore_scale_bits`` only ``bits·numel``.
    """
    numel = in_features * out_features
    if scheme.bits >= 16 or ignore_scale_bits:
        return scheme.bits * numel
    n_group = out_features * -(-in_features // scheme.group_size)
    scale_bits = 8 if scheme.data_type in ("mx_fp", "nv_fp") else 16
    zp_bits = scheme.bits if (not scheme.sym or "int" in scheme.data_type) else 0
    return scheme.bits * numel + n_group * (scale_bits + zp_bits)


def average_bits(layers, scheme: Scheme, *, ignore_scale_bits: bool = False) -> float:
    """Parameter-weighted average bits of ``scheme`` over ``layers``."""
    total = sum(
        layer_bits(scheme, x.in_features, x.out_features, ignore_scale_bits=ignore_scale_bits)
        for x in layers
    )
    return total / sum(x.numel for x in layers)


def unavailable_layers(layers, scheme: Scheme) -> list[str]:
    """Names of the layers whose in_features ``scheme``'s group size does not divide."""
    return [x.name for x in layers if not scheme.available_for(x.in_features)]
