"""Stage 4 — runs: quantize with auto-round, evaluate, ship real checkpoints, out of process.

Read as the pipeline runs, in three rooms over a shared record:

- the record: :class:`~mixviz.runs.runspec.RunSpec` (model, per-layer plan, tasks) and its
  :class:`~mixviz.runs.runspec.RunResult`, the SQLite store (:mod:`~mixviz.runs.store`), whether
  a worker lives (:mod:`~mixviz.runs.liveness`), progress lines (:mod:`~mixviz.runs.progress`);
- :mod:`~mixviz.runs.evaluation`: quantize in memory (auto-round), lm-eval, KLD, statistics;
- :mod:`~mixviz.runs.ship`: writers, readers, reload and the runtimes' checks (llama.cpp, vLLM);
- :mod:`~mixviz.runs.jobs`: the queue, backends (local or Ray Jobs), the worker and its steps.

Each room imports the record and the rooms before it, never a later one
(``tests/test_architecture.py``).
"""
