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

from mixviz.allocate import Problem, allocate
from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_bytes, atomic_write_json, cache_dir
from mixviz.profile import DEFAULT_METRIC
from mixviz.runspec import RunSpec
from mixviz.store import Store

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
    from mixviz.profile import _safe

    return cache_dir() / "reports" / _safe(model)


def autoscheme_recipe(
    ref,
    options: tuple[str, ...],
    budget: float,
    nsamples: int,
    seqlen: int,
    log: Callable[[str], None],
) -> dict[str, str]:
    """AutoScheme's own allocation (through auto-round) at ``budget``, cached on disk.

    Every cache here — the allocation, the calibration file, AutoScheme's score folder — is
    keyed by everything that changes it (:func:`autoscheme_key`), not by the model's name.
    """
    from mixviz.autoscheme import run_autoscheme, scheme_from_autoround
    from mixviz.models import load_model
    from mixviz.text import calibration_text, token_windows

    text = calibration_text()
    calib_key = autoscheme_key(ref.hash, (), nsamples, seqlen, text.hash)
    scores_key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash)
    key = autoscheme_key(ref.hash, options, nsamples, seqlen, text.hash, budget)
    out = reports_dir(ref.name) / f"autoscheme-{'-'.join(options)}-{budget:g}-{key}.json"
    if out.is_file():
        return json.loads(out.read_text())["layers"]
    log(f"AutoScheme {'+'.join(options)} at {budget:g} bits (auto-round)")
    model, tok = load_model(ref)
    calib = reports_dir(ref.name) / f"calib-{nsamples}x{seqlen}-{calib_key}.jsonl"
    if not calib.is_file():
        windows = token_windows(tok, text, nsamples, seqlen + 16)
        atomic_write_bytes(
            calib, "".join(json.dumps({"text": tok.decode(w)}) + "\n" for w in windows).encode()
        )
    scores = cache_dir() / "autoscheme" / scores_key
    config, _ = run_autoscheme(
        model, tok, list(options), str(calib), nsamples, seqlen, scores, avg_bits=budget
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
) -> str:
    """Digest of what changes an AutoScheme cache: model, options, calibration, budget, versions.

    >>> a = autoscheme_key("h", ("MXFP4",), 16, 256, "c")
    >>> a != autoscheme_key("h", ("MXFP4",), 8, 256, "c")
    True
    """
    from mixviz.profile import library_versions

    doc = {
        "model": model_hash,
        "options": sorted(options),
        "nsamples": nsamples,
        "seqlen": seqlen,
        "calib": calib_sha256,
        "budget": budget,
        "ignore_scale_bits": True,
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def plan(
    model: str,
    tasks: tuple[str, ...],
    limit: int | None,
    metric: str,
    nsamples: int,
    seqlen: int,
    with_autoscheme: bool,
    log: Callable[[str], None],
) -> list[Row]:
    """Every run of the protocol, as (table, row label, RunSpec)."""
    from mixviz.inventory import block_linears, inventory
    from mixviz.models import meta_model, resolve_model
    from mixviz.profile import profile_model

    ref = resolve_model(model)
    layers = block_linears(inventory(meta_model(ref)))
    base = dict(model=model, tasks=tuple(tasks), limit=limit, model_hash=ref.hash)

    def spec(recipe, strategy, budget=None):
        return RunSpec(recipe=recipe, strategy=strategy, budget=budget, **base)

    rows = [
        Row(1, "BF16", spec(None, "bf16")),
        Row(1, "pure 4-bit", spec({x.name: "MXFP4" for x in layers}, "pure MXFP4")),
    ]
    w2, w4 = int_options(layers)
    for options, table_budgets, high in (
        (MX, {1: (4.5, 5, 6), 2: (5,), 3: (4.5,)}, "8"),
        ((w2, w4), {4: (3,)}, "4"),
    ):
        log(f"profiling {model} with {metric} for {'+'.join(options)}")
        prof = profile_model(
            model, options=list(options), metric=metric, nsamples=nsamples, seqlen=seqlen
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
                    recipe = autoscheme_recipe(ref, options, b, nsamples, seqlen, log)
                    label = f"AutoScheme {b:g}" if table == 1 else "AutoScheme"
                    rows.append(Row(table, label, spec(recipe, "autoscheme", b)))
    return rows


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
) -> dict[int, object]:
    """Run (or resume) the protocol; write the tables under ``cache/reports/<model>/``."""
    from mixviz.backends import LocalBackend, wait

    store = store or Store()
    rows = plan(model, tasks, limit, metric, nsamples, seqlen, with_autoscheme, log)
    backend = LocalBackend(store)
    ids: dict[str, str] = {}
    for row in rows:
        key = row.spec.key
        if key in ids:
            continue
        done = store.find_done(key)
        pending = [r for r in store.list(("queued", "starting", "running")) if r.key == key]
        if done:
            ids[key] = done.id
        elif pending:
            ids[key] = pending[0].id
        else:
            ids[key] = backend.submit(row.spec)
    todo = [i for i in dict.fromkeys(ids.values()) if store.get(i).status != "done"]
    log(f"{len(rows)} table rows, {len(set(ids.values()))} distinct runs, {len(todo)} to run")
    for n, run_id in enumerate(todo, 1):
        r = wait(store, run_id, poll=2)
        log(f"[{n}/{len(todo)}] {r.label}: {r.status}" + (f" ({r.error})" if r.error else ""))
    return write_report(model, rows, ids, store, tasks)


def write_report(
    model: str, rows: list[Row], ids: dict[str, str], store: Store, tasks: tuple[str, ...]
) -> dict[int, object]:
    """Tables 1–4 (Markdown + CSV) and a chart (HTML) under ``cache/reports/<model>/``."""
    import pandas as pd

    from mixviz import charts
    from mixviz.tables import format_share, primary_metric

    def accuracy(run_id):
        res = store.results(run_id)
        vals = [res[t][m] for t in tasks if t in res and (m := primary_metric(res[t]))]
        return sum(vals) / len(vals) if vals else None

    bf16_id = ids[rows[0].spec.key]
    ref = accuracy(bf16_id) if store.get(bf16_id).status == "done" else None
    folder = reports_dir(model)
    titles = {
        1: "Table 1 — MXFP4/MXFP8 mixed",
        2: "Table 2 — average 5 bits, MXFP",
        3: "Table 3 — average 4.5 bits, MXFP",
        4: "Table 4 — average 3 bits, W2 + W4",
    }
    tables, md = (
        {},
        [
            f"# {model}: the reference study's tables\n",
            f"Tasks: {', '.join(tasks)} (accuracy = mean of their acc). "
            "Avg bits ignore scale bits, as in the study; the next column counts them.\n",
        ],
    )
    from mixviz.inventory import inventory
    from mixviz.models import meta_model, resolve_model
    from mixviz.recipe import Recipe

    layers = inventory(meta_model(resolve_model(model)))
    points = []
    for t, title in titles.items():
        data = []
        for row in (r for r in rows if r.table == t):
            run = store.get(ids[row.spec.key])
            acc = accuracy(run.id) if run.status == "done" else None
            no_scale = (
                Recipe(model, "", row.spec.recipe).average_bits(layers, True)
                if row.spec.recipe
                else 16.0
            )
            data.append(
                {
                    "strategy": row.label,
                    "avg bits": f"{no_scale:.2f}",
                    "with scale bits": f"{run.avg_bits:.2f}" if run.avg_bits else "",
                    "accuracy": format_share(acc, ref) if acc is not None else run.status,
                }
            )
            if acc is not None and t != 4 and run.avg_bits:
                points.append(
                    {
                        "strategy": row.spec.strategy or "bf16",
                        "avg_bits": run.avg_bits,
                        "accuracy": acc,
                    }
                )
        frame = pd.DataFrame(data).set_index("strategy")
        tables[t] = frame
        atomic_write_bytes(folder / f"table{t}.csv", frame.to_csv().encode())
        md += [f"\n## {title}\n", frame.to_markdown(), ""]
    atomic_write_bytes(folder / "tables.md", "\n".join(md).encode())
    if points:
        pts = pd.DataFrame(points)
        fig = charts.accuracy_chart(pts[pts["strategy"] != "bf16"], ref)
        atomic_write_bytes(folder / "chart.html", fig.to_html(include_plotlyjs=True).encode())
    return tables
