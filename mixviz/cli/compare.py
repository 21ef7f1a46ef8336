"""``mixviz compare RUN_A RUN_B``: run B minus run A, paired item by item and window by window,
each Δ with its 95 % t interval (df beside it), or ``—`` and why where there is none."""

from __future__ import annotations

import argparse

from mixviz.cli.common import add_json, emit
from mixviz.runs.runspec import SCORE_FROM


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired Δ of two finished runs (B − A), 95 % t intervals")
    p.add_argument("a", metavar="RUN_A", help="the reference run's id")
    p.add_argument("b", metavar="RUN_B", help="the run compared with it")
    p.add_argument(
        "--score-from",
        choices=SCORE_FROM,
        help="KLD on every position (all) or llama.cpp's (half); default: all when both runs "
        "were scored on all, half when either was",
    )
    add_json(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> None:
    from mixviz.report.paired import compare_runs, kld_positions
    from mixviz.report.tables import primary_metric
    from mixviz.runs.store import Store

    store = Store()
    res_a, res_b = store.results(store.get(args.a).id), store.results(store.get(args.b).id)
    tasks = [t for t in res_b if t in res_a]
    primary = {t: m for t in tasks if (m := primary_metric(res_b[t]))}
    cmp = compare_runs(args.a, args.b, tasks, primary, args.score_from)
    where = kld_positions(args.a, args.b, args.score_from)
    doc = {
        "a": args.a,
        "b": args.b,
        "kld_positions": where,
        "metrics": {
            name: {**d.to_dict(), "metric": primary.get(name, name)} for name, d in cmp.items()
        },
    }
    emit(doc, args.json, lambda _: _text(args.a, args.b, cmp, where))


def _text(a: str, b: str, cmp: dict, where: str | None = None) -> str:
    lines = [f"{b} − {a}, paired (95 % t interval; * = it excludes 0)"]
    if where == "half":
        lines.append("  KLD on llama.cpp's positions (the second half of each window)")
    for name, d in cmp.items():
        points = name != "kld"
        cell = d.format(scale=100.0 if points else 1.0, digits=1 if points else 5)
        df = "" if d.df is None or not d.has_interval else f"  df {d.df:.0f}"
        lines.append(f"  {name:>20}  {cell}{df}" + ("  (points)" if points else "  (nats/token)"))
    return "\n".join(lines) if cmp else f"{a} and {b} share no task with per-item scores"
