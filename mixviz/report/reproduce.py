"""The reference study's protocol on any model, from library calls: profile → allocate → run →
tables. Resumable: runs already in the store (same spec) are not run again.

Tables (as in ``shared/REFERENCE.md``): 1 — MXFP4/MXFP8 mixes at 4.5/5/6 bits beside BF16 and
pure MXFP4; 2 and 3 — tail-8 / head-8 / optimal / AutoScheme at 5 and 4.5 bits; 4 — W2+W4 at
3 bits (group 128, or 64 where 128 does not divide). Scale bits are ignored, as in the study.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixviz.allocation.problem import Problem
from mixviz.allocation.strategies import allocate
from mixviz.errors import MixvizError
from mixviz.models.device import CPU
from mixviz.models.loading import ModelRef, resolve_model
from mixviz.paths import atomic_write_bytes, atomic_write_json, cache_dir, safe_filename
from mixviz.runs.runspec import RunSpec
from mixviz.runs.store import RunRow, Store
from mixviz.sensitivity.profile import DEFAULT_METRIC

MX = ("MXFP4", "MXFP8")


@dataclass(frozen=True)
class Row:
    table: int
    label: str
    spec: RunSpec


def int_options(layers) -> tuple[str, str]:
    """W2/W4 at group 128, or the largest group that divides every block linear."""
    for g, suffix in ((128, ""), (64, "G64"), (32, "G32")):
        if all(x.in_features % g == 0 for x in layers):
            return f"W2A16{suffix}", f"W4A16{suffix}"
    raise MixvizError("no group size among 128/64/32 divides every layer of this model")


def reports_dir(model: str) -> Path:
    return cache_dir() / "reports" / safe_filename(model)


def autoscheme_recipe(
    ref,
    options: tuple[str, ...],
    budget: float,
    nsamples: int,
    seqlen: int,
    log: Callable[[str], None],
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, str]:
    """AutoScheme's own allocation (through auto-round) at ``budget``, cached on disk, scored
    on ``device`` in ``dtype`` (:mod:`mixviz.models.device`).

    Every cache here — the allocation, the calibration file, AutoScheme's score folder — is
    keyed by everything that changes it (:func:`autoscheme_key`), not by the model's name.
    """
    from mixviz.models.device import describe, placement
    from mixviz.models.loading import load_model
    from mixviz.models.text import calibration_text, token_windows
    from mixviz.sensitivity.autoscheme import run_autoscheme, scheme_from_autoround

    text = calibration_text()
    dev, torch_dtype = placement(device, dtype)
    where = describe(dev, torch_dtype)
    calib_key = autoscheme_key(ref.hash, (), nsamples, seqlen, text.hash)
    scores_key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash, where=where)
    key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash, budget, where)
    out = reports_dir(ref.name) / f"autoscheme-{'-'.join(options)}-{budget:g}-{key}.json"
    if out.is_file():
        return json.loads(out.read_text())["layers"]
    log(f"AutoScheme {'+'.join(options)} at {budget:g} bits (auto-round)")
    model, tok = load_model(ref, dtype=where[1], device=str(dev))
    calib = reports_dir(ref.name) / f"calib-{nsamples}x{seqlen}-{calib_key}.jsonl"
    if not calib.is_file():
        windows = token_windows(tok, text, nsamples, seqlen + 16)
        atomic_write_bytes(
            calib, "".join(json.dumps({"text": tok.decode(w)}) + "\n" for w in windows).encode()
        )
    scores = cache_dir() / "autoscheme" / scores_key
    config, _ = run_autoscheme(
        model,
        tok,
        list(options),
        str(calib),
        nsamples,
        seqlen,
        scores,
        avg_bits=budget,
        device=str(dev),
    )
    layers = {}
    for name, cfg in config.items():
        if "layers." not in name:  # lm_head and friends stay as they are
            continue
        bits = int(cfg.get("bits", 16) or 16)
        layers[name] = "BF16" if bits >= 16 else scheme_from_autoround(cfg).name
    atomic_write_json(
        out, {"options": list(options), "budget": budget, "key": key, "layers": layers}
    )
    return layers


def autoscheme_key(
    model_hash: str,
    options: tuple[str, ...],
    nsamples: int,
    seqlen: int,
    calib_sha256: str,
    budget: float | None = None,
    where: tuple[str, str] = (CPU, "float32"),
) -> str:
    """Digest of what changes an AutoScheme cache: model, options, calibration, budget, versions,
    and where it is scored (``where``: device type and dtype, as ``describe`` names them).

    >>> a = autoscheme_key("h", ("MXFP4",), 16, 256, "c")
    >>> a != autoscheme_key("h", ("MXFP4",), 8, 256, "c")
    True
    """
    from mixviz.sensitivity.profile import library_versions

    doc = {
        "model": model_hash,
        "options": sorted(options),
        "nsamples": nsamples,
        "seqlen": seqlen,
        "calib": calib_sha256,
        "budget": budget,
        "device": list(where),
        "ignore_scale_bits": True,
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def plan(
    model: str | ModelRef,
    tasks: tuple[str, ...],
    limit: int | None,
    metric: str,
    nsamples: int,
    seqlen: int,
    with_autoscheme: bool,
    log: Callable[[str], None],
    layers: list | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
) -> list[Row]:
    """Every run of the protocol, as (table, row label, RunSpec).

    ``model`` is a name (resolved here, once) or a resolved :class:`ModelRef`; ``layers`` its
    inventory, when the caller has it already. Profiles, runs and AutoScheme all run on
    ``device`` in ``dtype``."""
    from mixviz.models.inventory import block_linears
    from mixviz.sensitivity.profile import profile_model

    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    linears = block_linears(layers if layers is not None else model_layers(ref))
    base = dict(
        model=ref.name,
        tasks=tuple(tasks),
        limit=limit,
        model_hash=ref.hash,
        device=device,
        dtype=dtype,
    )

    def spec(recipe, strategy, budget=None):
        return RunSpec(recipe=recipe, strategy=strategy, budget=budget, **base)

    rows = [
        Row(1, "BF16", spec(None, "bf16")),
        Row(1, "pure 4-bit", spec({x.name: "MXFP4" for x in linears}, "pure MXFP4")),
    ]
    w2, w4 = int_options(linears)
    for options, table_budgets, high in (
        (MX, {1: (4.5, 5, 6), 2: (5,), 3: (4.5,)}, "8"),
        ((w2, w4), {4: (3,)}, "4"),
    ):
        log(f"profiling {ref.name} with {metric} for {'+'.join(options)}")
        prof = profile_model(
            ref,
            options=list(options),
            metric=metric,
            nsamples=nsamples,
            seqlen=seqlen,
            device=device,
            dtype=dtype,
        )
        problem = Problem.from_profile(prof, ignore_scale_bits=True)
        for table, budgets in table_budgets.items():
            for b in budgets:
                if table != 1:
                    for s in ("tail", "head"):
                        a = allocate(problem, b, s)
                        rows.append(
                            Row(table, f"{s} layers {high}-bit", spec(dict(a.layers), s, b))
                        )
                a = allocate(problem, b, "optimal")
                label = f"mixviz {b:g}" if table == 1 else "mixviz (optimal)"
                rows.append(Row(table, label, spec(dict(a.layers), "optimal", b)))
                if with_autoscheme:
                    recipe = autoscheme_recipe(
                        ref, options, b, nsamples, seqlen, log, device, dtype
                    )
                    label = f"AutoScheme {b:g}" if table == 1 else "AutoScheme"
                    rows.append(Row(table, label, spec(recipe, "autoscheme", b)))
    return rows


def model_layers(ref: ModelRef) -> list:
    """The model's layer inventory, from its config alone (no weights loaded)."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model

    return inventory(meta_model(ref))


