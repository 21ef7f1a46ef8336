"""Result tables in the reference study's style: ``0.6857 (96.9%)`` = accuracy and its share of
the BF16 model's, from the runs in the store. Markdown, CSV and LaTeX through pandas.
"""

from __future__ import annotations

import math

import pandas as pd

from mixviz.runs.evaluation.tasks import KLD_TASK

PRIMARY = ("acc", "acc_norm")  # the accuracy metric of a task: acc, else acc_norm


def primary_metric(metrics: dict[str, float]) -> str | None:
    """``{"acc": .., "acc_norm": ..}`` → ``"acc"``; a perplexity-only task → None."""
    return next((m for m in PRIMARY if m in metrics), None)


def results_frame(store, model: str | None = None) -> pd.DataFrame:
    """One row per finished run: label, strategy, budget, bits, each task's accuracy and
    every metric (``task:metric``, ``task:metric_stderr``, ``task:items``), the average
    accuracy with its standard error, the items it rests on, and KLD / top-1 when measured.

    >>> results_frame(Store()).columns[:4].tolist()           # doctest: +SKIP
    ['id', 'label', 'strategy', 'budget']
    """
    rows = []
    for run in store.list(("done",), model=model):
        res, errs = store.results(run.id), store.stderrs(run.id)
        spec = run.spec
        if spec.get("refine"):  # a refine job: its answer is rounds, not a run's results
            continue
        recipe = spec.get("recipe")
        strategy = spec.get("strategy") or ("bf16" if recipe is None else run.label)
        row = {
            "id": run.id,
            "label": run.label,
            "strategy": strategy,
            "budget": spec.get("budget"),
            "avg_bits": run.avg_bits,
            "model": run.model,
            "recipe": recipe,
        }
        accs, ses, counts = [], [], []
        for task in spec.get("tasks", []):
            metrics = res.get(task, {})
            m = primary_metric(metrics)
            if m is not None:
                row[task] = metrics[m]
                accs.append(metrics[m])
                ses.append(errs.get(task, {}).get(m))
                counts.append(metrics.get("items"))
            for key, value in metrics.items():
                row[f"{task}:{key}"] = value
            for key, value in errs.get(task, {}).items():
                row[f"{task}:{key}_stderr"] = value
        row["accuracy"] = sum(accs) / len(accs) if accs else None
        known = accs and all(e is not None for e in ses)
        row["accuracy_se"] = math.sqrt(sum(e**2 for e in ses)) / len(ses) if known else None
        items = sum(n or 0.0 for n in counts)
        row["n_items"] = int(items) if items else None
        # the average has no se when one task has none: the fewest items a task rests on
        row["fewest_items"] = min((n for n in counts if n is not None), default=None)
        kld = res.get(KLD_TASK, {})
        for key in ("kld", "top1", "tokens"):
            row[key] = kld.get(key)
        for key in ("kld", "top1"):
            row[f"{key}_se"] = errs.get(KLD_TASK, {}).get(key)
        row["kld_windows"] = int(kld["df"]) + 1 if kld.get("df") is not None else None
        row["score_from"] = spec.get("score_from", "all")  # which positions KLD/top-1 rest on
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = (
    "id",
    "label",
    "strategy",
    "budget",
    "avg_bits",
    "model",
    "recipe",
    "accuracy",
    "accuracy_se",
    "n_items",
    "fewest_items",
    "kld",
    "kld_se",
    "top1",
    "top1_se",
    "tokens",
    "kld_windows",
    "score_from",
    "predicted_loss",
)


def study_table(
    frame: pd.DataFrame, tasks: list[str] | None = None, compare: str | None = None
) -> pd.DataFrame:
    """Rows = runs (latest per label), columns = avg bits, each task as ``acc ± se``, the
    average as ``0.6857 ± 0.012 (96.9%)`` of the BF16 run's, the items it rests on, KLD and
    top-1 agreement where measured, and the paired Δ of the average against a reference:
    ``compare`` = a run id, or None for the best baseline at the same bits (see
    :func:`baseline_reference`)."""
    if frame.empty:
        return pd.DataFrame()
    frame = frame.drop_duplicates("label", keep="last")
    tasks = tasks or [c for c in frame.columns if c in task_columns(frame)]
    bf16 = frame.loc[frame["strategy"] == "bf16", "accuracy"]
    ref = float(bf16.iloc[-1]) if len(bf16) and pd.notna(bf16.iloc[-1]) else None
    out = pd.DataFrame(index=frame["label"].tolist())
    out.index.name = "run"
    out["avg bits"] = [f"{b:.2f}" if pd.notna(b) else "" for b in frame["avg_bits"]]
    for t in tasks:
        se_col = f"{t}:{task_metric(frame, t)}_stderr"
        ses = frame[se_col] if se_col in frame else [None] * len(frame)
        ns = frame[f"{t}:items"] if f"{t}:items" in frame else [None] * len(frame)
        out[t] = [
            format_se(v, e, why=no_interval(n, "item"))
            for v, e, n in zip(frame[t], ses, ns, strict=True)
        ]
    cells = [summary_cells(row, ref) for _, row in frame.iterrows()]
    kld = ["KLD", "windows", "top-1 %"] if frame["kld"].notna().any() else []
    columns = ["average", "items", *kld]
    for c in columns:
        out[c] = [x[c] for x in cells]
    deltas = paired_column(frame, tasks, compare)
    if deltas is not None:
        out[deltas.name] = deltas.tolist()
    order = frame["avg_bits"].fillna(99).to_numpy().argsort(kind="stable")
    return out.iloc[order]


