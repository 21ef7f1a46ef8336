"""Running a decoder block by block: its parts, its first block's inputs, and the causal-LM loss
backpropagated block by block with recomputation (what a metric with a backward pass does when
the model is offloaded, :mod:`mixviz.sensitivity.offload`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixviz.errors import MixvizError
from mixviz.models.inventory import Layer, block_list_name
from mixviz.sensitivity.offload import Offload

if TYPE_CHECKING:
    import torch

# on_block(index, backward): entered while block ``index`` (None: the final norm and lm_head) is
# on the device; it yields a callable run once per batch after the batch's backward, or None.
OnBlock = Callable[[int | None, bool], AbstractContextManager[Callable[[], None] | None]]


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (input capture)."""


def decoder_parts(model):
    """``(blocks, final norm)`` of a loaded decoder-only transformers model: its transformer
    block ``ModuleList`` and the norm before ``lm_head`` (None when it has none we know)."""
    name = block_list_name(model)
    if name is None:
        raise MixvizError("cannot find the transformer blocks of this model")
    blocks = dict(model.named_modules())[name]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = None
    for attr in ("norm", "final_layernorm", "ln_f"):
        norm = getattr(decoder, attr, None) if decoder is not None else None
        if norm is not None:
            break
    return blocks, norm


def by_block(layers: list[Layer]) -> dict[int | None, list[Layer]]:
    """Layers by block index, in the order given (None: outside the blocks, i.e. lm_head)."""
    out: dict[int | None, list[Layer]] = {}
    for x in layers:
        out.setdefault(x.block, []).append(x)
    return out


def head_of(model):
    """The final norm and ``lm_head`` as one module (moved to the device together)."""
    import torch

    _, norm = decoder_parts(model)
    if norm is None:
        raise MixvizError("cannot find the final norm before lm_head for this model")
    return torch.nn.ModuleList([norm, model.get_output_embeddings()])


def capture_block_inputs(model, blocks, parts: list[torch.Tensor]):
    """Run the model up to block 0 and keep, per part, its hidden states and keyword args.

    The embedding runs where the model's is (on the CPU when offloading), so do ``parts``.
    """
    import torch

    captured = []

    def grab(mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        captured.append((hidden.detach(), kw))
        raise _Stop

    h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for part in parts:
                try:
                    model(input_ids=part, use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
    return captured


@dataclass(frozen=True)
class Part:
    """Token windows backpropagated together: ``loss · scale`` is their share of the batch's
    loss; ``last`` marks the part that ends its batch."""

    ids: torch.Tensor
    scale: float = 1.0
    last: bool = True


def blockwise_backward(
    model, parts: list[Part], off: Offload, on_block: OnBlock, tick: Callable[[str], None]
) -> None:
    """Backpropagate each part's causal-LM loss through the model one block at a time.

    A forward pass under ``no_grad`` keeps every block's input (where ``off`` keeps states);
    the loss at the end (final norm, ``lm_head``, the model's own loss function) gives the
    gradient at the last block's output; then, from the last block to the first, each block's
    forward is recomputed from its stored input and backpropagated from the gradient of its
    output, which gives the gradient to hand to the block before. A weight's gradient is thus
    that of ``∂(loss · scale)/∂W`` for one part, as a whole-model backward would give it.
    ``tick`` is called once per block per pass and once for the head.
    """
    import torch

    blocks, _ = decoder_parts(model)
    head = head_of(model)
    states = capture_block_inputs(model, blocks, [p.ids for p in parts])
    kws = [kw for _, kw in states]
    inputs = [[h for h, _ in states]]
    with torch.no_grad():
        for b, block in enumerate(blocks):
            with off.resident(block), on_block(b, False):
                inputs.append(off.run_all(block, inputs[-1], kws))
            tick(f"block {b} forward")
    grads = []
    with off.resident(head), on_block(None, True) as end_batch:
        norm, lm_head = head
        for p, h in zip(parts, inputs.pop(), strict=True):
            h = off.to(h).detach().requires_grad_(True)
            logits = lm_head(norm(h))
            loss = model.loss_function(
                logits=logits, labels=off.to(p.ids), vocab_size=model.config.vocab_size
            )
            (loss * p.scale).backward()
            grads.append(off.home(h.grad))
            if p.last and end_batch:
                end_batch()
    tick("head")
    for b in reversed(range(len(blocks))):
        with off.resident(blocks[b]), on_block(b, True) as end_batch:
            for i, p in enumerate(parts):
                h = off.to(inputs[b][i]).detach().requires_grad_(True)
                off.run(blocks[b], h, kws[i]).backward(off.to(grads[i]))
                grads[i] = off.home(h.grad)
                if p.last and end_batch:
                    end_batch()
        inputs.pop()
        tick(f"block {b} backward")