def run_protocol(
    model: str,
    *,
    tasks: tuple[str, ...],
    limit: int | None = None,
    metric: str = DEFAULT_METRIC,
    nsamples: int = 16,
    seqlen: int = 256,
    with_autoscheme: bool = True,
    store: Store | None = None,
    log: Callable[[str], None] = lambda m: None,
    device: str = "auto",
    dtype: str = "auto",
    tables_only: bool = False,
) -> dict[int, object]:
    """Run (or resume) the protocol; write the tables under ``cache/reports/<model>/``, after
    every finished run (rows still to run show their state) and at the end. With
    ``tables_only`` nothing is queued or waited for: the tables show what the store holds now
    (a protocol running elsewhere, or interrupted).

    The model is resolved and its layers listed once, here, and handed down; ``device`` and
    ``dtype`` go to every profile, run and AutoScheme call."""
    from mixviz.runs.backends import wait

    store = store or Store()
    ref = resolve_model(model)
    layers = model_layers(ref)
    rows = plan(
        ref,
        tasks,
        limit,
        metric,
        nsamples,
        seqlen,
        with_autoscheme,
        log,
        layers,
        device=device,
        dtype=dtype,
    )
    if tables_only:
        runs = submit(rows, store, queue=False)
        log(f"{sum(r.status == 'done' for r in runs.values())} of {len(runs)} distinct runs done")
        return write_report(ref.name, rows, runs, store, tasks, layers)
    runs = submit(rows, store)
    todo = [r.id for r in runs.values() if r.status != "done"]  # one run per key
    log(f"{len(rows)} table rows, {len(runs)} distinct runs, {len(todo)} to run")
    final = {}
    for n, run_id in enumerate(todo, 1):
        r = final[run_id] = wait(store, run_id, poll=2)
        log(f"[{n}/{len(todo)}] {r.label}: {r.status}" + (f" ({r.error})" if r.error else ""))
        if n < len(todo):  # the tables so far: a protocol of days can be read as it goes
            now = {key: final.get(x.id, x) for key, x in runs.items()}
            write_report(ref.name, rows, now, store, tasks, layers)
    runs = {key: final.get(r.id, r) for key, r in runs.items()}
    return write_report(ref.name, rows, runs, store, tasks, layers)


