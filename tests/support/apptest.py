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


TINY = {
    "model": "tiny",
    "options": "MXFP4,MXFP8",
    "metric": "hessian",
    "nsamples": "2",
    "seqlen": "32",
    "noscale": "1",
}
"""The sidebar's URL for ``tiny`` profiled fast (hessian, 2×32 tokens, scale bits ignored)."""


def profiled_tiny(tmp_path_factory):
    """A module fixture's body: ``tiny`` profiled through the Profile page in the module's own
    cache folder (yields the AppTest; the old folder comes back after)."""
    import os

    old = os.environ["MIXVIZ_CACHE"]
    os.environ["MIXVIZ_CACHE"] = str(tmp_path_factory.mktemp("app-cache"))
    at = open_app("app_pages/profile.py", **TINY)
    at.button(key="profile_start").click().run()
    assert not at.exception
    yield at
    os.environ["MIXVIZ_CACHE"] = old
