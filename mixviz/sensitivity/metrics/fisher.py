"""``fisher``: one backward pass at the unquantized model, shared by all options.

Summed over batches (of one sequence by default) of the mean token loss,
``½ Σ (∂L/∂W ⊙ ΔW)²`` over the weight's elements, plus ``½ Σ (∂L/∂x ⊙ (x − Q(x)))²`` over the
layer's own input for formats that quantize activations. With ``offload``, the backward runs
block by block with recomputation (:mod:`mixviz.sensitivity.blocks`), giving the same scores.
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
from mixviz.sensitivity.offload import Offload

if TYPE_CHECKING:
    import torch


def fisher(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 1,
    offload: Offload | None = None,
) -> Scores:
    """Diagonal empirical Fisher at the unquantized model, one backward shared by all options.

    Per batch of ``batch_size`` sequences, ``g`` is the gradient of the batch's mean token loss;
    a layer's score for an option is ``½ Σ_batches Σ (g_W ⊙ ΔW)²`` plus, for formats that
    quantize activations, ``½ Σ_batches Σ (g_x ⊙ (x − Q(x)))²`` with ``g_x`` the gradient at
    this layer's own input (not summed over the other layers fed the same tensor).

    Memory stays that of the model: each batch's ``g_W`` is consumed as soon as autograd has
    it (a hook scores every option from it and drops it), so one layer's gradient exists at a
    time. MX formats keep nothing per weight: their ``Q(W)`` is recomputed in the hook, a few
    rows at a time (:func:`~mixviz.sensitivity.quantizers.quant_mx_fast`); other formats keep
    auto-round's ``Q(W)`` between batches only while it fits in half the bytes of the weights.
    With ``offload``, the backward runs block by block with recomputation
    (:func:`~mixviz.sensitivity.blocks.blockwise_backward`). Layers fed one input share its
    ``(x − Q(x))²``.
    """
    freeze(model)
    untie_if_needed(model, layers)
    mods = modules(model)
    acc = {(x.name, s.name): 0.0 for x in layers for s in schemes}
    parts = [Part(batch) for batch in ids.split(batch_size)]
    if offload is None:
        h = embeddings_require_grad(model)
        try:  # a step per batch's forward and per layer scored in its backward: the bar moves
            with _fisher_hooks(mods, layers, schemes, acc, lambda: step("fisher backward")):
                for i, p in enumerate(parts, 1):
                    out = model(input_ids=p.ids, labels=p.ids, use_cache=False)
                    step(f"fisher forward {i}/{len(parts)}")
                    out.loss.backward()
                    del out
        finally:
            h.remove()
    else:
        groups = by_block(layers)

        def on_block(b: int | None, backward: bool):
            todo = groups.get(b, []) if backward else []
            return _fisher_hooks(mods, todo, schemes, acc)

        nblocks = len(decoder_parts(model)[0])
        tick = pacer(step, _units(layers, len(parts)), 2 * nblocks + 1, "fisher")
        blockwise_backward(model, parts, offload, on_block, tick)
    return {k: 0.5 * v for k, v in acc.items()}


def _units(layers: list[Layer], nbatches: int) -> int:
    """Fisher's work units: per batch, its forward and each layer's scored gradient."""
    return nbatches * (1 + len(layers))


@contextmanager
def _fisher_hooks(mods: dict, layers: list[Layer], schemes: list[Scheme], acc: dict, on_layer=None):
    """Score ``layers`` from every gradient autograd gives their weights (and, for formats that
    quantize activations, their inputs) inside the ``with``; quantizers are built on entry,
    on the device the layers are on then. ``on_layer()`` after each layer's gradient is
    scored."""
    from mixviz.sensitivity.quantizers import LayerQuantizer

    quant = {(x.name, s.name): LayerQuantizer(mods[x.name], s) for x in layers for s in schemes}
    act_schemes = [s for s in schemes if s.act_bits <= 8]
    # auto-round's Q(W) (integer formats, NVFP4) is kept between batches while it fits in half
    # the layers' weight bytes, else recomputed; MX formats recompute theirs (cheaply, in
    # pieces). (A float32 ΔW cache as large as the weights took fisher's peak on a 0.5 B model
    # to 2.9× its weights: over issue 15's 2.0× + 1.5 GB; bench/scale.py.)
    cache = _QCache(sum(mods[x.name].weight.nbytes for x in layers) // 2)
    shared: dict = {}  # (x − Q(x))² of the last input, per option: q/k/v and gate/up share one
    handles = []
    try:
        for x in layers:
            w = mods[x.name].weight
            w.requires_grad_(True)
            qs = {s.name: quant[(x.name, s.name)] for s in schemes if s.bits < 16}
            handles.append(
                w.register_post_accumulate_grad_hook(_score_hook(acc, x.name, qs, cache, on_layer))
            )
            if act_schemes:
                qa = {s.name: quant[(x.name, s.name)].act for s in act_schemes}
                hook = _act_sq_hook(acc, x.name, qa, shared)
                # first: it sees the input before an operating point's own quantizer (--around)
                handles.append(mods[x.name].register_forward_pre_hook(hook, prepend=True))
        yield None
    finally:
        for h in handles:
            h.remove()
        for x in layers:
            mods[x.name].weight.requires_grad_(False)
            mods[x.name].weight.grad = None


class _QCache(dict):
    """Q(W) per (layer, option) for formats computed whole by auto-round (integer, NVFP4),
    kept while within ``budget`` bytes."""

    def __init__(self, budget: int):
        super().__init__()
        self.left = budget

    def delta_sq(self, key, w: torch.Tensor, q) -> torch.Tensor:
        """``(W − Q(W))²`` in float32, flattened; ``w`` is W in float32."""
        qw = self.get(key)
        if qw is None:
            qw = q.weight()
            if qw.nbytes <= self.left:
                self[key], self.left = qw, self.left - qw.nbytes
        return (w - qw.float()).square_().view(-1)


# Elements of a weight per piece on a CPU: the piece, its gradient and the quantizer's
# temporaries then stay in a 1 MB L2 cache (2.6× faster than the whole at 2048×6144).
_CPU_PIECE = 1 << 17


def _score_hook(acc: dict, name: str, quants: dict, cache: _QCache, on_layer=None):
    """Add this batch's ``Σ g² ⊙ (W − Q(W))²`` to every option's score, then drop ``g``.

    MX formats recompute Q(W) every batch, a few rows at a time on a CPU
    (:meth:`~mixviz.sensitivity.quantizers.LayerQuantizer.weight_rows`), so they keep nothing;
    other formats' Q(W) comes whole from auto-round, kept in ``cache`` while it fits.
    """
    import torch

    pieces = {s: q for s, q in quants.items() if q.fast_weight}
    whole = {s: q for s, q in quants.items() if not q.fast_weight}

    def hook(p: torch.Tensor) -> None:
        with torch.no_grad():
            grad, w, sums = p.grad, p.detach(), {}
            p.grad = None
            rows = max(1, _CPU_PIECE // w.shape[-1]) if w.is_cpu else w.shape[0]
            for gs, ws in zip(grad.split(rows), w.split(rows), strict=True) if pieces else ():
                g2, wf = gs.float().square().view(-1), ws.float()
                for sname, q in pieces.items():
                    d2 = (wf - q.weight_rows(ws).float()).square_().view(-1)
                    sums[sname] = sums.get(sname, 0.0) + torch.dot(g2, d2)
            if whole:
                g2, wf = grad.float().square().view(-1), w.float()
                for sname, q in whole.items():
                    sums[sname] = torch.dot(g2, cache.delta_sq((name, sname), wf, q))
            for sname, v in sums.items():
                acc[(name, sname)] += float(v)
        if on_layer is not None:
            on_layer()

    return hook


def _act_sq_hook(acc: dict, name: str, qdqs: dict, shared: dict):
    """Accumulate ``Σ (∂L/∂x ⊙ (x − Q(x)))²`` (diagonal Fisher of the input) for this layer.

    Layers fed one input tensor (q/k/v, gate/up in HF Llama) would each see ∂L/∂x summed over
    all consumers if the hook went on that tensor; a view per layer (``x.view_as(x)``) is a node
    of its own, whose gradient is this layer's alone. Their ``(x − Q(x))²`` is computed once:
    ``shared`` holds it per option for the last input tensor seen.
    """
    import torch

    def hook(mod, args):
        x = args[0]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return None
        own = x.view_as(x)

        def on_grad(g):
            with torch.no_grad():
                g2 = g.float().square().view(-1)
                for sname, qdq in qdqs.items():
                    d2 = _input_delta_sq(shared, x, sname, qdq)
                    acc[(name, sname)] += torch.dot(g2, d2).item()

        own.register_hook(on_grad)
        return (own, *args[1:])

    return hook


def _input_delta_sq(shared: dict, x: torch.Tensor, option: str, qdq) -> torch.Tensor:
    """``(x − Q(x))²`` flattened, from ``shared`` when it was last computed for this very tensor
    (same object, unchanged since)."""
    last = shared.get(option)
    if last is not None and last[0] is x and last[1] == x._version:
        return last[2]
    xd = x.detach()
    d2 = (xd.float() - qdq(xd).float()).square_().view(-1)
    shared[option] = (x, x._version, d2)
    return d2


METRIC = Metric(
    "fisher",
    fisher,
    1,
    lambda layers, schemes, nbatches, nblocks: _units(layers, nbatches),
    "Diagonal Fisher: one backward pass at the unquantized model, shared by every format "
    "(the default: closest to kl for its cost).",
    offload=True,
    in_context="gradient",
    meaning="≈ the rise in mean token loss (nats) with this layer alone in the format, a "
    "second-order estimate ½·(∂L/∂W·ΔW)², summed over the calibration sequences (÷ their "
    "number: nats per token)",
    unit="≈ nats × calibration sequences",
)
