"""The operating point: a model's linears held at chosen formats while something is measured.

``at(model, plan)`` quantize-dequantizes every layer of ``plan`` (a full module name → scheme)
with auto-round's own RTN quantizers (:class:`~mixviz.sensitivity.quantizers.LayerQuantizer`):
its weight, and for formats that quantize activations its input. Inside the ``with`` the model
computes as the quantized model does; on exit every weight and hook is as before.

``straight_through=True`` leaves each weight's *value* the original ``W`` and computes with
``W + (Q(W) − W)`` detached, so a gradient taken inside is the gradient at the quantized model
(what ``profile --around`` needs for fisher) while a metric still reads the original weight to
price its own options. :meth:`OperatingPoint.released` takes one layer out of the point for a
moment (``kl`` swaps the scored layer in and out of its context that way). Straight through,
activations too pass their gradient as if the quantizer were the identity.

>>> import torch
>>> from mixviz.models.schemes import get_scheme
>>> lin = torch.nn.Linear(64, 4, bias=False); m = torch.nn.Sequential(lin)
>>> w = lin.weight.detach().clone()
>>> with at(m, {"0": get_scheme("MXFP4")}):
...     changed = not torch.equal(m(torch.ones(1, 64)), torch.ones(1, 64) @ w.T)
>>> changed, torch.equal(lin.weight, w)
(True, True)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from mixviz.models.schemes import Scheme

if TYPE_CHECKING:
    import torch


class OperatingPoint:
    """What :func:`at` changed, so it can be undone (and one layer released for a moment)."""

    def __init__(
        self,
        model,
        plan: dict[str, Scheme],
        straight_through: bool = False,
        cache: dict | None = None,
    ):
        self.mods = dict(model.named_modules())
        self.cache = {} if cache is None else cache
        self.plan = {n: s for n, s in plan.items() if s.bits < 16}
        self.straight_through = straight_through
        self._undo: dict[str, list] = {}

    def apply(self, name: str) -> None:
        from mixviz.sensitivity.quantizers import LayerQuantizer

        lin, scheme = self.mods[name], self.plan[name]
        hit = self.cache.get((name, scheme.name))
        if hit is None:
            q = LayerQuantizer(lin, scheme)
            hit = self.cache[(name, scheme.name)] = (q.weight(), q.act)
        qw, qa = hit
        if self.straight_through:
            undo: list = [_Forward(lin, (qw - lin.weight.detach()).detach())]
        else:
            undo = [_Restore(lin, lin.weight.data)]
            lin.weight.data = qw
        if qa is not None:
            undo.append(lin.register_forward_pre_hook(_act_hook(qa, self.straight_through)))
        self._undo[name] = undo

    def remove(self, name: str) -> None:
        for h in reversed(self._undo.pop(name, [])):
            h.remove()

    def close(self) -> None:
        for name in list(self._undo):
            self.remove(name)

    @contextmanager
    def released(self, name: str):
        """``name`` at its original weight inside the ``with`` (a no-op if not in the plan)."""
        if name not in self._undo:
            yield
            return
        self.remove(name)
        try:
            yield
        finally:
            self.apply(name)


def _act_hook(qa, straight_through: bool):
    """A pre-hook quantizing the layer's input; straight through, the gradient passes to the
    unquantized input as if the quantizer were the identity (its value is ``Q(x)``)."""

    def hook(mod, args):
        x = args[0]
        q = qa(x)
        if straight_through and x.requires_grad:
            q = x + (q - x).detach()
        return (q, *args[1:])

    return hook


class _Restore:
    def __init__(self, lin, original):
        self.lin, self.original = lin, original

    def remove(self) -> None:
        self.lin.weight.data = self.original


class _Forward:
    """``lin`` computing with ``W + delta`` (``delta`` a constant) until removed: its value
    stays ``W``, its gradient is the gradient at ``W + delta``."""

    def __init__(self, lin, delta: torch.Tensor):
        import torch.nn.functional as F

        self.lin = lin
        lin.forward = lambda x: F.linear(x, lin.weight + delta, lin.bias)

    def remove(self) -> None:
        del self.lin.forward


@contextmanager
def at(model, plan: dict[str, Scheme], straight_through: bool = False, cache: dict | None = None):
    """``model`` with the layers of ``plan`` at their schemes inside the ``with`` (module doc);
    yields the :class:`OperatingPoint`. ``cache`` (a dict the caller keeps) holds each
    layer's ``Q(W)`` and activation quantizer between calls, keyed by (name, scheme)."""
    point = OperatingPoint(model, plan, straight_through, cache)
    try:
        for name in point.plan:
            point.apply(name)
        yield point
    finally:
        point.close()