def summary_cells(line, reference: float | None) -> dict[str, str]:
    """One finished run's summary cells from its :func:`results_frame` line: the average
    (± se, share of ``reference``), the items it rests on, KLD ± se and the 512-token
    windows it rests on (marked ``(half)`` when scored on llama.cpp's positions only), top-1 %
    ± se; a number without ± says why (``1 window: no interval``)."""
    top1, top1_se = line["top1"], line["top1_se"]
    items, windows = line["n_items"], line.get("kld_windows")
    # the average's ± needs every task's: one task on 1 item is why it has none
    why_items = no_interval(line.get("fewest_items"), "item per task")
    why_windows = no_interval(windows, "window")
    half = line.get("score_from") == "half" and pd.notna(line["kld"])
    return {
        "average": format_share(line["accuracy"], reference, line["accuracy_se"], why_items),
        "items": f"{int(items)}" if pd.notna(items) else "",
        "KLD": format_se(line["kld"], line["kld_se"], 4, why_windows) + (" (half)" if half else ""),
        "windows": f"{int(windows)}" if windows is not None and pd.notna(windows) else "",
        "top-1 %": format_se(
            100 * top1, 100 * top1_se if pd.notna(top1_se) else None, 1, why_windows
        )
        if pd.notna(top1)
        else "",
    }


def no_interval(n, unit: str) -> str:
    """Why a number has no ±: ``'1 window: no interval'`` under two, else that no standard
    error was recorded.

    >>> no_interval(1, "window"), no_interval(None, "item")
    ('1 window: no interval', 'no standard error recorded')
    """
    if n is not None and pd.notna(n) and n < 2:
        return f"{int(n)} {unit}: no interval"
    return "no standard error recorded"


BASELINES = ("head", "tail", "uniform", "llamacpp")


def baseline_reference(frame: pd.DataFrame, row) -> pd.Series | None:
    """The most accurate baseline run (head, tail, uniform, llama.cpp, pure …) within 0.05
    average bits of ``row``, other than ``row`` itself; None when there is none."""
    is_base = frame["strategy"].isin(BASELINES) | frame["strategy"].str.startswith("pure ")
    near = (frame["avg_bits"] - row["avg_bits"]).abs() <= 0.05
    cands = frame[is_base & near & (frame["id"] != row["id"]) & frame["accuracy"].notna()]
    return None if cands.empty else cands.loc[cands["accuracy"].idxmax()]


def paired_column(frame: pd.DataFrame, tasks: list[str], compare: str | None) -> pd.Series | None:
    """Each row's paired Δ of the average accuracy (points, 95 % interval, ``*`` when
    significant) against ``compare`` or its :func:`baseline_reference`; None when no row
    has a reference."""
    from mixviz.report.paired import compare_runs

    primary = {t: task_metric(frame, t) for t in tasks}
    by_id = frame.set_index("id", drop=False)
    cells, named = [], None
    for _, row in frame.iterrows():
        other = (
            by_id.loc[compare]
            if compare in by_id.index
            else (None if compare else baseline_reference(frame, row))
        )
        if other is None or other["id"] == row["id"] or row["strategy"] == "bf16":
            cells.append("")
            continue
        d = compare_runs(other["id"], row["id"], tasks, primary).get("average")
        cells.append(f"{d.format()} vs {other['label']}" if d and d.n else "")
        named = True
    if not named:
        return None
    title = "Δ average vs " + (
        by_id.loc[compare, "label"] if compare in by_id.index else "best baseline, same bits"
    )
    return pd.Series(cells, name=title + " (points, 95% CI)")


