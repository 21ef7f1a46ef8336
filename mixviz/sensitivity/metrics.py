"""The sensitivity metrics and their registry: each scores every (layer, option) pair.

Every metric is a :class:`Metric` in :data:`METRICS` (its scoring function, batch size, count of
progress steps and a one-line description); adding one is one :func:`register_metric` call, and
the profiler, the CLI's ``--metric`` and the app's sidebar all read the registry.

Every metric takes the same inputs — the loaded model, the candidate layers, the schemes, and
the calibration token windows — and returns ``{(layer name, option name): score}``, where a
higher score means the layer is hurt more by that format. Weights and activations are
quantize-dequantized with auto-round's own quantizers (:mod:`mixviz.sensitivity.quantizers`).

- ``delta_loss``: AutoScheme's score. Per option, all layers at that option; per batch,
  ``Σ|∂L/∂Q(W) ⊙ (W − Q(W))|`` plus ``Σ|∂L/∂Q(x) ⊙ (x − Q(x))|`` when activations are quantized.
- ``fisher``: one backward pass at the unquantized model shared by all options; summed over
  batches (of one sequence by default) of the mean token loss,
  ``½ Σ (∂L/∂W ⊙ ΔW)²`` over the weight's elements, plus ``½ Σ (∂L/∂x ⊙ (x − Q(x)))²`` over
  the layer's own input for formats that quantize activations.
- ``hessian``: no backward; block by block, ``tr(ΔW H ΔWᵀ)`` with ``H = XᵀX`` (for formats that
  quantize activations, the exact output error ``‖(XWᵀ + b) − (Q(X)Q(W)ᵀ + b)‖²``).
- ``kl``: ground truth; one layer at a time, the KL divergence of the next-token distribution
  from the unquantized model's, averaged over tokens.

Every metric here also runs offloaded (``offload=``, :mod:`mixviz.sensitivity.offload`): weights
on the CPU, one block at a time on the device; fisher and delta_loss then backpropagate block by
block with recomputation (:mod:`mixviz.sensitivity.blocks`), giving the same scores.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixviz.models.inventory import Layer
from mixviz.models.schemes import Scheme
from mixviz.sensitivity.blocks import (
    Part,
    blockwise_backward,
    by_block,
    capture_block_inputs,
    decoder_parts,
    head_of,
)
from mixviz.sensitivity.offload import NO_OFFLOAD, Offload

if TYPE_CHECKING:
    import torch

# torch and auto-round are imported inside the functions that run a metric: reading the
# registry (``metric_names()`` for a CLI parser or a sidebar) must stay instant.

Scores = dict[tuple[str, str], float]
Step = Callable[[str], None]  # called once per (block or batch, option) unit of work
WorkUnits = Callable[[list[Layer], list[Scheme], int, int], int]


def _modules(model) -> dict[str, torch.nn.Module]:
    return dict(model.named_modules())


def _freeze(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _untie_if_needed(model, layers: list[Layer]) -> None:
    """Quantizing a tied lm_head in place would quantize the embedding too: untie it first."""
    import torch

    if any(x.kind == "lm_head" for x in layers):
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and emb is not None and head.weight is emb.weight:
            head.weight = torch.nn.Parameter(emb.weight.detach().clone())


def _embeddings_require_grad(model):
    """Make the embedding output a graph leaf so every linear input gets a gradient."""
    return model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: out.requires_grad_(True)
    )


# --------------------------------------------------------------------------- delta_loss


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
    _freeze(model)
    _untie_if_needed(model, layers)
    mods = _modules(model)
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
    h = _embeddings_require_grad(model)
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
    tick = _pacer(step, len(batches), 2 * nblocks + 1, f"delta_loss {at.scheme.name}")
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


# --------------------------------------------------------------------------- fisher


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
    _freeze(model)
    _untie_if_needed(model, layers)
    mods = _modules(model)
    acc = {(x.name, s.name): 0.0 for x in layers for s in schemes}
    parts = [Part(batch) for batch in ids.split(batch_size)]
    if offload is None:
        h = _embeddings_require_grad(model)
        try:
            with _fisher_hooks(mods, layers, schemes, acc):
                for p in parts:
                    out = model(input_ids=p.ids, labels=p.ids, use_cache=False)
                    out.loss.backward()
                    del out
                    step("fisher backward")
        finally:
            h.remove()
    else:
        groups = by_block(layers)

        def on_block(b: int | None, backward: bool):
            todo = groups.get(b, []) if backward else []
            return _fisher_hooks(mods, todo, schemes, acc)

        nblocks = len(decoder_parts(model)[0])
        tick = _pacer(step, len(parts), 2 * nblocks + 1, "fisher")
        blockwise_backward(model, parts, offload, on_block, tick)
    return {k: 0.5 * v for k, v in acc.items()}


@contextmanager
def _fisher_hooks(mods: dict, layers: list[Layer], schemes: list[Scheme], acc: dict):
    """Score ``layers`` from every gradient autograd gives their weights (and, for formats that
    quantize activations, their inputs) inside the ``with``; quantizers are built on entry,
    on the device the layers are on then."""
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
                w.register_post_accumulate_grad_hook(_score_hook(acc, x.name, qs, cache))
            )
            if act_schemes:
                qa = {s.name: quant[(x.name, s.name)].act for s in act_schemes}
                hook = _act_sq_hook(acc, x.name, qa, shared)
                handles.append(mods[x.name].register_forward_pre_hook(hook))
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


def _score_hook(acc: dict, name: str, quants: dict, cache: _QCache):
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


# --------------------------------------------------------------------------- block by block


def _pacer(step: Step, n: int, units: int, label: str) -> Callable[[str], None]:
    """A ``tick`` for work done in ``units`` pieces by a metric counted in ``n`` steps: ``step``
    is called ``n`` times in all, evenly over the ``units`` ticks (the last tick ends with n).

    ``units=4, n=2``: ticks 1..4 call ``step`` 0, 1, 0, 1 times.
    """
    ticks = steps = 0

    def tick(what: str) -> None:
        nonlocal ticks, steps
        ticks += 1
        while steps < n * ticks // units:
            steps += 1
            step(f"{label} {what}")

    return tick


# --------------------------------------------------------------------------- hessian


def hessian(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 4,
    offload: Offload | None = None,
) -> Scores:
    """Layer-output error ``tr(ΔW H ΔWᵀ)``, streamed block by block with no backward."""
    import torch

    off = offload or NO_OFFLOAD
    _freeze(model)
    blocks, _ = decoder_parts(model)
    mods = _modules(model)
    groups = by_block(layers)
    scores: Scores = {}
    with torch.no_grad():
        states = capture_block_inputs(model, blocks, list(ids.split(batch_size)))
        hs, kws = [h for h, _ in states], [kw for _, kw in states]
        for b, block in enumerate(blocks):
            todo = groups.get(b, [])
            with off.resident(block):
                hooks, stats = _hessian_hooks(mods, todo, schemes)
                try:
                    hs = off.run_all(block, hs, kws)
                finally:
                    for hk in hooks:
                        hk.remove()
                scores.update(_hessian_scores(mods, todo, schemes, stats))
            step(f"hessian block {b}")
        head = [x for x in groups.get(None, []) if x.kind == "lm_head"]
        if head:
            with off.resident(head_of(model)) as (norm, lm_head):
                hooks, stats = _hessian_hooks(mods, head, schemes)
                try:
                    for h in hs:
                        lm_head(norm(off.to(h)))
                finally:
                    for hk in hooks:
                        hk.remove()
                scores.update(_hessian_scores(mods, head, schemes, stats))
            step("hessian lm_head")
    return scores


def _hessian_hooks(mods, todo: list[Layer], schemes: list[Scheme]):
    """Forward hooks accumulating, per layer, ``H = XᵀX`` (only if a weight-only option needs
    it) and, per act-quantizing option, the exact output error ``‖Y − Q(X)Q(W)ᵀ‖²``.

    Layers fed the same input tensor (q/k/v, gate/up) share one ``H`` and one ``Q(X)``.
    """
    from mixviz.sensitivity.quantizers import LayerQuantizer

    stats: dict = {"H": {}, "out": {}}
    act_schemes = [s for s in schemes if s.act_bits <= 8]
    need_h = any(s.act_bits > 8 and s.bits < 16 for s in schemes)
    quant = {(x.name, s.name): LayerQuantizer(mods[x.name], s) for x in todo for s in act_schemes}
    qw = {k: q.weight().float() for k, q in quant.items()}
    bias = {x.name: mods[x.name].bias for x in todo}
    shared: dict = {}  # for the current input tensor: its XᵀX and its Q(X) per option
    hooks = []
    for x in todo:

        def hook(mod, args, out, name=x.name):
            if shared.get("input") is not args[0]:  # identity, not address: no reuse
                shared.clear()
                shared["input"] = args[0]
            inp = args[0].reshape(-1, args[0].shape[-1]).float()
            if need_h:
                if "H" not in shared:
                    shared["H"] = inp.T @ inp
                stats["H"][name] = stats["H"].get(name, 0) + shared["H"]
            y = out.reshape(-1, out.shape[-1]).float()
            for s in act_schemes:
                if s.name not in shared:
                    shared[s.name] = quant[(name, s.name)].act(inp)
                yq = shared[s.name] @ qw[(name, s.name)].T
                if bias[name] is not None:  # the output ``out`` carries the bias too
                    yq = yq + bias[name].float()
                k = (name, s.name)
                stats["out"][k] = stats["out"].get(k, 0.0) + (y - yq).pow(2).sum().item()

        hooks.append(mods[x.name].register_forward_hook(hook))
    return hooks, stats


def _hessian_scores(mods, todo: list[Layer], schemes: list[Scheme], stats: dict) -> Scores:
    from mixviz.sensitivity.quantizers import LayerQuantizer

    scores: Scores = {}
    for x in todo:
        w = mods[x.name].weight
        H = stats["H"].pop(x.name, None)
        for s in schemes:
            if (x.name, s.name) in stats["out"]:
                scores[(x.name, s.name)] = stats["out"][(x.name, s.name)]
            elif s.bits >= 16 or H is None:  # unquantized, or never ran (an unrouted expert)
                scores[(x.name, s.name)] = 0.0
            else:
                dw = w.float() - LayerQuantizer(mods[x.name], s).weight().float()
                scores[(x.name, s.name)] = ((dw @ H) * dw).sum().item()
    return scores


# --------------------------------------------------------------------------- kl


def kl(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 4,
    offload: Offload | None = None,
) -> Scores:
    """KL(unquantized ‖ one layer quantized) of next-token distributions, mean over tokens.

    Keeps every block's input for the calibration tokens and the reference log-probabilities,
    so each (layer, option) costs one forward from that layer's block to the end, block after
    block (with ``offload``, each block on the device once per (layer, option)).
    """
    import torch

    off = offload or NO_OFFLOAD
    _freeze(model)
    _untie_if_needed(model, layers)
    blocks, _ = decoder_parts(model)
    head = head_of(model)
    mods = _modules(model)
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
        n_tokens = ids.numel()
        for x in layers:
            start = x.block if x.block is not None else len(blocks)
            for s in schemes:
                if s.bits >= 16:
                    scores[(x.name, s.name)] = 0.0
                    continue
                total = _kl_one(mods[x.name], s, blocks, head, inputs[start], kws, ref, start, off)
                scores[(x.name, s.name)] = max(total / n_tokens, 0.0)
                step(f"kl {x.name} {s.name}")
    return scores


def _log_probs(norm, lm_head, h: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.log_softmax(lm_head(norm(h)).double(), -1)


def _kl_one(lin, scheme: Scheme, blocks, head, hs: list, kws: list, ref: list, start: int, off):
    """``Σ_tokens KL(ref ‖ model with lin at scheme)``, running blocks ``start``.. then the head
    on ``hs`` (the inputs of block ``start``); ``lin`` is quantized while its block is resident."""
    total = 0.0
    for b in range(start, len(blocks) + 1):
        unit = blocks[b] if b < len(blocks) else head
        with off.resident(unit), _quantized(lin, scheme, b == start):
            if b < len(blocks):
                hs = off.run_all(unit, hs, kws)
                continue
            for h, r in zip(hs, ref, strict=True):
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


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Metric:
    """A sensitivity metric, and all that profiling, the CLI and the app need to know of it.

    ``score(model, layers, schemes, ids, step, batch_size=...)`` returns :data:`Scores` and calls
    ``step`` once per unit of work; ``work_units(layers, schemes, nbatches, nblocks)`` says how
    many times (for a progress bar); ``batch_size`` is the number of sequences per batch the
    profiler passes; ``description`` is one sentence shown in the UI. ``offload``: ``score``
    also takes ``offload=`` (an :class:`~mixviz.sensitivity.offload.Offload`) and then keeps
    the weights on the CPU but for the block it runs, with the same ``step`` count.
    """

    name: str
    score: Callable[..., Scores]
    batch_size: int
    work_units: WorkUnits
    description: str
    offload: bool = False


METRICS: dict[str, Metric] = {}
"""Every known metric by name, in the order shown to users (register with
:func:`register_metric`; a test may add one with ``monkeypatch.setitem``)."""

DEFAULT_METRIC = "fisher"  # best agreement with kl within 0.5× AutoScheme's time (bench)


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (after those already there) and return it.

    A metric under a name already registered replaces it, in its place (so re-importing this
    module, as a reloading app server does, is harmless).
    """
    if not metric.name or metric.batch_size < 1:
        raise ValueError(f"a metric needs a name and a batch size ≥ 1: {metric!r}")
    METRICS[metric.name] = metric
    return metric


