"""Result tables in the reference study's style: ``0.6857 (96.9%)`` = accuracy and its share of
the BF16 model's, from the runs in the store. Markdown, CSV and LaTeX through pandas.
"""

from __future__ import annotations

import pandas as pd

PRIMARY = ("acc", "acc_norm")  # the accuracy metric of a task: acc, else acc_norm


def primary_metric(metrics: dict[str, float]) -> str | None:
    """``{"acc": .., "acc_norm": ..}`` → ``"acc"``; a perplexity-only task → None."""
    return next((m for m in PRIMARY if m in metrics), None)


def results_frame(store, model: str | None = None) -> pd.DataFrame:
    """One row per finished run: label, strategy, budget, bits, each task's accuracy, average.

    >>> results_frame(Store()).columns[:4].tolist()           # doctest: +SKIP
    ['id', 'label', 'strategy', 'budget']
    """
    rows = []
    for run in store.list(("done",), model=model):
        res = store.results(run.id)
        spec = run.spec
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
        accs = []
        for task in spec.get("tasks", []):
            metrics = res.get(task, {})
            m = primary_metric(metrics)
            if m is not None:
                row[task] = metrics[m]
                accs.append(metrics[m])
            for key, value in metrics.items():
                row[f"{task}:{key}"] = value
        row["accuracy"] = sum(accs) / len(accs) if accs else None
        rows.append(row)
    return pd.DataFrame(rows)


def study_table(frame: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Rows = runs (latest per label), columns = avg bits, each task, and the average as
    ``0.6857 (96.9%)`` of the BF16 run's average (when there is one)."""
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
        out[t] = [f"{v:.4f}" if pd.notna(v) else "" for v in frame[t]]
    out["average"] = [format_share(a, ref) for a in frame["accuracy"]]
    order = frame["avg_bits"].fillna(99).to_numpy().argsort(kind="stable")
    return out.iloc[order]


def task_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of :func:`results_frame` that hold a task's accuracy."""
    skip = {
        "id",
        "label",
        "strategy",
        "budget",
        "avg_bits",
        "model",
        "recipe",
        "accuracy",
        "predicted_loss",
    }
    return [c for c in frame.columns if c not in skip and ":" not in c]


def format_share(value: float | None, reference: float | None) -> str:
    """``format_share(0.6857, 0.7076)`` → ``'0.6857 (96.9%)'``."""
    if value is None or pd.isna(value):
        return ""
    if reference:
        return f"{value:.4f} ({100 * value / reference:.1f}%)"
    return f"{value:.4f}"


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
