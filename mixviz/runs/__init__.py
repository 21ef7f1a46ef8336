"""Stage 4 — runs: quantize with auto-round and evaluate with lm-eval, out of process.

Takes a :class:`~mixviz.runs.runspec.RunSpec` (model, per-layer plan, tasks); gives a
:class:`~mixviz.runs.runspec.RunResult` in the SQLite store (:mod:`~mixviz.runs.store`), run
by a worker process (:mod:`~mixviz.runs.worker`) that a backend starts and watches
(:mod:`~mixviz.runs.backends`: local queue or Ray Jobs), on lm-eval tasks
(:mod:`~mixviz.runs.tasks`: the bundled offline ones, or any lm-eval task name).
"""
