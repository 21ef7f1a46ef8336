"""Refine as a job in the one queue: its spec, its stage and progress in the store, its rounds
on disk as they finish, its answer beside them."""

from __future__ import annotations

import json

import pytest

from mixviz.errors import MixvizError
from mixviz.runs.jobs.refine import answer_path, expected_measurements, rounds_so_far
from mixviz.runs.jobs.submission import store_once
from mixviz.runs.jobs.worker import execute
from mixviz.runs.runspec import REFINE_TASK, RefineArgs, RunSpec
from mixviz.runs.store import Store
from mixviz.sensitivity.profile import profile_model


def _spec(profile_file, **kw) -> RunSpec:
    args = RefineArgs(str(profile_file), 6.0, rounds=1, windows=4, seqlen=64, heldout=3, **kw)
    return RunSpec(
        "tiny", None, (REFINE_TASK,), device="cpu", dtype="float32", refine=args, model_hash="x"
    )


def test_a_refine_spec_round_trips_and_is_told_apart(tmp_path):
    spec = _spec(tmp_path / "p.json", pins={"b": "MXFP8", "a": "MXFP4"}, shared=["qkv"])
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.key == spec.key
    assert spec.label == "refine @6 (kind, 1 rounds)"
    assert spec.key != _spec(tmp_path / "p.json", pins={"a": "MXFP4"}).key  # the locks count
    plain = RunSpec("tiny", None, ("mixviz_lastword",))  # a spec written before refine jobs
    old = {k: v for k, v in plain.to_dict().items() if k != "refine"}
    assert RunSpec.from_dict(old).key == plain.key
    with pytest.raises(MixvizError, match="quantizes nothing"):
        RunSpec("tiny", {"a": "MXFP4"}, ("x",), refine=spec.refine)


def test_expected_measurements_counts_each_round():
    assert expected_measurements(1, 3, heldout=False) == 1 + (3 + 1)
    assert expected_measurements(2, 3, heldout=True) == 2 + 2 * (3 + 2)


class Recording(Store):
    """A store that keeps every progress and stage it was given for one run."""

    seen: list = []

    def update(self, run_id, **fields):
        if "progress" in fields or "stage" in fields:
            self.seen.append((fields.get("stage"), fields.get("progress")))
        super().update(run_id, **fields)


def test_the_worker_runs_a_refine_job_with_its_rounds_and_progress(tiny_ref, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    prof = profile_model(tiny_ref, options="MXFP4,MXFP8", nsamples=4, seqlen=64)
    prof.save(tmp_path / "p.json")
    spec = _spec(tmp_path / "p.json")
    spec = RunSpec.from_dict({**spec.to_dict(), "model_hash": prof.model_hash})
    store = Recording(tmp_path / "cache" / "mixviz.db")
    sub = store_once(store, spec, "local", force=False)
    assert rounds_so_far(sub.id) == []
    assert execute(sub.id, store, kick=False) == "done"
    row = store.get(sub.id)
    assert (row.status, row.stage, row.progress) == ("done", "done", 1.0)
    rounds = rounds_so_far(sub.id)
    answer = json.loads(answer_path(sub.id).read_text())
    assert [r["index"] for r in rounds] == [r["index"] for r in answer["rounds"]]
    assert rounds[0]["heldout"] is not None and answer["strategy"] == "refined"
    assert row.avg_bits == pytest.approx(answer["rounds"][answer["best"]]["avg_bits"])
    progress = [p for _, p in store.seen if p is not None]
    assert progress == sorted(progress) and len(set(progress)) >= 3  # it moves, never back
    stages = [s for s, _ in store.seen if s]
    assert any(s.startswith("round 0: measuring") for s in stages)
    assert "round 0 done" in stages
    # queued again: the finished job is reused, its rounds read at once
    assert store_once(store, spec, "local", force=False).reused
