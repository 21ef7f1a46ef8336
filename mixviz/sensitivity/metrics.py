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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mixviz.errors import MixvizError
from mixviz.models.inventory import Layer, block_list_name
from mixviz.models.schemes import Scheme

if TYPE_CHECKING:
    import torch

# torch and auto-round are imported inside the functions that run a metric: reading the
# registry (``metric_names()`` for a CLI parser or a sidebar) must stay instant.

Scores = dict[tuple[str, str], float]
Step = Callable[[str], None]  # called once per (block or batch, option) unit of work
WorkUnits = Callable[[list[Layer], list[Scheme], int, int], int]


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (input capture)."""


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
) -> Scores:
    """AutoScheme's per-layer score, option by option (all layers at that option).

    As in AutoScheme, the weight term is ``|Σ_batch ∂L/∂Q(W) ⊙ ΔW|`` per batch of
    ``batch_size`` sequences; the batch's gradient is accumulated over micro-batches (loss
    scaled to the batch mean), so only one micro-batch's activations are held at a time.
    """
    import torch

    from mixviz.sensitivity.quantizers import LayerQuantizer

    _freeze(model)
    _untie_if_needed(model, layers)
    mods = _modules(model)
    scores: Scores = {}
    for scheme in schemes:
        acc = {x.name: 0.0 for x in layers}
        originals, handles = {}, [_embeddings_require_grad(model)]
        try:
            for x in layers:
                lin = mods[x.name]
                q = LayerQuantizer(lin, scheme)
                originals[x.name] = lin.weight.data
                lin.weight.data = q.weight()
                lin.weight.requires_grad_(scheme.bits < 16)
                if q.act is not None:
                    handles.append(lin.register_forward_pre_hook(_act_abs_hook(acc, x.name, q.act)))
            for batch in ids.split(batch_size):
                for part in batch.split(micro_batch):
                    out = model(input_ids=part, labels=part, use_cache=False)
                    (out.loss * (len(part) / len(batch))).backward()
                with torch.no_grad():
                    for x in layers:
                        w = mods[x.name].weight
                        if w.grad is not None:
                            acc[x.name] += (w.grad * (originals[x.name] - w)).abs().sum().item()
                            w.grad = None
                step(f"delta_loss {scheme.name}")
        finally:
            for h in handles:
                h.remove()
            for x in layers:
                lin = mods[x.name]
                lin.weight.requires_grad_(False)
                lin.weight.grad = None
                if x.name in originals:
                    lin.weight.data = originals[x.name]
        scores.update({(n, scheme.name): v for n, v in acc.items()})
    return scores


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
) -> Scores:
    """Diagonal empirical Fisher at the unquantized model, one backward shared by all options.

    Per batch of ``batch_size`` sequences, ``g`` is the gradient of the batch's mean token loss;
    a layer's score for an option is ``½ Σ_batches Σ (g_W ⊙ ΔW)²`` plus, for formats that
    quantize activations, ``½ Σ_batches Σ (g_x ⊙ (x − Q(x)))²`` with ``g_x`` the gradient at
    this layer's own input (not summed over the other layers fed the same tensor).

    Memory stays that of the model: each batch's ``g_W`` is consumed as soon as autograd has
    it (a hook scores every option from it and drops it), so one layer's gradient exists at a
    time and nothing is kept per weight beyond ``ΔW`` (float32), which is kept between batches
    only while it fits in the bytes of the weights themselves, else recomputed in the hook.
    """

    from mixviz.sensitivity.quantizers import LayerQuantizer

    _freeze(model)
    _untie_if_needed(model, layers)
    mods = _modules(model)
    quant = {(x.name, s.name): LayerQuantizer(mods[x.name], s) for x in layers for s in schemes}
    act_schemes = [s for s in schemes if s.act_bits <= 8]
    acc = {(x.name, s.name): 0.0 for x in layers for s in schemes}
    # ΔW is kept between batches while it fits in as many bytes as the layers' weights (the
    # size of the per-weight accumulator this replaced); beyond that it is recomputed.
    cache = _DeltaCache(sum(mods[x.name].weight.nbytes for x in layers))
    handles = [_embeddings_require_grad(model)]
    try:
        for x in layers:
            w = mods[x.name].weight
            w.requires_grad_(True)
            qs = {s.name: quant[(x.name, s.name)] for s in schemes if s.bits < 16}
            hook = _score_hook(acc, x.name, qs, cache)
            handles.append(w.register_post_accumulate_grad_hook(hook))
            if act_schemes:
                qa = {s.name: quant[(x.name, s.name)].act for s in act_schemes}
                handles.append(
                    mods[x.name].register_forward_pre_hook(_act_sq_hook(acc, x.name, qa))
                )
        for batch in ids.split(batch_size):
            out = model(input_ids=batch, labels=batch, use_cache=False)
            out.loss.backward()
            del out
            step("fisher backward")
    finally:
        for h in handles:
            h.remove()
        for x in layers:
            mods[x.name].weight.requires_grad_(False)
            mods[x.name].weight.grad = None
    return {k: 0.5 * v for k, v in acc.items()}


class _DeltaCache(dict):
    """``ΔW = W − Q(W)`` in float32 per (layer, option), kept while within ``budget`` bytes."""

    def __init__(self, budget: int):
        super().__init__()
        self.left = budget

    def delta(self, key, w: torch.Tensor, q) -> torch.Tensor:
        d = self.get(key)
        if d is None:
            d = w - q.weight().float()
            if d.nbytes <= self.left:
                self[key], self.left = d, self.left - d.nbytes
        return d


def _score_hook(acc: dict, name: str, quants: dict, cache: _DeltaCache):
    """Add this batch's ``Σ (g ⊙ (W − Q(W)))²`` to every option's score, then drop ``g``."""
    import torch

    def hook(p: torch.Tensor) -> None:
        with torch.no_grad():
            g = p.grad.float()
            p.grad = None
            w = p.detach().float()
            for sname, q in quants.items():
                d = cache.delta((name, sname), w, q)
                acc[(name, sname)] += (g * d).pow(2).sum().item()

    return hook


def _act_sq_hook(acc: dict, name: str, qdqs: dict):
    """Accumulate ``Σ (∂L/∂x ⊙ (x − Q(x)))²`` (diagonal Fisher of the input) for this layer.

    Layers fed one input tensor (q/k/v, gate/up in HF Llama) would each see ∂L/∂x summed over
    all consumers if the hook went on that tensor; a view per layer (``x.view_as(x)``) is a node
    of its own, whose gradient is this layer's alone.
    """
    import torch

    def hook(mod, args):
        x = args[0]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return None
        own = x.view_as(x)

        def on_grad(g):
            with torch.no_grad():
                for sname, qdq in qdqs.items():
                    d = x.detach() - qdq(x.detach())
                    acc[(name, sname)] += (g.float() * d.float()).pow(2).sum().item()

        own.register_hook(on_grad)
        return (own, *args[1:])

    return hook


# --------------------------------------------------------------------------- streaming helpers


def decoder_parts(model):
    """``(blocks, final norm)`` of a loaded decoder-only transformers model: its transformer
    block ``ModuleList`` and the norm before ``lm_head`` (None when it has none we know)."""
    name = block_list_name(model)
    if name is None:
        raise MixvizError("cannot find the transformer blocks of this model")
    blocks = _modules(model)[name]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = None
    for attr in ("norm", "final_layernorm", "ln_f"):
        norm = getattr(decoder, attr, None) if decoder is not None else None
        if norm is not None:
            break
    return blocks, norm


def _capture_block_inputs(model, blocks, ids: torch.Tensor, batch_size: int):
    """Run the model up to block 0 and keep, per batch, its hidden states and keyword args."""
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
            for batch in ids.split(batch_size):
                try:
                    model(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
    return captured


def _run_block(block, hidden: torch.Tensor, kw: dict) -> torch.Tensor:
    out = block(hidden, **kw)
    return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------- hessian


def hessian(
    model,
    layers: list[Layer],
    schemes: list[Scheme],
    ids: torch.Tensor,
    step: Step,
    batch_size: int = 4,
) -> Scores:
    """Layer-output error ``tr(ΔW H ΔWᵀ)``, streamed block by block with no backward."""
    import torch

    _freeze(model)
    blocks, norm = decoder_parts(model)
    mods = _modules(model)
    by_block: dict[int | None, list[Layer]] = {}
    for x in layers:
        by_block.setdefault(x.block, []).append(x)
    scores: Scores = {}
    with torch.no_grad():
        states = _capture_block_inputs(model, blocks, ids, batch_size)
        for b, block in enumerate(blocks):
            todo = by_block.get(b, [])
            hooks, stats = _hessian_hooks(mods, todo, schemes)
            try:
                states = [(_run_block(block, h, kw), kw) for h, kw in states]
            finally:
                for hk in hooks:
                    hk.remove()
            scores.update(_hessian_scores(mods, todo, schemes, stats))
            step(f"hessian block {b}")
        head = [x for x in by_block.get(None, []) if x.kind == "lm_head"]
        if head:
            if norm is None:
                raise MixvizError("cannot find the final norm before lm_head for this model")
            hooks, stats = _hessian_hooks(mods, head, schemes)
            try:
                for h, _ in states:
                    mods[head[0].name](norm(h))
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
) -> Scores:
    """KL(unquantized ‖ one layer quantized) of next-token distributions, mean over tokens.

    Keeps every block's input for the calibration tokens and the reference log-probabilities,
    so each (layer, option) costs one forward from that layer's block to the end.
    """
    import torch

    from mixviz.sensitivity.quantizers import LayerQuantizer

    _freeze(model)
    _untie_if_needed(model, layers)
    blocks, norm = decoder_parts(model)
    if norm is None:
        raise MixvizError("cannot find the final norm before lm_head for this model")
    head = model.get_output_embeddings()
    mods = _modules(model)
    scores: Scores = {}
    with torch.no_grad():
        states = _capture_block_inputs(model, blocks, ids, batch_size)
        inputs = [[h for h, _ in states]]
        kws = [kw for _, kw in states]
        for block in blocks:
            inputs.append([_run_block(block, h, kw) for h, kw in zip(inputs[-1], kws, strict=True)])
        ref = [torch.log_softmax(head(norm(h)).double(), -1) for h in inputs[-1]]
        n_tokens = ids.numel()
        for x in layers:
            start = x.block if x.block is not None else len(blocks)
            lin = mods[x.name]
            for s in schemes:
                if s.bits >= 16:
                    scores[(x.name, s.name)] = 0.0
                    continue
                q = LayerQuantizer(lin, s)
                original = lin.weight.data
                lin.weight.data = q.weight()
                hk = (
                    lin.register_forward_pre_hook(
                        lambda mod, args, qa=q.act: (qa(args[0]), *args[1:])
                    )
                    if q.act
                    else None
                )
                try:
                    total = 0.0
                    for i, kw in enumerate(kws):
                        h = inputs[start][i]
                        for block in blocks[start:]:
                            h = _run_block(block, h, kw)
                        logq = torch.log_softmax(head(norm(h)).double(), -1)
                        p = ref[i].exp()
                        total += (p * (ref[i] - logq)).sum().item()
                finally:
                    lin.weight.data = original
                    if hk is not None:
                        hk.remove()
                scores[(x.name, s.name)] = max(total / n_tokens, 0.0)
                step(f"kl {x.name} {s.name}")
    return scores


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Metric:
    """A sensitivity metric, and all that profiling, the CLI and the app need to know of it.

    ``score(model, layers, schemes, ids, step, batch_size=...)`` returns :data:`Scores` and calls
    ``step`` once per unit of work; ``work_units(layers, schemes, nbatches, nblocks)`` says how
    many times (for a progress bar); ``batch_size`` is the number of sequences per batch the
    profiler passes; ``description`` is one sentence shown in the UI.
    """

    name: str
    score: Callable[..., Scores]
    batch_size: int
    work_units: WorkUnits
    description: str


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
    )
)
