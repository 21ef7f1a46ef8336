"""Offloading: the model's weights stay on the CPU and each block visits the compute device only
while it runs (auto-round's ``low_gpu_mem_usage``), so a model larger than the device profiles.

A metric takes an :class:`Offload` and asks it to make a block resident, to move a block's
inputs to the device and its outputs back; :data:`NO_OFFLOAD` does none of that, so one code
path serves a model that sits wholly on its device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mixviz.models.device import cpu_device

if TYPE_CHECKING:
    import torch


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``module``'s parameters and buffers on ``device`` inside the ``with``, on the CPU after.

    ``Module.to`` swaps each parameter's ``.data``, so a parameter stays the same object (hooks
    on it survive); a weight replaced inside (a quantized copy) goes back to the CPU with it.
    """
    module.to(device)
    try:
        yield module
    finally:
        module.to(cpu_device())


def move(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (through tuples, lists and dicts) on ``device``.

    >>> import torch
    >>> move({"mask": None, "rope": (torch.ones(1),)}, torch.device("meta"))["rope"][0].device
    device(type='meta')
    """
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(move(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class Offload:
    """Where blocks run while the model stays on the CPU; ``device=None``: no offloading (the
    model is wholly on its device, and every method leaves things where they are)."""

    device: torch.device | None = None

    def resident(self, module: torch.nn.Module):
        """A context in which ``module`` is on the compute device (:func:`on_device`)."""
        return nullcontext(module) if self.device is None else on_device(module, self.device)

    def to(self, obj: Any) -> Any:
        """``obj`` on the compute device (a block's input, its keyword arguments, a gradient)."""
        return obj if self.device is None else move(obj, self.device)

    def home(self, obj: Any) -> Any:
        """``obj`` where stored states are kept: the CPU when offloading."""
        return obj if self.device is None else move(obj, cpu_device())

    def run(self, block: torch.nn.Module, hidden: torch.Tensor, kw: dict) -> torch.Tensor:
        """The block's output hidden states (on the compute device) for ``hidden`` and ``kw``."""
        out = block(self.to(hidden), **self.to(kw))
        return out[0] if isinstance(out, tuple) else out

    def run_all(self, block: torch.nn.Module, hiddens: list, kws: list) -> list:
        """The block's outputs for every window (``hiddens`` with their ``kws``), each kept
        where stored states are kept (:meth:`home`)."""
        return [self.home(self.run(block, h, kw)) for h, kw in zip(hiddens, kws, strict=True)]


NO_OFFLOAD = Offload()
