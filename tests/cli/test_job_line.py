"""``run --wait`` and ``quantize``: the job's line on a terminal is redrawn every poll (the
elapsed clock ticks); in a log, a line when it moves and every 30 s while it does not."""

from __future__ import annotations

import io
from types import SimpleNamespace

from mixviz.cli.common import JobLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def row(started: float, progress: float = 0.1, status: str = "running", stage: str = "x"):
    return SimpleNamespace(
        id="r1",
        status=status,
        stage=stage,
        progress=progress,
        started=started,
        progressed=None,
        finish_by=None,
    )


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
