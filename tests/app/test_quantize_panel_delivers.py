"""The *Quantize* panel with an identical finished job: its verified files are copied to the
folder asked for, or, gone, quantized again — and the page says which."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from apptest import open_app

from mixviz.runs.jobs.backends import LocalBackend
from mixviz.runs.ship.staging import changed, fingerprint
from mixviz.runs.store import Store, runs_dir

TINY = {"model": "tiny", "options": "MXFP4,MXFP8", "metric": "hessian", "nsamples": "2",
        "seqlen": "32", "noscale": "1", "bits": "6"}  # fmt: skip


@pytest.fixture
def allocate_page(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: None)  # no workers
    open_app("app_pages/profile.py", **TINY).button(key="profile_start").click().run()
    return open_app("app_pages/allocate.py", **TINY)


def _quantize_into(at, folder) -> None:
    at.text_input(key="allocate_quantize_out_auto_round").set_value(str(folder))
    at.button(key="allocate_quantize").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]


def _finish(run_id: str, folder) -> None:
    """Make the queued job a finished one whose verified checkpoint is ``folder``."""
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    (folder / "config.json").write_text("{}")
    Store().transition(run_id, ("queued", "starting"), status="done", stage="done")
    doc = {"format": "auto_round", "out": str(folder), "file": str(folder),
           "files": fingerprint(folder), "ok": True}  # fmt: skip
    (runs_dir() / run_id / "ship.json").write_text(json.dumps(doc))


def test_a_reused_job_is_copied_or_quantized_again(tmp_path, allocate_page):
    at = allocate_page
    _quantize_into(at, tmp_path / "a")
    (job,) = [r for r in Store().list() if r.spec.get("ship")]
    _finish(job.id, tmp_path / "a")

    _quantize_into(at, tmp_path / "b")
    assert any(f"reused run {job.id}, copied to {tmp_path / 'b'}" in s.value for s in at.success)
    files = json.loads((runs_dir() / job.id / "ship.json").read_text())["files"]
    assert changed(tmp_path / "b", files) is None
    assert len(Store().list()) == 1

    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    _quantize_into(at, tmp_path / "c")
    (again,) = [w.value for w in at.warning if "quantizing again" in w.value]
    assert f"files of run {job.id} are gone" in again
    fresh = [r for r in Store().list() if r.id != job.id]
    assert len(fresh) == 1 and fresh[0].spec["ship"]["out"] == str(tmp_path / "c")
    assert fresh[0].status in ("queued", "starting") and fresh[0].id in again


def test_the_panel_takes_limit_and_iters_and_predicts_the_time(tmp_path, allocate_page):
    at = allocate_page
    (caption,) = [c.value for c in at.caption if c.value.startswith("Predicted time")]
    assert "not known yet (no finished quantize job of tiny with iters 0" in caption
    at.number_input(key="allocate_quantize_limit").set_value(3)
    at.number_input(key="allocate_quantize_iters").set_value(0)
    _quantize_into(at, tmp_path / "a")
    (job,) = [r for r in Store().list() if r.spec.get("ship")]
    assert job.spec["limit"] == 3 and job.spec["quant"]["iters"] == 0
    # finished in 100 s, 40 of them over its 3 KLD windows: 6 windows → 60 + 80 s
    _finish(job.id, tmp_path / "a")
    Store().put_results(job.id, [("mixviz_kld", "df", 2.0, None)])
    result = {"format": "mixviz.runresult", "version": 1, "id": job.id, "status": "done",
              "avg_bits": 6.0, "avg_bits_no_scale": 6.0, "results": {}, "stderrs": {},
              "seconds": 100.0, "timings": {"kld": 30.0, "reload kld": 10.0}}  # fmt: skip
    (runs_dir() / job.id / "result.json").write_text(json.dumps(result))
    at.number_input(key="allocate_quantize_limit").set_value(6).run()
    (caption,) = [c.value for c in at.caption if c.value.startswith("Predicted time")]
    assert caption.startswith("Predicted time: about 2:20 (6 window(s), scaled from job")
    at.number_input(key="allocate_quantize_iters").set_value(50).run()
    (caption,) = [c.value for c in at.caption if c.value.startswith("Predicted time")]
    assert "not known yet" in caption and "iters 50" in caption


def test_the_panel_promises_the_bytes_the_job_checks_the_files_against(tmp_path, allocate_page):
    """The panel's size is the job's predicted checkpoint bytes (what ``quantize`` compares
    the written files with), per format; a format that cannot hold the recipe says why."""
    from mixviz.models.loading import resolve_model
    from mixviz.runs.runspec import RunSpec
    from mixviz.runs.ship.delivery import predicted_bytes

    at = allocate_page

    def promised() -> str:
        (said,) = [c.value for c in at.caption if c.value.startswith("The checkpoint: ")]
        return said

    m = re.search(r"\(([\d,]+) bytes\) as an auto_round file", promised())
    assert m, promised()
    _quantize_into(at, tmp_path / "a")
    (job,) = [r for r in Store().list() if r.spec.get("ship")]
    assert int(m[1].replace(",", "")) == predicted_bytes(
        resolve_model("tiny"), RunSpec.from_dict(job.spec)
    )
    at.selectbox(key="allocate_quantize_format").set_value("llm_compressor").run()
    assert re.search(r"MiB \([\d,]+ bytes\) as a llm_compressor file", promised()), promised()
    at.selectbox(key="allocate_quantize_format").set_value("auto_gptq").run()
    assert promised().startswith("The checkpoint: — (an auto_gptq checkpoint cannot hold")
