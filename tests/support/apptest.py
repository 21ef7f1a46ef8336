"""Open the app the way a user does, for AppTest: query params first, then the page."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def open_app(page: str | None = None, **params) -> AppTest:
    """``app.py`` with ``params`` in the URL, switched to ``page`` (``app_pages/….py``)."""
    at = AppTest.from_file(APP, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at
