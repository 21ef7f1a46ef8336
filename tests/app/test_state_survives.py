"""State that survives: the budget and the items per task kept across pages (session) and
through a reload (URL), and the URL written in one update per change (each URL change is a
browser history entry: written key by key, one page load made a dozen and Back walked them)."""

from __future__ import annotations

import pytest
from apptest import TINY, open_app, profiled_tiny

import ui.url


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """tiny profiled through the Profile page, in this module's own cache folder."""
    yield from profiled_tiny(tmp_path_factory)


class _Params(dict):
    """``st.query_params`` as a dict that counts its updates."""

    updates = 0

    def update(self, *args, **kwargs):
        type(self).updates += 1
        super().update(*args, **kwargs)


def test_the_url_is_written_once_per_change_and_not_when_unchanged(monkeypatch):
    params = _Params(model="tiny")
    monkeypatch.setattr(ui.url.st, "query_params", params)
    ui.url.url_write(model="tiny", bits="5", options="MXFP4")
    assert params == {"model": "tiny", "bits": "5", "options": "MXFP4"} and params.updates == 1
    ui.url.url_write(model="tiny", bits="5")  # nothing changed: no new history entry
    assert params.updates == 1


def test_items_per_task_survive_other_pages_and_a_reload(profiled):
    at = open_app("app_pages/runs.py", **{**TINY, "bits": "6"})
    at.number_input(key="runs_limit").set_value(1).run()
    assert at.query_params["limit"] == "1" and at.query_params["bits"] == "6"
    at.switch_page("app_pages/allocate.py").run()
    at.switch_page("app_pages/runs.py").run()
    assert not at.exception and at.number_input(key="runs_limit").value == 1
    reloaded = open_app("app_pages/runs.py", **{**TINY, "bits": "6", "limit": "1"})
    assert reloaded.number_input(key="runs_limit").value == 1
    assert "at 6 bits" in reloaded.button(key="runs_start").label


def test_the_budget_a_reloaded_runs_page_had_goes_on_to_allocate(profiled):
    """A reload on Runs (``?bits=6.5``), then the Allocate page (whose link has no ``bits``:
    Streamlit drops a page's own parameters on a page switch): 6.5, not 5."""
    at = open_app("app_pages/runs.py", **{**TINY, "bits": "6.5"})
    del at.query_params["bits"]
    at.switch_page("app_pages/allocate.py").run()
    assert not at.exception and at.slider(key="allocate_avg_bits").value == 6.5


DOWNS = {f"model.layers.{b}.mlp.down_proj": "MXFP8" for b in range(4)}
LOCKS = "0.down=MXFP8,1.down=MXFP8,2.down=MXFP8,3.down=MXFP8"


def test_locks_are_in_the_url_and_a_reload_or_a_shared_link_has_them(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    at.multiselect(key="edit_kinds").set_value(["down"]).run()
    at.selectbox(key="edit_option").set_value("MXFP8").run()
    at.button(key="edit_set").click().run()
    assert not at.exception and at.query_params["locks"] == LOCKS
    shared = open_app("app_pages/allocate.py", **{**TINY, "bits": "6", "locks": LOCKS})
    assert not shared.exception and not shared.error
    assert shared.session_state["allocate_pins"] == DOWNS
    assert all(shared.session_state["allocation"]["layers"][n] == "MXFP8" for n in DOWNS)
    shared.button(key="edit_undo").click().run()  # the link's locks are one undoable step
    assert shared.session_state["allocate_pins"] == {} and "locks" not in shared.query_params


def test_a_reloaded_runs_page_runs_with_the_links_locks(profiled, monkeypatch):
    from mixviz.runs.jobs.backends import LocalBackend
    from mixviz.runs.store import Store

    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: None)
    at = open_app("app_pages/runs.py", **{**TINY, "bits": "6", "locks": LOCKS, "limit": "1"})
    assert not at.exception and any("with its **4 locks**" in c.value for c in at.caption)
    before = {r.id for r in Store().list()}
    at.button(key="runs_start").click().run()
    new = [r for r in Store().list() if r.id not in before]
    (optimal,) = [r for r in new if r.label == "optimal @6"]
    assert all(optimal.spec["recipe"][n] == "MXFP8" for n in DOWNS)
    for r in Store().list(("queued", "starting")):
        LocalBackend(Store()).cancel(r.id)


def test_a_bad_locks_link_is_an_error_not_a_crash(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "6", "locks": "9.down=MXFP8"})
    assert not at.exception
    assert any("(from the URL)" in e.value and "9.down" in e.value for e in at.error)
    assert at.session_state["allocate_pins"] == {}


def test_every_page_makes_url_writes_replace_the_history_entry():
    """The app (every page: it is app.py's) carries the script that turns a same-page
    ``pushState`` into ``replaceState``; the browser test shows Back walking pages."""
    at = open_app(**TINY)
    assert not at.exception
    (script,) = [h for h in at.get("html") if "__mixvizReplaces" in h.proto.body]
    assert "replaceState" in script.proto.body and "next.pathname ===" in script.proto.body
