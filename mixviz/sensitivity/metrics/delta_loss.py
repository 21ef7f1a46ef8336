"""``delta_loss``, AutoScheme's score: per option, every layer at that option; per batch,
``Σ|∂L/∂Q(W) ⊙ (W − Q(W))|`` plus ``Σ|∂L/∂Q(x) ⊙ (x − Q(x))|`` when activations are quantized.

With ``offload``, each option's backward runs block by block with recomputation
(:mod:`mixviz.sensitivity.blocks`), giving the same scores.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from mixviz.models.inventory import Layer
from mixviz.models.schemes import Scheme
from mixviz.sensitivity.blocks import Part, blockwise_backward, by_block, decoder_parts
from mixviz.sensitivity.metrics.common import (
    Scores,
    Step,
    embeddings_require_grad,
    freeze,
    modules,
    pacer,
    untie_if_needed,
)
from mixviz.sensitivity.metrics.registry import Metric
from mixviz.sensitivity.offload import NO_OFFLOAD, Offload

if TYPE_CHECKING:
    import torch


def delta_loss(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 8,
    micro_batch: int = 1,
    offload: Offload | None = None,
) -> Scores:
    """AutoScheme's per-layer score, option by option (all layers at that option).

    As in AutoScheme, the weight term is ``|Σ_batch ∂L/∂Q(W) ⊙ ΔW|`` per batch of
    ``batch_size`` sequences; the batch's gradient is accumulated over micro-batches (loss
    scaled to the batch mean), so only one micro-batch's activations are held at a time.
    With ``offload``, each option's backward runs block by block
    (:func:`~mixviz.sensitivity.blocks.blockwise_backward`).
    """
    freeze(model)
    untie_if_needed(model, layers)
    mods = modules(model)
    batches = [_micro_parts(batch, micro_batch) for batch in ids.split(batch_size)]
    scores: Scores = {}
    for scheme in schemes:
        at = _AllAt(mods, layers, scheme)
        try:
            if offload is None:
                _delta_loss_whole(model, at, batches, step)
            else:
                _delta_loss_blockwise(model, at, batches, offload, step)
        finally:
            at.restore()
        scores.update({(n, scheme.name): v for n, v in at.acc.items()})
    return scores


def _micro_parts(batch: torch.Tensor, micro_batch: int) -> list[Part]:
    """``batch`` in micro-batches, each weighing its share of the batch's mean loss."""
    parts = batch.split(micro_batch)
    return [Part(p, len(p) / len(batch), i == len(parts) - 1) for i, p in enumerate(parts)]


def _delta_loss_whole(model, at: _AllAt, batches: list[list[Part]], step: Step) -> None:
    at.quantize(at.layers)
    h = embeddings_require_grad(model)
    try:
        for parts in batches:
            for p in parts:
                out = model(input_ids=p.ids, labels=p.ids, use_cache=False)
                (out.loss * p.scale).backward()
            at.accumulate(at.layers, NO_OFFLOAD)
            step(f"delta_loss {at.scheme.name}")
    finally:
        h.remove()


def _delta_loss_blockwise(
    model, at: _AllAt, batches: list[list[Part]], off: Offload, step: Step
) -> None:
    groups = by_block(at.layers)
    done: set = set()

    @contextmanager
    def on_block(b: int | None, backward: bool):
        todo = groups.get(b, [])
        if b not in done:  # quantized where the block runs, on its first visit
            at.quantize(todo)
            done.add(b)
        yield (lambda: at.accumulate(todo, off)) if backward else None

    nblocks = len(decoder_parts(model)[0])
    tick = pacer(step, len(batches), 2 * nblocks + 1, f"delta_loss {at.scheme.name}")
    blockwise_backward(model, [p for parts in batches for p in parts], off, on_block, tick)


class _AllAt:
    """Every layer at one option, for ``delta_loss``: weights swapped for Q(W) (with a gradient
    where quantized), inputs quantized for formats that quantize activations, and the score
    ``acc`` accumulated from each batch's gradients."""

    def __init__(self, mods: dict, layers: list[Layer], scheme: Scheme):
        self.mods, self.layers, self.scheme = mods, layers, scheme
        self.acc = {x.name: 0.0 for x in layers}
        # taken before anything moves: with offloading, the weights on the CPU
        self.originals = {x.name: mods[x.name].weight.data for x in layers}
        self.handles: list = []

    def quantize(self, layers: list[Layer]) -> None:
        """Quantize ``layers`` on the device they are on now (their quantizers live there)."""
        from mixviz.sensitivity.quantizers import LayerQuantizer

        for x in layers:
            lin = self.mods[x.name]
            q = LayerQuantizer(lin, self.scheme)
            lin.weight.data = q.weight()
            lin.weight.requires_grad_(self.scheme.bits < 16)
            if q.act is not None:
                hook = _act_abs_hook(self.acc, x.name, q.act)
                self.handles.append(lin.register_forward_pre_hook(hook))

    def accumulate(self, layers: list[Layer], off: Offload) -> None:
        """Add the batch's ``|∂L/∂Q(W) ⊙ (W − Q(W))|`` and drop the gradients."""
        import torch

        with torch.no_grad():
            for x in layers:
                w = self.mods[x.name].weight
                if w.grad is not None:
                    d = off.to(self.originals[x.name]) - w
                    self.acc[x.name] += (w.grad * d).abs().sum().item()
                    w.grad = None

    def restore(self) -> None:
        for h in self.handles:
            h.remove()
        for x in self.layers:
            lin = self.mods[x.name]
            lin.weight.requires_grad_(False)
            lin.weight.grad = None
            lin.weight.data = self.originals[x.name]


def _act_abs_hook(acc: dict, name: str, qdq):
    """Quantize the layer's input; accumulate ``Σ|∂L/∂Q(x) ⊙ (x − Q(x))|`` in backward.

    Q(x) is computed without autograd and passed straight through (``x + (Q(x) − x)``
    detached), so the graph keeps only ``x`` — the quantizer's intermediates would otherwise
    be saved for every linear and exhaust memory on a real model.
    """
    import torch

    def hook(mod, args):
        x = args[0]
        with torch.no_grad():
            diff = x - qdq(x)
        qx = x - diff
        if torch.is_grad_enabled() and qx.requires_grad:

            def on_grad(g):
                acc[name] += (g * diff).abs().sum().item()

            qx.register_hook(on_grad)
        return (qx, *args[1:])

    return hook


METRIC = Metric(
    "delta_loss",
    delta_loss,
    8,
    lambda layers, schemes, nbatches, nblocks: len(schemes) * nbatches,
    "AutoScheme's own score: |gradient × quantization error| with every layer in the "
    "format, one backward pass per format.",
    offload=True,
    meaning="|∂L/∂W·ΔW|, the first-order size of the change in mean token loss (nats) with "
    "every layer in the format, summed over the calibration batches",
    unit="≈ nats × calibration batches",
)