def task_metric(frame: pd.DataFrame, task: str) -> str | None:
    """The metric a task's column of :func:`results_frame` holds (``acc``, else ``acc_norm``)."""
    return primary_metric(
        {c.split(":", 1)[1]: 0 for c in frame.columns if c.startswith(task + ":")}
    )


def task_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of :func:`results_frame` that hold a task's accuracy."""
    return [c for c in frame.columns if c not in SUMMARY_COLUMNS and ":" not in c]


def format_se(value, se=None, digits: int = 4, why: str | None = None) -> str:
    """``format_se(0.2875, 0.036)`` → ``'0.2875 ± 0.0360'``; without se the value alone, or
    with ``why`` a dash and the reason.

    >>> format_se(0.2875, 0.036), format_se(0.5), format_se(None)
    ('0.2875 ± 0.0360', '0.5000', '')
    >>> format_se(0.5, None, 2, "1 item: no interval")
    '0.50 ± — (1 item: no interval)'
    """
    if value is None or pd.isna(value):
        return ""
    if se is None or pd.isna(se):
        return f"{value:.{digits}f}" + (f" ± — ({why})" if why else "")
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def format_share(
    value: float | None, reference: float | None, se: float | None = None, why: str | None = None
) -> str:
    """``format_share(0.6857, 0.7076)`` → ``'0.6857 (96.9%)'``; with ``se=0.012``:
    ``'0.6857 ± 0.0120 (96.9%)'``; ``why`` as :func:`format_se`."""
    if value is None or pd.isna(value):
        return ""
    text = format_se(value, se, why=why)
    if reference:
        return f"{text} ({100 * value / reference:.1f}%)"
    return text


def to_markdown(table: pd.DataFrame) -> str:
    """The table as the page shows it: cells are preformatted strings, kept as written
    (``0.1400`` stays ``0.1400``, not ``0.14``); ``bf16`` reads ``BF16``.

    >>> run = pd.Index(["bf16"], name="run")
    >>> print(to_markdown(pd.DataFrame({"avg bits": ["16.00"]}, index=run)))
    | run   | avg bits   |
    |:------|:-----------|
    | BF16  | 16.00      |
    """
    return as_shown(table).to_markdown(disable_numparse=True)


def to_csv(table: pd.DataFrame) -> str:
    """The table as CSV, cells as the page shows them (strings, not re-parsed numbers)."""
    return as_shown(table).to_csv()


def to_latex(table: pd.DataFrame) -> str:
    """A ``booktabs`` table: one header row (the index's name heads the first column),
    ``%`` and ``_`` escaped, cells as the page shows them."""
    flat = as_shown(table).reset_index()
    return flat.to_latex(index=False, escape=True, column_format="l" + "r" * (flat.shape[1] - 1))


DISPLAY = {"bf16": "BF16"}  # one name per strategy wherever a run label is shown


def as_shown(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with run labels as the page shows them (``bf16`` → ``BF16``)."""
    out = table.copy()
    out.index = [DISPLAY.get(str(i), i) for i in out.index]
    out.index.name = table.index.name
    return out


def rests_on(machine: dict, timings: dict[str, float] | None = None) -> str:
    """One line saying where a run's numbers were measured and what it cost.

    >>> from mixviz.models.device import CPU
    >>> rests_on({"host": "h", "processor": "x86_64", "cores": 2, "threads": 2, "device": CPU,
    ...           "dtype": "float32", "peak_rss_bytes": 2.5e9}, {"load": 5.2, "evaluate": 61.0})
    'h (x86_64, 2 cores, 2 threads) · cpu float32 · peak memory 2.50 GB · load 5 s, evaluate 61 s'
    """
    if not machine:
        return "machine not recorded (a run from before mixviz kept it)"
    cpu = f"{machine.get('processor') or '?'}, {machine.get('cores')} cores"
    cpu += f", {machine['threads']} threads" if machine.get("threads") else ""
    where = machine.get("device", "?")
    if machine.get("gpu"):
        where = f"{where} ({machine['gpu']})"
    parts = [f"{machine.get('host', '?')} ({cpu})", f"{where} {machine.get('dtype', '')}".strip()]
    memory = [f"peak memory {machine['peak_rss_bytes'] / 1e9:.2f} GB"]
    if machine.get("peak_gpu_bytes") is not None:
        memory.append(f"GPU {machine['peak_gpu_bytes'] / 1e9:.2f} GB")
    parts.append(", ".join(memory) if machine.get("peak_rss_bytes") else "")
    if timings:
        parts.append(", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return " · ".join(p for p in parts if p)
