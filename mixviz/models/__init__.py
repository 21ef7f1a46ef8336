"""Stage 1 — the model: what can be quantized and with what.

Takes a model name (``demo``, ``tiny``, a local folder, a hub id) and gives a resolved
:class:`~mixviz.models.loading.ModelRef`, the loaded model, its layer inventory
(:mod:`~mixviz.models.inventory`), the candidate formats with exact bit accounting
(:mod:`~mixviz.models.schemes`) and the calibration / evaluation text (:mod:`~mixviz.models.text`).
"""
