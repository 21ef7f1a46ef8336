"""The metric registry: every metric by name, in the order shown to users."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mixviz.models.inventory import Layer
from mixviz.models.schemes import Scheme
from mixviz.sensitivity.metrics.common import Scores

WorkUnits = Callable[[list[Layer], list[Scheme], int, int], int]


@dataclass(frozen=True)
class Metric:
    """A sensitivity metric, and all that profiling, the CLI and the app need to know of it.

    ``score(model, layers, schemes, ids, step, batch_size=...)`` returns :data:`Scores` and calls
    ``step`` once per unit of work; ``work_units(layers, schemes, nbatches, nblocks)`` says how
    many times (for a progress bar); ``batch_size`` is the number of sequences per batch the
    profiler passes; ``description`` is one sentence shown in the UI, ``meaning`` one line on
    what a score is (its quantity and unit) and ``unit`` the short form an axis carries.
    ``offload``: ``score``
    also takes ``offload=`` (an :class:`~mixviz.sensitivity.offload.Offload`) and then keeps
    the weights on the CPU but for the block it runs, with the same ``step`` count.
    """

    name: str
    score: Callable[..., Scores]
    batch_size: int
    work_units: WorkUnits
    description: str
    offload: bool = False
    in_context: str = ""
    """How it scores around an operating point (``profile --around``): ``"gradient"`` (the
    profiler runs it inside a straight-through point: its gradient is taken at the quantized
    model), ``"swap"`` (``score`` takes ``around=`` and swaps each layer into that context
    itself), or ``""`` (it cannot)."""
    meaning: str = ""
    unit: str = ""


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


def score_meaning(name: str) -> str:
    """One line on what ``name``'s score is, for a help text (empty for an unknown metric).

    >>> score_meaning("kl")[:40]
    'KL divergence in nats per token of the n'
    """
    metric = METRICS.get(name)
    return metric.meaning if metric else ""


def score_unit(name: str) -> str:
    """The short unit of ``name``'s score for an axis (``"nats per token"``), or ``""``."""
    metric = METRICS.get(name)
    return metric.unit if metric else ""


def metric_names() -> tuple[str, ...]:
    """The registered metrics' names, read now (so one registered later is included).

    >>> metric_names()[:4]
    ('fisher', 'hessian', 'delta_loss', 'kl')
    """
    return tuple(METRICS)
