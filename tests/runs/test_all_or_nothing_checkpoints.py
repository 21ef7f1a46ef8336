"""All-or-nothing checkpoints: a quantize job writes into a sibling partial folder renamed to
``--out`` only once verified, so a failure, a cancel or a ``kill -9`` at any stage leaves
``--out`` absent or as it was; ``--out`` is checked for writability and room at submit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli import REPO, run_cli

from mixviz import MixvizError
from mixviz.paths import worker_env
from mixviz.runs.jobs.local_backend import LocalBackend
from mixviz.runs.jobs.submission import store_once
from mixviz.runs.ship.staging import partial_dir, partial_runs
from mixviz.runs.store import Store


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXVIZ_MAX_PARALLEL", raising=False)
    return {"MIXVIZ_CACHE": str(tmp_path / "cache")}


def _plan(layers) -> dict[str, str]:
    return {x.name: ["W4A16G32", "W8A16G32"][i % 2] for i, x in enumerate(layers)
            if x.block is not None}  # fmt: skip


def _queued(tiny_ref, tiny_layers, out: Path) -> tuple[Store, str]:
    """A quantize job for ``out``, queued in the store (no worker started)."""
    from mixviz.runs.ship.step import quantize_spec

    spec = quantize_spec(tiny_ref, _plan(tiny_layers), "auto_round", out, layers=tiny_layers,
                         limit=2)  # fmt: skip
    store = Store()
    return store, store_once(store, spec, "local", False).id


# --------------------------------------------------------------------------- at submit


def test_an_unwritable_out_is_refused_before_anything_is_queued(tmp_path, cache, tiny_layers):
    recipe = tmp_path / "r.json"
    recipe.write_text(__import__("json").dumps({"layers": _plan(tiny_layers)}))
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", "auto_round", "--out",
                "/proc/x/ckpt", env=cache)  # fmt: skip
    assert r.returncode == 2 and "cannot write to /proc/x/ckpt" in r.stderr, r.stderr[-800:]
    assert Store().list() == []


def test_an_out_without_room_is_refused(tmp_path, cache, tiny_ref, tiny_layers, monkeypatch):
    import shutil

    from mixviz.runs.runspec import RunSpec, ShipArgs
    from mixviz.runs.ship.delivery import predicted_bytes

    spec = RunSpec(model="tiny", recipe=_plan(tiny_layers), tasks=("mixviz_kld",),
                   ship=ShipArgs("auto_round", str(tmp_path / "o")))  # fmt: skip
    need = predicted_bytes(tiny_ref, spec)
    assert need > sum(x.numel for x in tiny_layers) * 0.5  # the weights at ≥ 4 bits at least
    real = shutil.disk_usage

    def nearly_full(path):
        u = real(path)
        return type(u)(u.total, u.total - int(1.5 * need), int(1.5 * need))

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(MixvizError, match="not enough room for the checkpoint"):
        _queued(tiny_ref, tiny_layers, tmp_path / "o")
    assert Store().list() == [] and not (tmp_path / "o").exists()


def test_partial_folders_of_ended_runs_are_cleared_at_submit(tmp_path, cache, tiny_ref,
                                                             tiny_layers):  # fmt: skip
    out = tmp_path / "o"
    store, old = _queued(tiny_ref, tiny_layers, out)
    store.cancel(old, ("queued",))
    partial_dir(out, old).mkdir()
    (partial_dir(out, old) / "model.safetensors").write_bytes(b"half")
    store, live = _queued(tiny_ref, tiny_layers, tmp_path / "other")
    partial_dir(out, live).mkdir()  # a run still going keeps its folder
    _queued(tiny_ref, tiny_layers, out)
    assert set(partial_runs(out)) == {live}


# --------------------------------------------------------------------------- failures


def _fail_in(monkeypatch, name: str):
    import mixviz.runs.ship.step as ship

    def boom(*args, **kwargs):
        raise MixvizError(f"injected fault in {name}")

    monkeypatch.setattr(ship, name, boom)


@pytest.mark.parametrize(
    "stage",
    ["_format_string", "read_formats", "reload", "_klds", "write_card"],
    ids=["writing", "reading back", "reloading", "KLD", "card"],
)
def test_a_failure_at_any_stage_leaves_out_as_it_was(tmp_path, cache, tiny_ref, tiny_layers,
                                                     monkeypatch, stage):  # fmt: skip
    from mixviz.runs.jobs.worker import execute

    out = tmp_path / "new" / "ckpt"  # its parent does not exist yet either
    store, run_id = _queued(tiny_ref, tiny_layers, out)
    _fail_in(monkeypatch, stage)
    assert execute(run_id, store, kick=False) == "failed"
    assert f"injected fault in {stage}" in store.get(run_id).error
    assert not (tmp_path / "new").exists()  # nothing: no out, no partial, no parent


def test_a_failure_leaves_an_empty_out_empty(tmp_path, cache, tiny_ref, tiny_layers, monkeypatch):
    from mixviz.runs.jobs.worker import execute

    out = tmp_path / "ckpt"
    out.mkdir()
    store, run_id = _queued(tiny_ref, tiny_layers, out)
    _fail_in(monkeypatch, "_klds")
    assert execute(run_id, store, kick=False) == "failed"
    assert out.is_dir() and list(out.iterdir()) == []
    assert set(tmp_path.iterdir()) == {out, tmp_path / "cache"}


# --------------------------------------------------------------------------- kill -9, cancel

STALLED_WORKER = textwrap.dedent(
    """
    import sys, time
    import mixviz.runs.ship.step as ship
    def stall(*args, **kwargs):
        time.sleep(600)
    setattr(ship, sys.argv[2], stall)  # the stage this worker hangs in
    from mixviz.runs.jobs.worker import main
    raise SystemExit(main([sys.argv[1]]))
    """
)


def _stalled_worker(run_id: str, stage: str, log: Path) -> subprocess.Popen:
    """The real worker for ``run_id``, in its own process group, hanging in ``stage``."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-c", STALLED_WORKER, run_id, stage], cwd=REPO,
                                env=worker_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _wait_for_stage(store: Store, run_id: str, stage: str, proc, log: Path) -> None:
    deadline = time.time() + 300
    while store.get(run_id).stage != stage:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.time() < deadline, f"never reached {stage}: {store.get(run_id).stage}"
        time.sleep(0.2)
    time.sleep(0.5)  # inside the stalled call


