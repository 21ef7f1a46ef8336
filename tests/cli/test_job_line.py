"""``run --wait``, ``quantize`` and ``refine``: the job's line on a terminal is redrawn every
poll (the elapsed clock ticks); in a log, a line when it moves and every 30 s while it does not;
Ctrl-C cancels the job the command queued (one it reused is left running)."""

from __future__ import annotations

import io

import pytest

from mixviz.cli.common import JobLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def row(started: float, progress: float = 0.1, status: str = "running", stage: str = "x"):
    """A stored job's row as the line reads it (what the store does not matter here: blank)."""
    from mixviz.runs.store import RunRow

    return RunRow(
        id="r1", key="", model="", label="", spec={}, status=status, stage=stage,
        progress=progress, created=started, started=started, finished=None, backend="local",
        backend_id=None, pid=None, heartbeat=None, avg_bits=None, error=None,
    )  # fmt: skip


def test_on_a_terminal_the_line_ticks_every_poll(monkeypatch):
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    line = JobLine()
    now = 1000.0
    monkeypatch.setattr("time.time", lambda: now)
    line.show(row(started=990.0))
    now = 1002.0
    line.show(row(started=990.0))  # nothing moved: redrawn anyway, 2 s later
    draws = err.getvalue().split("\r\x1b[K")[1:]
    assert [d.split(" · ")[1][:4] for d in draws] == ["0:10", "0:12"]
    line.show(row(started=990.0, progress=1.0, status="done"))
    assert err.getvalue().endswith("\n")


def test_in_a_log_a_line_when_it_moves_or_every_30_s(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    now = 1000.0
    monkeypatch.setattr("time.time", lambda: now)
    line = JobLine()
    for t in (1000.0, 1002.0, 1004.0):
        now = t
        line.show(row(started=990.0))
    assert err.getvalue().count("\n") == 1
    now = 1040.0
    line.show(row(started=990.0))
    assert err.getvalue().count("\n") == 2 and "0:50 elapsed" in err.getvalue()


def test_the_line_names_the_stage(monkeypatch):
    stage = "quantizing, block 3/30"
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    JobLine().show(row(started=0.0, stage=stage))
    assert f"running {stage} 10%" in err.getvalue()


class Backend:
    """A backend whose job is interrupted while it is followed; records what was cancelled."""

    def __init__(self, store):
        self.store, self.name, self.cancelled = store, "local", []

    def cancel(self, run_id):
        self.cancelled.append(run_id)
        return self.store.cancel(run_id, ("queued", "running"))

    def reconcile(self):
        raise KeyboardInterrupt  # Ctrl-C while the command waits


@pytest.mark.parametrize("reused", [False, True])
def test_ctrl_c_cancels_the_job_this_command_queued(tmp_path, monkeypatch, capsys, reused):
    from mixviz.cli.common import follow
    from mixviz.runs.store import Store

    monkeypatch.setattr(
        "mixviz.runs.jobs.backends.reconcile_all", lambda s, b: b["local"].reconcile()
    )
    store = Store(tmp_path / "runs.db")
    store.insert("r1", "k", "tiny", "refine @6 (kind, 1 rounds)", {})
    backend = Backend(store)
    with pytest.raises(KeyboardInterrupt):
        follow(backend, "r1", reused)
    err = capsys.readouterr().err
    if reused:  # someone else's job: left running, and how to stop it said
        assert backend.cancelled == [] and store.get("r1").status == "queued"
        assert "mixviz cancel r1" in err
    else:
        assert backend.cancelled == ["r1"] and store.get("r1").status == "cancelled"
        assert "cancelled job r1" in err


@pytest.fixture
def interrupted(tmp_path, monkeypatch, capsys):
    """Run a command whose job never starts (no worker) and whose wait gets Ctrl-C: its exit
    code, stderr and the job as the store then holds it."""
    from mixviz.cli import main
    from mixviz.runs.jobs.local_backend import LocalBackend
    from mixviz.runs.store import Store

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(LocalBackend, "_spawn", lambda self, run_id: None)

    def ctrl_c(store, backends):
        raise KeyboardInterrupt

    def go(*argv, queued_before: bool = False):
        if queued_before:  # someone else queued the identical job
            assert main([*argv, "--no-wait"] if argv[0] == "quantize" else argv[:-1]) == 0
            capsys.readouterr()
        monkeypatch.setattr("mixviz.runs.jobs.backends.reconcile_all", ctrl_c)
        code = main(list(argv))
        (row,) = Store().list()
        return code, capsys.readouterr().err, row

    return go


@pytest.mark.parametrize("reused", [False, True])
def test_ctrl_c_in_run_wait_cancels_the_run_it_queued(interrupted, reused):
    code, err, row = interrupted(
        "run", "tiny", "--bf16", "--tasks", "lambada_openai", "--limit", "2", "--wait",
        queued_before=reused,
    )  # fmt: skip
    assert code == 130 and "interrupted" in err
    if reused:
        assert row.status != "cancelled" and f"mixviz cancel {row.id}" in err
    else:
        assert row.status == "cancelled" and f"cancelled job {row.id}" in err


@pytest.mark.parametrize("reused", [False, True])
def test_ctrl_c_in_quantize_cancels_the_job_it_queued(interrupted, tmp_path, tiny_layers, reused):
    import json

    plan = {x.name: "W4A16G32" for x in tiny_layers if x.block is not None}
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"layers": plan}))
    code, err, row = interrupted(
        "quantize", "tiny", "--recipe", str(recipe), "--format", "auto_round",
        "--out", str(tmp_path / "ckpt"), "--limit", "2", queued_before=reused,
    )  # fmt: skip
    assert code == 130 and "interrupted" in err
    if reused:
        assert row.status != "cancelled" and f"mixviz cancel {row.id}" in err
    else:
        assert row.status == "cancelled" and f"cancelled job {row.id}" in err
