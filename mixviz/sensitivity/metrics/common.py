"""What the metrics share: the score and step types, and small helpers on the loaded model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mixviz.models.inventory import Layer

if TYPE_CHECKING:
    import torch

Scores = dict[tuple[str, str], float]
Step = Callable[[str], None]  # called once per (block or batch, option) unit of work


def modules(model) -> dict[str, torch.nn.Module]:
    return dict(model.named_modules())


def freeze(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def untie_if_needed(model, layers: list[Layer]) -> None:
    """Quantizing a tied lm_head in place would quantize the embedding too: untie it first."""
    import torch

    if any(x.kind == "lm_head" for x in layers):
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and emb is not None and head.weight is emb.weight:
            head.weight = torch.nn.Parameter(emb.weight.detach().clone())


def embeddings_require_grad(model):
    """Make the embedding output a graph leaf so every linear input gets a gradient."""
    return model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: out.requires_grad_(True)
    )


def pacer(step: Step, n: int, units: int, label: str) -> Callable[[str], None]:
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
