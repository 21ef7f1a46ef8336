"""Where a model runs and in what precision: the one place that turns ``auto`` into a device.

``--device auto|cpu|cuda|cuda:N`` and ``--dtype auto|bfloat16|float16|float32`` are checked and
resolved here, and nowhere else in the package names a device (a test scans for it).
``auto`` is the first CUDA device in bfloat16 where one exists, else the CPU in float32 —
never a precision the CPU only emulates. bfloat16 asked for explicitly on a CPU without native
bfloat16 arithmetic (AVX2 only: no AVX512-BF16 or AMX) is honoured with one warning that gives
the measured slowdown (:func:`emulated_dtype_note`).

>>> check_device("cuda:1"), check_dtype("bf16")
('cuda:1', 'bfloat16')
>>> resolve_dtype("auto", "cpu")
torch.float32
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING

from mixviz.errors import MixvizError

if TYPE_CHECKING:
    import torch

CPU = "cpu"
CUDA = "cuda"
DEVICES = ("auto", CPU, CUDA, "cuda:N")
DTYPES = ("auto", "bfloat16", "float16", "float32")
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX512-BF16, AMX), Arm (FEAT_BF16)
_warned: set[str] = set()


def check_device(device: str) -> str:
    """``device`` as written, if it is one of :data:`DEVICES` (no torch needed), else an error."""
    d = (device or "").strip().lower()
    if not _DEVICE.match(d):
        raise MixvizError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return d


def check_dtype(dtype: str) -> str:
    """``dtype``'s canonical name among :data:`DTYPES` (``bf16`` → ``bfloat16``), else an error."""
    d = (dtype or "").strip().lower()
    d = _ALIASES.get(d, d)
    if d not in DTYPES:
        raise MixvizError(f"unknown dtype {dtype!r}: use {', '.join(DTYPES)}")
    return d


def cuda_index(device: str) -> int | None:
    """The CUDA index ``device`` names (``cuda`` → 0), or None for ``cpu``/``auto``, from the
    name alone (no torch): ``"cuda:2" -> 2``, ``"auto" -> None``."""
    d = check_device(device)
    if not d.startswith(CUDA):
        return None
    return int(d.split(":")[1]) if ":" in d else 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → ``cuda:0`` where CUDA is available, else the CPU; ``cuda``/``cuda:N`` must
    exist on this machine."""
    import torch

    d = check_device(device)
    if d == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device(CPU)
    if d == CPU:
        return torch.device(CPU)
    index = int(d.split(":")[1]) if ":" in d else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise MixvizError(f"device {device!r} does not exist: this machine has {have}")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 on the CPU. float16 on the CPU is refused: it is
    about 50× slower there than either of the others."""
    import torch

    d = check_dtype(dtype)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if d == "auto":
        d = "bfloat16" if dev.type == "cuda" else "float32"
    if d == "float16" and dev.type == CPU:
        raise MixvizError("float16 is about 50× slower on the CPU: use bfloat16 or float32")
    return getattr(torch, d)


def placement(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Both at once: ``(resolve_device(device), resolve_dtype(dtype, that device))``; warns once
    (the ``mixviz`` logger) when that is a precision this CPU only emulates."""
    dev = resolve_device(device)
    out = dev, resolve_dtype(dtype, dev)
    note = emulated_dtype_note(*out)
    if note and note not in _warned:
        _warned.add(note)
        logging.getLogger("mixviz").warning("mixviz: %s", note)
    return out


def cpu_bf16_native() -> bool:
    """Whether torch computes bfloat16 natively on this CPU: the CPU has AVX512-BF16 or AMX
    (x86) or BF16 (Arm) and torch's kernels may use it (``ATEN_CPU_CAPABILITY`` /
    ``ONEDNN_MAX_CPU_ISA`` not capped at AVX2). Where the flags cannot be read, a measured
    slowdown below 1.5× counts as native."""
    import os
    import platform

    import torch

    if platform.machine().lower() in ("x86_64", "amd64"):
        cap = torch.backends.cpu.get_cpu_capability().upper()
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
        if cap in ("DEFAULT", "AVX2") or not (isa == "ALL" or "BF16" in isa or "AMX" in isa):
            return False
    flags = _cpu_flags()
    return bool(flags & _BF16_FLAGS) if flags is not None else bf16_factor() < 1.5


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


@functools.cache
def bf16_factor() -> float:
    """How many times slower a linear layer of the demo's MLP shape (128×576 → 1536) runs in
    bfloat16 than in float32 on this CPU, measured once (best of 3, interleaved; ~0.1–0.5 s)."""
    import time

    import torch

    x, w = torch.randn(128, 576), torch.randn(1536, 576)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    for _ in range(3):
        for dt in best:
            a, b = x.to(dt), w.to(dt)
            torch.nn.functional.linear(a, b)  # warm
            t0 = time.perf_counter()
            for _ in range(3):
                torch.nn.functional.linear(a, b)
            best[dt] = min(best[dt], time.perf_counter() - t0)
    return best[torch.bfloat16] / best[torch.float32]


def emulated_dtype_note(device: torch.device, dtype: torch.dtype) -> str | None:
    """A warning when ``dtype`` on ``device`` is a precision the CPU only emulates (bfloat16
    without AVX512-BF16/AMX), with the slowdown measured here; None otherwise."""
    import torch

    if device.type != CPU or dtype != torch.bfloat16 or cpu_bf16_native():
        return None
    return (
        "this CPU has no native bfloat16 (AVX512-BF16 or AMX): torch emulates it, a linear layer "
        f"measured {bf16_factor():.1f}× slower than in float32 here (the rest slows too); "
        "--dtype float32 (or auto) is faster"
    )


def describe(device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """What a Profile records and keys on: ``("cuda", "bfloat16")``, ``("cpu", "float32")``.

    The device *type*, not its index: ``cuda:0`` and ``cuda:1`` give the same scores.
    """
    return device.type, str(dtype).removeprefix("torch.")


def on_cpu(device: torch.device) -> bool:
    return device.type == CPU


def cpu_device() -> torch.device:
    """The CPU, for code that must put something there (weights kept off the accelerator)."""
    import torch

    return torch.device(CPU)


def device_choices() -> list[str]:
    """What a menu offers on this machine: ``auto``, the CPU, then every CUDA device by index.

    >>> device_choices()[:2]
    ['auto', 'cpu']
    """
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", CPU, *(f"{CUDA}:{i}" for i in range(count))]


def autoround_amp(model) -> bool:
    """auto-round's ``amp`` for a model, so that it quantizes in the model's own precision.

    With ``amp=True`` auto-round casts the model to bfloat16 on any CPU that supports it
    (AVX512-BF16, AMX), so a float32 run would quietly become a bfloat16 one (and its BF16
    layers would lose precision); with ``amp=False`` it casts to float32. So: off for float32
    models, on for the others (whose dtype it then keeps)."""
    import torch

    return next(model.parameters()).dtype != torch.float32


def machine(device: torch.device, dtype: torch.dtype) -> dict:
    """Where a measurement was made, as a run records it beside its results: host, processor,
    cores, torch threads, device (with the GPU's name) and precision, and the peak memory so far
    (host RSS; GPU memory allocated by torch).

    >>> import torch
    >>> sorted(machine(torch.device("cpu"), torch.float32))[:4]
    ['cores', 'device', 'dtype', 'host']
    """
    import os
    import platform
    import resource

    import torch

    out = {
        "host": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if device.type == CUDA:
        out["gpu"] = torch.cuda.get_device_name(device)
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out
