"""The app's own code stays small: no module over 450 lines and no function over 80 in
``app.py``, ``ui/`` and ``app_pages/``; the sidebar is drawn once, by ``app.py``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APP_FILES = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py"))]
APP_FILES += sorted((REPO / "app_pages").glob("*.py"))


def test_modules_and_functions_fit_on_a_screen():
    long = []
    for path in APP_FILES:
        text = path.read_text()
        if len(text.splitlines()) > 450:
            long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_the_sidebar_is_drawn_once_by_app_py():
    callers = [p.name for p in APP_FILES if "ui.sidebar()" in p.read_text()]
    assert callers == ["app.py"]
