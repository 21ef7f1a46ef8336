"""The house: imports only go down the pipeline, no cycles, and one registry per extension point.

Stages, in pipeline order: ``models`` → ``sensitivity`` → ``allocation`` → ``runs`` →
``report`` → ``cli``. ``errors`` and ``paths`` sit below them all. A module may import its own
stage and the stages before it, never a later one. Inside ``runs`` the same holds for its rooms:
the record (``runs.runspec``, ``runs.store``, …) → ``runs.evaluation`` → ``runs.ship`` →
``runs.jobs``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "mixviz"
STAGES = {"errors": 0, "paths": 0, "models": 1, "sensitivity": 2, "allocation": 3, "runs": 4}
STAGES |= {"report": 5, "cli": 6, "api": 6, "__init__": 7, "__main__": 7}  # api: the front door
ROOMS = {"evaluation": 0.1, "ship": 0.2, "jobs": 0.3}  # inside runs, after its shared record


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``mixviz…`` module this file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mixviz":
                out |= {f"mixviz.{a.name}" for a in node.names}
            elif node.module.startswith("mixviz."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mixviz.")}
    return out


def _stage(module: str) -> float:
    parts = module.split(".")
    if len(parts) < 2:
        return STAGES["__init__"]
    room = ROOMS.get(parts[2], 0.0) if parts[1] == "runs" and len(parts) > 2 else 0.0
    return STAGES[parts[1]] + room


def _graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts]
    known = {_module(p) for p in files}

    def resolve(name: str) -> str:
        while name not in known and "." in name:  # ``from mixviz.models import text``
            name = name.rsplit(".", 1)[0]
        return name

    return {_module(p): {resolve(m) for m in _imports(p)} - {_module(p)} for p in files}


def test_every_module_belongs_to_a_stage():
    for module in _graph():
        _stage(module)  # KeyError names a module outside the house


def test_runs_is_split_into_its_rooms():
    """``runs`` holds its shared record and three rooms, not the whole pipeline in one folder."""
    top = {p.stem for p in (PKG / "runs").glob("*.py")} - {"__init__"}
    assert top == {"runspec", "store", "liveness", "progress"}
    assert {p.name for p in (PKG / "runs").iterdir() if p.is_dir()} - {"__pycache__"} == set(ROOMS)


def test_imports_only_go_down_the_pipeline():
    upward = [
        f"{m} (stage {_stage(m)}) imports {d} (stage {_stage(d)})"
        for m, deps in _graph().items()
        for d in deps
        if _stage(d) > _stage(m) and not m.endswith(("__init__", "__main__")) and m != "mixviz"
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if d == "mixviz":
                continue  # the package's own __init__ re-exports; modules import submodules
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_private_name_crosses_a_module_border():
    crossing = []
    for p in PKG.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixviz"):
                crossing += [
                    f"{_module(p)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, "\n".join(crossing)


# --------------------------------------------------------------------------- registries


@pytest.fixture
def toys():
    """A toy metric, strategy and exporter, registered for one test and removed after."""
    from mixviz.allocation import baselines
    from mixviz.allocation.strategies import STRATEGIES, Strategy, register_strategy
    from mixviz.report.export import EXPORTERS, Exporter, register_exporter
    from mixviz.sensitivity.metrics import METRICS, Metric, register_metric

    def toy_score(model, layers, schemes, ids, step, batch_size=1):
        step("toy")
        return {(x.name, s.name): float(16 - s.bits) for x in layers for s in schemes}

    metric = register_metric(
        Metric(
            name="toymetric",
            score=toy_score,
            batch_size=1,
            work_units=lambda layers, schemes, nbatches, nblocks: 1,
            description="a toy metric: fewer bits, more damage",
        )
    )
    strategy = register_strategy(
        Strategy(
            name="toystrategy",
            solve=lambda problem, budget: baselines.uniform(problem, budget),
            colour="#123456",
            label="toy strategy",
            baseline=True,
        )
    )
    exporter = register_exporter(
        Exporter(
            name="toyexporter",
            label="toy exporter",
            suffix="toy.txt",
            render=lambda recipe: "\n".join(recipe.layers) + "\n",
        )
    )
    yield metric, strategy, exporter
    METRICS.pop("toymetric", None)
    STRATEGIES.pop("toystrategy", None)
    EXPORTERS.pop("toyexporter", None)


def test_registered_metric_and_strategy_reach_cli_sidebar_and_frontier(toys, tiny_ref):
    from mixviz.allocation.problem import Problem
    from mixviz.allocation.strategies import frontier
    from mixviz.cli import build_parser
    from mixviz.report.export import exporter_names
    from mixviz.sensitivity.profile import profile_model

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "toymetric" in sub.choices["profile"].format_help()
    assert "toystrategy" in sub.choices["allocate"].format_help()
    to = next(a for a in sub.choices["export"]._actions if a.dest == "to")
    assert "toyexporter" in to.choices and "toyexporter" in exporter_names()

    prof = profile_model(
        tiny_ref, options="MXFP4,MXFP8", metric="toymetric", nsamples=2, seqlen=32, use_cache=False
    )
    assert prof.metric == "toymetric"
    curves = frontier(Problem.from_profile(prof), 5)
    assert curves["toystrategy"] and curves["optimal"]

    from apptest import open_app

    at = open_app()
    metric_box = next(s for s in at.sidebar.selectbox if "etric" in s.label)
    assert "toymetric" in metric_box.options
