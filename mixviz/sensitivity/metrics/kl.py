"""``kl``, the ground truth: one layer at a time, the KL divergence of the next-token
distribution from the unquantized model's, averaged over tokens."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixviz.models.inventory import Layer
from mixviz.models.schemes import Scheme
from mixviz.sensitivity.blocks import capture_block_inputs, decoder_parts, head_of
from mixviz.sensitivity.metrics.common import Scores, Step, freeze, modules, untie_if_needed
from mixviz.sensitivity.metrics.registry import Metric
from mixviz.sensitivity.offload import NO_OFFLOAD, Offload

if TYPE_CHECKING:
    import torch


def kl(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 4,
    offload: Offload | None = None,
    around: dict[str, Scheme] | None = None,
) -> Scores:
    """KL(unquantized ‖ one layer quantized) of next-token distributions, mean over tokens.

    Keeps every block's input for the calibration tokens and the reference log-probabilities,
    so each (layer, option) costs one forward from that layer's block to the end, block after
    block (with ``offload``, each block on the device once per (layer, option)).

    ``around`` (layer → scheme: ``profile --around``) scores in context: the rest of the model
    at its schemes, the layer swapped in at each option, and the score is what that costs over
    the layer itself unquantized in the same context, ``KL(ref ‖ ctx, layer@o) − KL(ref ‖ ctx,
    layer@BF16)`` (one more pass per layer); the reference stays the unquantized model.
    """
    import torch

    off = offload or NO_OFFLOAD
    freeze(model)
    untie_if_needed(model, layers)
    blocks, _ = decoder_parts(model)
    head = head_of(model)
    mods = modules(model)
    scores: Scores = {}
    with torch.no_grad():
        states = capture_block_inputs(model, blocks, list(ids.split(batch_size)))
        inputs = [[h for h, _ in states]]
        kws = [kw for _, kw in states]
        for block in blocks:
            with off.resident(block):
                inputs.append(off.run_all(block, inputs[-1], kws))
        with off.resident(head) as (norm, lm_head):
            ref = [off.home(_log_probs(norm, lm_head, off.to(h))) for h in inputs[-1]]
        if around:
            return _kl_in_context(model, layers, schemes, step, _Rest(blocks, head, inputs,
                                  kws, ref, off), around, ids.numel())  # fmt: skip
        rest = _Rest(blocks, head, inputs, kws, ref, off)
        n_tokens = ids.numel()
        for x in layers:
            start = x.block if x.block is not None else len(blocks)
            for s in schemes:
                if s.bits >= 16:
                    scores[(x.name, s.name)] = 0.0
                    continue
                total = rest.kl_from(start, mods[x.name], s)
                scores[(x.name, s.name)] = max(total / n_tokens, 0.0)
                step(f"kl {x.name} {s.name}")
    return scores


def _kl_in_context(model, layers, schemes, step, rest: _Rest, around: dict, n_tokens: int):
    """:func:`kl`'s scores with the rest of the model at ``around`` (the blocks' inputs rerun
    in that context; the reference as it was)."""
    from dataclasses import replace

    from mixviz.models.schemes import get_scheme
    from mixviz.sensitivity.operating_point import at

    mods, off, bf16 = modules(model), rest.off, get_scheme("BF16")
    scores: Scores = {}
    with at(model, around) as point:
        inputs = [rest.inputs[0]]
        for block in rest.blocks:
            with off.resident(block):
                inputs.append(off.run_all(block, inputs[-1], rest.kws))
        ctx = replace(rest, inputs=inputs)
        for x in layers:
            start = x.block if x.block is not None else len(rest.blocks)
            lin = mods[x.name]
            with point.released(x.name):
                base = ctx.kl_from(start, lin, bf16)
                for s in schemes:
                    if s.bits >= 16:
                        scores[(x.name, s.name)] = 0.0
                        continue
                    total = ctx.kl_from(start, lin, s) - base
                    scores[(x.name, s.name)] = max(total / n_tokens, 0.0)
                    step(f"kl {x.name} {s.name} in context")
    return scores


def _log_probs(norm, lm_head, h: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.log_softmax(lm_head(norm(h)).double(), -1)


@dataclass(frozen=True)
class _Rest:
    """The unquantized model's pass over the calibration tokens, kept so that one quantized
    layer costs a forward from its own block on: the ``blocks`` and ``head``,
    ``inputs[b]`` (block ``b``'s inputs; the last, the head's), the blocks' keyword arguments
    ``kws``, the reference log-probabilities ``ref``, and the :class:`Offload` ``off``."""

    blocks: list
    head: torch.nn.Module  # the final norm and lm_head, as one module
    inputs: list[list]
    kws: list
    ref: list
    off: Offload

    def kl_from(self, start: int, lin, scheme: Scheme) -> float:
        """``Σ_tokens KL(ref ‖ model with lin at scheme)``, running blocks ``start``.. then the
        head; ``lin`` is quantized while its block is resident."""
        blocks, off, hs = self.blocks, self.off, self.inputs[start]
        total = 0.0
        for b in range(start, len(blocks) + 1):
            unit = blocks[b] if b < len(blocks) else self.head
            with off.resident(unit), _quantized(lin, scheme, b == start):
                if b < len(blocks):
                    hs = off.run_all(unit, hs, self.kws)
                    continue
                for h, r in zip(hs, self.ref, strict=True):
                    r = off.to(r)
                    logq = _log_probs(*unit, off.to(h))
                    total += (r.exp() * (r - logq)).sum().item()
        return total


@contextmanager
def _quantized(lin, scheme: Scheme, active: bool = True):
    """``lin`` at ``scheme`` inside the ``with`` (weight and, if the format has them, inputs),
    quantized on the device it is on now; a no-op when not ``active``."""
    from mixviz.sensitivity.quantizers import LayerQuantizer

    if not active:
        yield
        return
    q = LayerQuantizer(lin, scheme)
    original = lin.weight.data
    lin.weight.data = q.weight()
    qa = q.act
    hk = lin.register_forward_pre_hook(lambda mod, args: (qa(args[0]), *args[1:])) if qa else None
    try:
        yield
    finally:
        lin.weight.data = original
        if hk is not None:
            hk.remove()


METRIC = Metric(
    "kl",
    kl,
    4,
    lambda layers, schemes, nbatches, nblocks: len(layers) * sum(s.bits < 16 for s in schemes),
    "Ground truth: how far the next-token distribution moves with one layer quantized at "
    "a time (exact but slow).",
    offload=True,
    in_context="swap",
    meaning="KL divergence in nats per token of the next-token distribution from the "
    "unquantized model's, this layer alone in the format: the unit of a run's measured KLD",
    unit="nats per token",
)
