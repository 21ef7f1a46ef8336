"""Where a model runs and in what precision: the one place that turns ``auto`` into a device.

``--device auto|cpu|cuda|cuda:N`` and ``--dtype auto|bfloat16|float16|float32`` are checked and
resolved here, and nowhere else in the package names a device (a test scans for it).
``auto`` is the first CUDA device in bfloat16 where one exists, else the CPU in float32.

>>> check_device("cuda:1"), check_dtype("bf16")
('cuda:1', 'bfloat16')
>>> resolve_dtype("auto", "cpu")
torch.float32
"""

from __future__ import annotations

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
    """Both at once: ``(resolve_device(device), resolve_dtype(dtype, that device))``."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


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