def metric_names() -> tuple[str, ...]:
    """The registered metrics' names, read now (so one registered later is included).

    >>> metric_names()[:4]
    ('fisher', 'hessian', 'delta_loss', 'kl')
    """
    return tuple(METRICS)


register_metric(
    Metric(
        "fisher",
        fisher,
        1,
        lambda layers, schemes, nbatches, nblocks: nbatches,
        "Diagonal Fisher: one backward pass at the unquantized model, shared by every format "
        "(the default: closest to kl for its cost).",
        offload=True,
    )
)
register_metric(
    Metric(
        "hessian",
        hessian,
        4,
        lambda layers, schemes, nbatches, nblocks: (
            nblocks + any(x.kind == "lm_head" for x in layers)
        ),
        "Each layer's output error on calibration inputs, block by block with no backward "
        "pass (the fastest).",
        offload=True,
    )
)
register_metric(
    Metric(
        "delta_loss",
        delta_loss,
        8,
        lambda layers, schemes, nbatches, nblocks: len(schemes) * nbatches,
        "AutoScheme's own score: |gradient × quantization error| with every layer in the "
        "format, one backward pass per format.",
        offload=True,
    )
)
register_metric(
    Metric(
        "kl",
        kl,
        4,
        lambda layers, schemes, nbatches, nblocks: len(layers) * sum(s.bits < 16 for s in schemes),
        "Ground truth: how far the next-token distribution moves with one layer quantized at "
        "a time (exact but slow).",
        offload=True,
    )
)
