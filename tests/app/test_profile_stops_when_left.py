"""Leaving the Profile page while it profiles stops the work: the profiling thread is cancelled
at its next step and joins, nothing half-made is cached, and the page says it was stopped when
it is shown again. The page switch arrives while the script is still in its redraw loop, as a
browser's does: a rerun request to the running script (AppTest's ``run`` alone waits for the
script to end, so the test sends it from a second thread)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib import parse

import pytest
from apptest import TINY, open_app


@pytest.fixture
def runners(monkeypatch):
    """Every script runner AppTest starts, to send it a page switch from outside."""
    from streamlit.testing.v1 import app_test

    made = []

    class Recorded(app_test.LocalScriptRunner):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(app_test, "LocalScriptRunner", Recorded)
    return made


@pytest.fixture
def slow_steps(monkeypatch):
    """Each profiling step takes 0.5 s; the event is set once the first one is reported."""
    from mixviz.sensitivity import profile

    first = threading.Event()
    report = profile._Watch.report

    def slow(self, done, total, msg):
        report(self, done, total, msg)
        if done:
            first.set()
            time.sleep(0.5)

    monkeypatch.setattr(profile._Watch, "report", slow)
    return first


def _profiling(tmp_path, monkeypatch, slow_steps):
    """The Profile page with its script running a profile (in a thread): (AppTest, thread)."""
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    at = open_app("app_pages/profile.py", **TINY)
    at.button(key="profile_start").click()
    ran = threading.Thread(target=at.run)
    ran.start()
    assert slow_steps.wait(120), "profiling never reported a step"
    return at, ran


def _stopped(at, tmp_path) -> str:
    """The profile's thread was cancelled and has joined, with nothing cached: what it was."""
    was, job = at.session_state["profile_job"]
    assert job.cancelled and job.wait(10), "the profiling thread did not stop"
    assert type(job.error).__name__ == "Cancelled"
    profiles = tmp_path / "cache" / "profiles"
    assert not (profiles.exists() and any(profiles.iterdir())), list(profiles.iterdir())
    return was


def test_leaving_the_page_stops_the_profile(tmp_path, monkeypatch, runners, slow_steps):
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    at, ran = _profiling(tmp_path, monkeypatch, slow_steps)
    allocate = at._resolve_page_hash(str(Path("app_pages/allocate.py").resolve()))
    query = parse.urlencode(dict(at.query_params), doseq=True)
    assert runners[-1].request_rerun(RerunData(query_string=query, page_script_hash=allocate))
    ran.join(120)
    assert not ran.is_alive() and not at.exception
    assert any(t.value == "Allocate" for t in at.title), "the switch did not reach Allocate"
    was = _stopped(at, tmp_path)

    at.switch_page("app_pages/profile.py").run()
    assert not at.exception
    said = [w.value for w in at.warning]
    assert any(f"Profiling {was} was stopped before it finished" in w for w in said), said
    assert at.button(key="profile_start")  # and it can be started again


def test_the_session_ending_stops_the_profile(tmp_path, monkeypatch, runners, slow_steps):
    at, ran = _profiling(tmp_path, monkeypatch, slow_steps)
    runners[-1].request_stop()  # what Streamlit does when the browser's session ends
    ran.join(120)
    assert not ran.is_alive()
    _stopped(at, tmp_path)
