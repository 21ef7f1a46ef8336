"""The URL's query parameters: every ``?key=`` the app reads, and the one writer.

No page reads ``st.query_params`` itself. A link is user input: a value that is missing gives
the default, and a value that is not valid never crashes a page — a number the user could have
mistyped (:func:`url_int`, :func:`url_bits`) is an ``st.error`` naming it, a choice that is not
on offer (:func:`url_choice`, :func:`url_list`) is dropped, a file that was not uploaded here
(:func:`url_calib`) is refused. :func:`url_write` is the one writer.
"""

from __future__ import annotations

import math

import streamlit as st

from mixviz.models.text import BUNDLED
from ui.uploads import is_upload


def url_text(key: str, default: str) -> str:
    """``?key=`` as it stands, or ``default`` when absent."""
    return st.query_params.get(key, default)


def url_flag(key: str) -> bool:
    """``?key=1`` → True; absent or anything else → False."""
    return st.query_params.get(key) == "1"


def url_choice(key: str, choices: list[str], default: str) -> str:
    """``?key=`` when it is one of ``choices``, else ``default``."""
    raw = st.query_params.get(key)
    return raw if raw in choices else default


def url_list(key: str, default: list[str], allowed=None) -> list[str]:
    """``?key=a,b``: the comma-separated values (those in ``allowed``, when given), or
    ``default`` when absent or empty."""
    raw = st.query_params.get(key)
    values = [x for x in raw.split(",") if x] if raw else list(default)
    return values if allowed is None else [x for x in values if x in allowed]


def url_int(key: str, default: int, lo: int, hi: int, what: str) -> int:
    """``?key=`` as an int in ``lo..hi``; anything else is an error and ``default``."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        st.error(f"{what} {raw!r} (from the URL) is not a whole number {lo}–{hi}; using {default}.")
        return default
    return value


def url_bits(default: float) -> float:
    """The average-bits budget from ``?bits=``: a finite number, or ``default`` and an error.

    Shared by the Allocate and Runs pages (the range check is the Allocate page's own)."""
    raw = st.query_params.get("bits")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        st.error(f"Average bits {raw!r} (from the URL) is not a number; using {default:g}.")
        return default
    return value


def url_calib() -> str:
    """``?calib=``: ``pydoc`` or a file uploaded through this app, else ``pydoc``.

    A link must not make the app read any other local file. A refused value is remembered for
    the session (the URL is rewritten to ``pydoc``) so the sidebar keeps warning about it."""
    raw = st.query_params.get("calib")
    if raw is None or raw == BUNDLED or is_upload(raw):
        return raw or BUNDLED
    st.session_state["sb_calib_refused"] = True
    return BUNDLED


def url_drop(key: str) -> None:
    """Remove ``?key=`` from the URL (a parameter an old or crafted link must not set)."""
    if key in st.query_params:
        del st.query_params[key]


def url_write(**values: str) -> None:
    """Put the page's choices in the URL, so a reload or a shared link keeps them: what
    changed, in one update (the browser adds a history entry per change of the URL: written
    key by key, one page load added a dozen, and Back walked them instead of the pages)."""
    changed = {k: v for k, v in values.items() if st.query_params.get(k) != v}
    if changed:
        st.query_params.update(changed)


# Streamlit pushes a history entry for every change of the query string (each slider step
# added one, and Back walked them). Within one page a change replaces the entry; a new page
# (another path) still adds one, so Back walks pages.
_REPLACE_WITHIN_PAGE = """<script>
(() => {
  const h = window.history;
  if (h.__mixvizReplaces) return;
  const push = h.pushState.bind(h);
  h.pushState = (state, title, url) => {
    const next = new URL(url ?? window.location.href, window.location.href);
    if (next.pathname === window.location.pathname) return h.replaceState(state, title, url);
    return push(state, title, url);
  };
  h.__mixvizReplaces = true;
})();
</script>"""


def url_history_per_page() -> None:
    """Make the browser's history hold one entry per page, not one per URL write."""
    st.html(_REPLACE_WITHIN_PAGE, unsafe_allow_javascript=True, width="content")
