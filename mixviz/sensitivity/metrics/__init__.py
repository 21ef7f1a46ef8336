"""The sensitivity metrics, one module each, and their registry: each scores every (layer,
option) pair.

Every metric is a :class:`Metric` in :data:`METRICS` (its scoring function, batch size, count of
progress steps and a one-line description); adding one is one module holding its function and
its ``METRIC``, registered below with one :func:`register_metric` call. The profiler, the CLI's
``--metric`` and the app's sidebar all read the registry.

Every metric takes the same inputs — the loaded model, the candidate layers, the schemes, and
the calibration token windows — and returns ``{(layer name, option name): score}``, where a
higher score means the layer is hurt more by that format. Weights and activations are
quantize-dequantized with auto-round's own quantizers (:mod:`mixviz.sensitivity.quantizers`).

- :mod:`~mixviz.sensitivity.metrics.fisher`: diagonal Fisher, one backward pass shared by all
  options (the default).
- :mod:`~mixviz.sensitivity.metrics.hessian`: each layer's output error, block by block with no
  backward pass.
- :mod:`~mixviz.sensitivity.metrics.delta_loss`: AutoScheme's score, one backward per option.
- :mod:`~mixviz.sensitivity.metrics.kl`: ground truth, one layer quantized at a time.

Every metric here also runs offloaded (``offload=``, :mod:`mixviz.sensitivity.offload`): weights
on the CPU, one block at a time on the device; fisher and delta_loss then backpropagate block by
block with recomputation (:mod:`mixviz.sensitivity.blocks`), giving the same scores. The scoring
functions are reached through their modules (``from mixviz.sensitivity.metrics.fisher import
fisher``) or the registry (``METRICS["fisher"].score``).
"""

# torch and auto-round are imported inside the functions that run a metric: reading the
# registry (``metric_names()`` for a CLI parser or a sidebar) must stay instant.

from mixviz.sensitivity.metrics import delta_loss, fisher, hessian, kl
from mixviz.sensitivity.metrics.common import Scores, Step
from mixviz.sensitivity.metrics.registry import (
    DEFAULT_METRIC,
    METRICS,
    Metric,
    WorkUnits,
    metric_names,
    register_metric,
    score_meaning,
    score_unit,
)

for _module in (fisher, hessian, delta_loss, kl):  # the order shown to users
    register_metric(_module.METRIC)
del _module

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "Metric",
    "Scores",
    "Step",
    "WorkUnits",
    "metric_names",
    "register_metric",
    "score_meaning",
    "score_unit",
]
