"""The reference study's tables from its runs: Markdown, CSV and a chart, each accuracy with
its standard error and each quantized row's paired Δ against its budget's references."""

from __future__ import annotations

from mixviz.paths import atomic_write_bytes
from mixviz.report.study_plan import Row, reports_dir
from mixviz.runs.store import RunRow, Store


def write_report(
    model: str,
    rows: list[Row],
    runs: dict[str, RunRow],
    store: Store,
    tasks: tuple[str, ...],
    layers: list,
) -> dict[int, object]:
    """Tables 1–4 (Markdown + CSV) and a chart (HTML) under ``cache/reports/<model>/``.

    ``runs`` is each row's run (by spec key) as it ended; ``layers`` the model's inventory.
    Every accuracy reads ``acc ± se``; each quantized row gets its paired Δ against the best
    baseline at its budget and against AutoScheme's allocation at it (:mod:`.paired`)."""
    import time

    import pandas as pd

    from mixviz.report import charts
    from mixviz.report.tables import results_frame, task_metric

    frame = results_frame(store, model)
    by_id = frame.set_index("id", drop=False) if not frame.empty else frame
    primary = {t: task_metric(frame, t) for t in tasks} if not frame.empty else {}
    bf16 = _line(by_id, runs[rows[0].spec.key])
    ref = bf16["accuracy"] if bf16 is not None else None
    folder = reports_dir(model)
    titles = {
        1: "Table 1 — MXFP4/MXFP8 mixed",
        2: "Table 2 — average 5 bits, MXFP",
        3: "Table 3 — average 4.5 bits, MXFP",
        4: "Table 4 — average 3 bits, W2 + W4",
    }
    md = [
        f"# {model}: the reference study's tables\n",
        f"Written {time.strftime('%Y-%m-%d %H:%M')}. Tasks: {', '.join(tasks)}; accuracy = "
        "mean of the tasks' acc, ± its standard error; *items* = the items it rests on; KLD = "
        "mean KL divergence to the unquantized model per token (± se over 512-token windows) "
        "and top-1 = share of tokens whose most likely next token is unchanged. Δ = paired "
        "difference of the average accuracy in points (item by item, 95 % interval; `*` = the "
        "interval excludes 0) and of KLD (per token), against the best of tail/head at the "
        "same budget and against AutoScheme's allocation at it. Avg bits ignore scale bits, "
        "as in the study; the next column counts them.\n",
    ]
    tables, points = {}, []
    for t, title in titles.items():
        data, pts = table_rows(
            [r for r in rows if r.table == t], rows, runs, by_id, ref, layers, tasks, primary
        )
        if t != 4:
            points += pts
        table = pd.DataFrame(data).set_index("strategy").fillna("")
        tables[t] = table
        atomic_write_bytes(folder / f"table{t}.csv", table.to_csv().encode())
        md += [f"\n## {title}\n", table.to_markdown(), ""]
    atomic_write_bytes(folder / "tables.md", "\n".join(md).encode())
    if points:
        pts = pd.DataFrame(points)
        fig = charts.accuracy_chart(pts[pts["strategy"] != "bf16"], ref)
        atomic_write_bytes(folder / "chart.html", fig.to_html(include_plotlyjs=True).encode())
    return tables


def _line(by_id, run: RunRow | None):
    """The run's line of :func:`results_frame`, or None when it has not finished."""
    if run is None or run.status != "done" or getattr(by_id, "empty", True):
        return None
    return by_id.loc[run.id] if run.id in by_id.index else None


def _known(x) -> bool:
    return x is not None and x == x  # not None, not NaN


def references(row: Row, rows: list[Row], runs: dict[str, RunRow], by_id) -> dict[str, tuple]:
    """The runs a row is compared with, as ``(row label, line)``: the most accurate of
    tail/head at its budget, and AutoScheme's allocation at it (each only where finished)."""
    if row.spec.recipe is None or row.spec.budget is None:
        return {}
    same = [r for r in rows if r.spec.budget == row.spec.budget and r.spec.key != row.spec.key]

    def lines(strategies: tuple[str, ...]) -> list[tuple]:
        out = [
            (r.label, _line(by_id, runs.get(r.spec.key)))
            for r in same
            if r.spec.strategy in strategies
        ]
        return [(label, x) for label, x in out if x is not None and _known(x["accuracy"])]

    out = {}
    base = lines(("tail", "head"))
    if base and row.spec.strategy not in ("tail", "head"):
        out["best baseline"] = max(base, key=lambda lx: lx[1]["accuracy"])
    auto = lines(("autoscheme",))
    if auto and row.spec.strategy != "autoscheme":
        out["AutoScheme"] = auto[0]
    return out


def table_rows(
    rows: list[Row],
    all_rows: list[Row],
    runs: dict[str, RunRow],
    by_id,
    ref: float | None,
    layers: list,
    tasks: tuple[str, ...],
    primary: dict[str, str | None],
) -> tuple[list[dict], list[dict]]:
    """One table's lines (strategy, bits both ways, accuracy ± se as a share of BF16's,
    items, KLD, top-1, paired Δs) and its points for the chart (runs with an accuracy)."""
    from mixviz.report.recipe import Recipe

    data, points = [], []
    for row in rows:
        run = runs[row.spec.key]
        line = _line(by_id, run)
        no_scale = (
            Recipe(row.spec.model, "", row.spec.recipe).average_bits(layers, True)
            if row.spec.recipe
            else 16.0
        )
        d = {
            "strategy": row.label,
            "avg bits": f"{no_scale:.2f}",
            "with scale bits": f"{run.avg_bits:.2f}" if run.avg_bits else "",
            "accuracy": run.status,
        }
        if line is not None:
            d.update(_measured(line, ref))
            for name, (label, other) in references(row, all_rows, runs, by_id).items():
                d[f"Δ vs {name}"] = _delta_cell(other, label, run.id, tasks, primary)
            if _known(line["accuracy"]) and run.avg_bits:
                points.append(
                    {
                        "strategy": row.spec.strategy or "bf16",
                        "avg_bits": run.avg_bits,
                        "accuracy": line["accuracy"],
                        "accuracy_se": line["accuracy_se"],
                    }
                )
        data.append(d)
    return data, points


def _measured(line, ref: float | None) -> dict[str, str]:
    """A finished run's accuracy (± se, share of BF16's), items, KLD and top-1 cells."""
    from mixviz.report.tables import summary_cells

    cells = summary_cells(line, ref)
    return {"accuracy": cells.pop("average"), **cells}


def _delta_cell(other, label: str, run_id: str, tasks: tuple[str, ...], primary) -> str:
    """``+1.2 [-0.4, +2.8] vs tail layers 8-bit; KLD -0.0123 [...] *`` — the run minus
    ``other`` (the run of the row named ``label``)."""
    from mixviz.report.paired import compare_runs

    cmp = compare_runs(other["id"], run_id, list(tasks), primary)
    acc, kld = cmp.get("average"), cmp.get("kld")
    cell = f"{acc.format()} vs {label}" if acc and acc.n else f"vs {label}"
    if kld is not None:
        cell += f"; KLD {kld.format(scale=1.0, digits=4)}"
    return cell