@pytest.mark.parametrize(
    "stall, stage",
    [("reload", "reloading from disk"), ("_klds", "KLD of the reloaded model")],
    ids=["reloading", "KLD"],
)
def test_kill_9_of_the_worker_leaves_no_checkpoint(tmp_path, cache, tiny_ref, tiny_layers,
                                                   stall, stage):  # fmt: skip
    out = tmp_path / "ckpt"
    store, run_id = _queued(tiny_ref, tiny_layers, out)
    proc = _stalled_worker(run_id, stall, tmp_path / "log.txt")
    try:
        _wait_for_stage(store, run_id, stage, proc, tmp_path / "log.txt")
        written = partial_dir(out, run_id)
        assert (written / "model.safetensors").is_file()  # the files were there, half-way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()
    assert LocalBackend(store).reconcile() == [run_id]  # lost; its partial folder goes
    assert store.get(run_id).status == "lost"
    assert set(tmp_path.iterdir()) == {tmp_path / "cache", tmp_path / "log.txt"}


def test_a_cancelled_job_leaves_no_checkpoint(tmp_path, cache, tiny_ref, tiny_layers):
    out = tmp_path / "ckpt"
    store, run_id = _queued(tiny_ref, tiny_layers, out)
    proc = _stalled_worker(run_id, "_klds", tmp_path / "log.txt")
    try:
        _wait_for_stage(store, run_id, "KLD of the reloaded model", proc, tmp_path / "log.txt")
        assert partial_dir(out, run_id).is_dir()
        assert LocalBackend(store).cancel(run_id).status == "cancelled"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists() and not partial_dir(out, run_id).exists()
