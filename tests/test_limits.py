"""Rooms that fit (issue 26): no module over 450 lines, no function over 80 lines, in the
library and the app (tests and benchmarks aside). A file past that is two capabilities; a
function past that is named sections waiting to be functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    """Every ``.py`` file of the library and the app: ``mixviz/``, ``app.py``, ``ui.py`` or
    ``ui/``, ``app_pages/``."""
    files = [REPO / "app.py", REPO / "ui.py"]
    for folder in ("mixviz", "ui", "app_pages"):
        files += sorted((REPO / folder).rglob("*.py"))
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _long_functions(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines)`` of each function or method over the limit."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = child.end_lineno - child.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    out.append((f"{prefix}{child.name}", child.lineno, size))
            visit(child, name)

    visit(ast.parse(path.read_text()), "")
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_sources_are_found():
    names = {_rel(p) for p in _sources()}
    assert "app.py" in names and "mixviz/__init__.py" in names
    assert any(n.startswith("app_pages/") for n in names)


def test_no_module_over_450_lines():
    long = [f"{_rel(p)}: {n} lines" for p in _sources() if (n := _lines(p)) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_over_80_lines():
    long = [
        f"{_rel(p)}:{line} {name}: {size} lines"
        for p in _sources()
        for name, line, size in _long_functions(p)
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


@pytest.mark.parametrize("size", [MAX_FUNCTION_LINES, MAX_FUNCTION_LINES + 1])
def test_a_function_is_measured_from_def_to_its_last_line(tmp_path, size):
    body = [f"        x{i} = {i}" for i in range(size - 1)]  # and the def line: ``size``
    path = tmp_path / "f.py"
    path.write_text("\n".join(["class C:", "    def f(self):", *body]) + "\n")
    found = _long_functions(path)
    assert found == ([] if size <= MAX_FUNCTION_LINES else [("C.f", 2, size)])
