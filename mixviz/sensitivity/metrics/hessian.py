"""``hessian``: no backward; block by block, ``tr(ΔW H ΔWᵀ)`` with ``H = XᵀX`` (for formats that
quantize activations, the exact output error ``‖(XWᵀ + b) − (Q(X)Q(W)ᵀ + b)‖²``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mixviz.models.inventory import Layer
from mixviz.models.schemes import Scheme
from mixviz.sensitivity.blocks import by_block, capture_block_inputs, decoder_parts, head_of
from mixviz.sensitivity.metrics.common import Scores, Step, freeze, modules
from mixviz.sensitivity.metrics.registry import Metric
from mixviz.sensitivity.offload import NO_OFFLOAD, Offload

if TYPE_CHECKING:
    import torch


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
    freeze(model)
    blocks, _ = decoder_parts(model)
    mods = modules(model)
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


METRIC = Metric(
    "hessian",
    hessian,
    4,
    lambda layers, schemes, nbatches, nblocks: nblocks + any(x.kind == "lm_head" for x in layers),
    "Each layer's output error on calibration inputs, block by block with no backward "
    "pass (the fastest).",
    offload=True,
    meaning="the layer's squared output error ‖ΔW·X‖² summed over the calibration tokens: a "
    "distortion in activation units, not a loss (its ranking and ratios carry the meaning)",
    unit="squared output error, not a loss",
)
