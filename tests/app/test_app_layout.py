"""The app's layout: the sidebar is drawn once, by ``app.py`` (the size limits of the app and
the library are ``test_limits.py``'s)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_FILES = [REPO / "app.py", *sorted((REPO / "ui").glob("*.py"))]
APP_FILES += sorted((REPO / "app_pages").glob("*.py"))


def test_the_sidebar_is_drawn_once_by_app_py():
    callers = [p.name for p in APP_FILES if "ui.sidebar()" in p.read_text()]
    assert callers == ["app.py"]