def submit(rows: list[Row], store: Store, queue: bool = True) -> dict[str, RunRow]:
    """Each distinct run of ``rows`` (by spec key), through the queue's one
    :func:`~mixviz.runs.backends.submit`: an identical run queued, running or done is reused
    (and gains the row's name), else a new one is queued on the local backend. With
    ``queue=False`` nothing is queued: the latest done run, else a queued or running one, else
    a placeholder whose status is ``not run``."""
    from mixviz.runs.backends import REUSABLE, LocalBackend
    from mixviz.runs.backends import submit as submit_spec

    runs: dict[str, RunRow] = {}
    if queue:
        backend = LocalBackend(store)
        for row in rows:
            runs[row.spec.key] = store.get(submit_spec(backend, row.spec).id)
        return runs
    latest = {r.key: r for r in store.list(REUSABLE)}  # the latest per key
    done = {r.key: r for r in store.list(("done",))}
    for row in rows:
        key = row.spec.key
        runs[key] = done.get(key) or latest.get(key) or _not_run(row.spec)
    return runs


def _not_run(spec: RunSpec) -> RunRow:
    """A row's run that was never queued, as the tables show it."""
    nothing = dict.fromkeys(("started", "finished", "backend_id", "pid", "heartbeat", "error"))
    return RunRow(
        id="", key=spec.key, model=spec.model, label=spec.label, spec=spec.to_dict(),
        status="not run", stage="", progress=0.0, created=0.0, backend="local",
        avg_bits=None, **nothing,
    )  # fmt: skip


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
