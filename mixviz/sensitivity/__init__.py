"""Stage 2 — sensitivity: how much each layer suffers in each format.

Takes a resolved model and a :class:`~mixviz.sensitivity.spec.ProfileSpec` (options, metric,
calibration, where it runs); gives a :class:`~mixviz.sensitivity.profile.Profile` (one score
per layer and option, cached under the spec's key). The metrics are a registry
(:data:`~mixviz.sensitivity.metrics.METRICS`), one module per metric under
:mod:`~mixviz.sensitivity.metrics`; weights and activations are quantized with auto-round's own
quantizers (:mod:`~mixviz.sensitivity.quantizers`); AutoScheme's score cache can be imported
(:mod:`~mixviz.sensitivity.autoscheme`). A model larger than the device is profiled offloaded
(:mod:`~mixviz.sensitivity.offload`): one block at a time on the device, backward passes block
by block (:mod:`~mixviz.sensitivity.blocks`). Synthetic profiles, for tests and benchmarks:
:mod:`~mixviz.sensitivity.synthetic`.
"""
