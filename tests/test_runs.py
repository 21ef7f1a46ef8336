"""Runs: spec → worker → store, with fakes for speed and the real auto-round + lm-eval path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.runs.backends import LocalBackend, new_run_id, run_document, wait, write_spec
from mixviz.runs.runspec import QuantArgs, RunResult, RunSpec
from mixviz.runs.store import Store, runs_dir
from mixviz.runs.worker import execute, result_rows

REPO = Path(__file__).resolve().parent.parent
TASKS = ("mixviz_lastword", "mixviz_nextsent")


_cli = run_cli


def _fake_eval(model, tok, spec, on_task):
    on_task(0, 1)
    return {
        "mixviz_lastword": {
            "results": {
                "mixviz_lastword": {
                    "acc,none": 0.5,
                    "acc_stderr,none": 0.1,
                    "perplexity,none": 12.0,
                    "alias": "x",
                }
            }
        }
    }


def _queue(store: Store, spec: RunSpec) -> str:
    run_id = new_run_id()
    write_spec(run_id, spec)
    store.insert(run_id, spec.key, spec.model, spec.label, spec.to_dict())
    return run_id


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return Store()


def test_spec_and_result_roundtrip():
    spec = RunSpec(
        model="tiny",
        recipe={"a": "MXFP4"},
        tasks=TASKS,
        limit=3,
        quant=QuantArgs(iters=2),
        strategy="optimal",
        budget=5.0,
    )
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.label == "optimal @5"
    assert RunSpec(model="tiny", recipe={"a": "MXFP4"}, tasks=TASKS).label == "uniform MXFP4"
    assert spec.key != RunSpec(model="tiny", recipe={"a": "MXFP8"}, tasks=TASKS).key
    r = RunResult("x", "done", 4.25, 4.0, {"t": {"acc": 0.5}}, {}, 1.0, {"load": 0.1})
    assert RunResult.from_dict(r.to_dict()) == r
    with pytest.raises(MixvizError, match="float16"):
        RunSpec(model="tiny", recipe=None, tasks=TASKS, dtype="float16")
    with pytest.raises(MixvizError, match="unknown option"):
        RunSpec(model="tiny", recipe={"a": "FP5"}, tasks=TASKS)


def test_result_rows_parse_lm_eval_keys():
    rows = result_rows(_fake_eval(None, None, None, lambda i, n: None))
    assert ("mixviz_lastword", "acc", 0.5, 0.1) in rows
    assert ("mixviz_lastword", "perplexity", 12.0, None) in rows


def test_execute_with_fakes_writes_everything(store, tiny_ref):
    spec = RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), model_hash=tiny_ref.hash)
    run_id = _queue(store, spec)
    assert execute(run_id, store, evaluate_fn=_fake_eval, kick=False) == "done"
    row = store.get(run_id)
    assert row.status == "done" and row.progress == 1.0 and row.avg_bits == 16.0
    assert store.results(run_id) == {"mixviz_lastword": {"acc": 0.5, "perplexity": 12.0}}
    folder = runs_dir() / run_id
    assert {"spec.json", "result.json", "lm_eval.json"} <= {p.name for p in folder.iterdir()}
    assert RunResult.from_dict(json.loads((folder / "result.json").read_text())).avg_bits == 16.0


def test_verify_mismatch_fails_loudly(store, tiny_layers):
    recipe = {x.name: "MXFP4" for x in tiny_layers if x.block is not None}
    run_id = _queue(store, RunSpec(model="tiny", recipe=recipe, tasks=("mixviz_lastword",)))
    status = execute(
        run_id, store, quantize_fn=lambda m, t, s: m, evaluate_fn=_fake_eval, kick=False
    )
    row = store.get(run_id)
    assert status == "failed" and "did not get their scheme" in row.error
    assert store.results(run_id) == {}


def test_too_short_calibration_is_a_run_error(store, tiny_layers):
    recipe = {x.name: "W4A16G32" for x in tiny_layers if x.block is not None}
    spec = RunSpec(
        model="tiny",
        recipe=recipe,
        tasks=("mixviz_lastword",),
        quant=QuantArgs(iters=1, nsamples=2, seqlen=1_000_000),
    )
    run_id = _queue(store, spec)
    assert execute(run_id, store, evaluate_fn=_fake_eval, kick=False) == "failed"
    assert "calibration" in store.get(run_id).error


def test_end_to_end_tiny_real_autoround_and_lm_eval():
    r = _cli(
        "run",
        "tiny",
        "--uniform",
        "MXFP4",
        "--tasks",
        ",".join(TASKS),
        "--limit",
        "8",
        "--wait",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["status"] == "done" and doc["avg_bits"] == 4.25
    assert set(doc["results"]) == set(TASKS)
    assert 0 <= doc["results"]["mixviz_nextsent"]["acc_norm"] <= 1
    assert doc["results"]["mixviz_lastword"]["perplexity"] > 1
    listed = json.loads(_cli("runs", "--json").stdout)["runs"]
    assert any(x["id"] == doc["id"] and x["status"] == "done" for x in listed)


def test_unknown_and_offline_tasks():
    r = _cli("run", "tiny", "--bf16", "--tasks", "no_such_task_xyz")
    assert r.returncode == 2 and "unknown lm-eval task 'no_such_task_xyz'" in r.stderr
    r = _cli("run", "tiny", "--bf16", "--tasks", "lambada_openai", "--limit", "2", "--wait")
    assert r.returncode == 2 and "lambada_openai" in r.stderr and "Traceback" not in r.stderr


def _wait_for(store, run_id, pred, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = store.get(run_id)
        if pred(row):
            return row
        time.sleep(0.1)
    raise AssertionError(f"timed out; last {row}")


@pytest.mark.parametrize("stage", ["quantizing", "evaluating"])
def test_killed_worker_is_lost_and_queue_goes_on(store, tiny_layers, stage):
    recipe = {x.name: "MXFP8" for x in tiny_layers if x.block is not None}
    backend = LocalBackend(store)
    first = backend.submit(RunSpec(model="tiny", recipe=recipe, tasks=TASKS, limit=40))
    second = backend.submit(RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=4))
    assert store.get(second).status == "queued"
    row = _wait_for(store, first, lambda r: r.stage.startswith(stage) and r.pid)
    os.killpg(row.pid, signal.SIGKILL)
    _wait_for(store, first, lambda r: not _alive_pid(r.pid), timeout=30)
    backend.kick()  # what the app or CLI does on its next look
    assert store.get(first).status == "lost"
    assert wait(store, second, timeout=600).status == "done"
    assert store.results(second)["mixviz_lastword"]["acc"] >= 0


def _alive_pid(pid):
    from mixviz.runs.backends import alive

    return alive(pid)


def test_cancel_queued_and_running(store):
    backend = LocalBackend(store)
    a = backend.submit(RunSpec(model="tiny", recipe=None, tasks=TASKS, limit=200))
    b = backend.submit(RunSpec(model="tiny", recipe=None, tasks=TASKS, limit=2))
    assert backend.cancel(b).status == "cancelled"
    row = _wait_for(store, a, lambda r: r.status == "running" and r.pid)
    assert backend.cancel(a).status == "cancelled"
    _wait_for(store, a, lambda r: not _alive_pid(row.pid), timeout=30)
    assert store.get(a).status == "cancelled"
    with pytest.raises(MixvizError, match="already cancelled"):
        backend.cancel(a)


def test_run_document_shape(store, tiny_ref):
    run_id = _queue(store, RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",)))
    execute(run_id, store, evaluate_fn=_fake_eval, kick=False)
    doc = run_document(store, run_id)
    assert {"id", "status", "avg_bits", "results", "seconds"} <= set(doc)


@pytest.mark.slow
def test_demo_end_to_end_small_limit():
    r = _cli(
        "run",
        "demo",
        "--uniform",
        "MXFP8",
        "--tasks",
        "mixviz_lastword",
        "--limit",
        "6",
        "--wait",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["status"] == "done" and doc["avg_bits"] == 8.25
    assert doc["results"]["mixviz_lastword"]["acc"] >= 0


@pytest.mark.ray
def test_ray_backend_local_head(tmp_path, store):
    from mixviz.runs.backends import RayBackend

    ray = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [
            str(ray),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--port=0",
            "--dashboard-host=127.0.0.1",
            "--dashboard-port=8265",
            "--num-cpus=2",
            "--num-gpus=0",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        backend = RayBackend("http://127.0.0.1:8265", store)
        run_id = backend.submit(
            RunSpec(model="tiny", recipe=None, tasks=("mixviz_lastword",), limit=4)
        )
        row = wait(store, run_id, timeout=600, poll=2)
        assert row.status == "done", (row.error, backend.client.get_job_logs(run_id)[-2000:])
        assert store.results(run_id)["mixviz_lastword"]["acc"] >= 0
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_unreachable_ray_address_is_clear(store):
    from mixviz.runs.backends import get_backend

    with pytest.raises(MixvizError, match="cannot reach Ray at http://127.0.0.1:9"):
        get_backend("ray", store, ray_address="http://127.0.0.1:9")
