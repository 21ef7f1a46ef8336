"""The *Quantize* panel hands the job the importance matrix the profile was weighted by, as
``quantize --imatrix`` does (issue 32): profiled with the sidebar's importance matrix, the queued
job's spec names the very file the profile used."""

from __future__ import annotations

import pytest
from apptest import open_app

from mixviz.models import ggml
from mixviz.runs.jobs.backends import LocalBackend
from mixviz.runs.store import Store

GGML = {"model": "tiny", "options": "Q4_0,Q8_0", "metric": "hessian", "nsamples": "2",
        "seqlen": "32", "bits": "6", "imatrix": "1"}  # fmt: skip

pytestmark = pytest.mark.skipif(not ggml.available(), reason="ggml is not built (llama.cpp)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: None)  # no workers
    return tmp_path


def _queued_imatrix(at, folder, key: str) -> str | None:
    at.selectbox(key=f"{key}_quantize_format").set_value("gguf").run()
    at.text_input(key=f"{key}_quantize_out_gguf").set_value(str(folder))
    at.button(key=f"{key}_quantize").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (job,) = [r for r in Store().list() if r.spec.get("ship")]
    return job.spec["quant"].get("imatrix")


def test_the_profiles_imatrix_goes_to_the_quantize_job(cache):
    at = open_app("app_pages/profile.py", **GGML)
    assert at.checkbox(key="sb_imatrix").value is True  # from the link
    at.button(key="profile_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    files = list((cache / "cache" / "imatrix").glob("*.gguf"))
    assert len(files) == 1  # llama.cpp's importance matrix of the calibration text

    at = open_app("app_pages/allocate.py", **GGML)
    assert not at.exception
    assert any(str(files[0]) in c.value for c in at.caption)  # the page says which
    assert _queued_imatrix(at, cache / "ckpt", "allocate") == str(files[0])


def test_without_the_imatrix_the_job_has_none(cache):
    plain = {k: v for k, v in GGML.items() if k != "imatrix"}
    at = open_app("app_pages/profile.py", **plain)
    assert at.checkbox(key="sb_imatrix").value is False
    at.button(key="profile_start").click().run()
    at = open_app("app_pages/allocate.py", **plain)
    assert not at.exception
    assert _queued_imatrix(at, cache / "ckpt", "allocate") is None
