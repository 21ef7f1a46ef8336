"""Elapsed time and an estimate of the time left, from the work done and when it was done
(the app's Runs and Profile pages and the CLI's ``runs --wait`` say both).

The estimate rests on completed work only: the pace up to the moment the last unit finished
(``progressed``), counted down since. While work goes at a steady pace it never grows between
two polls (a poll between two units counts down instead of stretching the pace), and it is
absent until :data:`MIN_FRACTION` of the work is done.
"""

from __future__ import annotations

import time

MIN_FRACTION = 0.03  # below this share done, a pace says little: no estimate yet


def duration(seconds: float) -> str:
    """``duration(75)`` → ``'1:15'``; ``duration(3725)`` → ``'1:02:05'``.

    >>> duration(4.2), duration(75), duration(3725)
    ('0:04', '1:15', '1:02:05')
    """
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def remaining(fraction: float, elapsed: float) -> float | None:
    """Seconds left if the rest goes as fast as the part done; None before there is a part
    done to go by (or once it is all done).

    >>> remaining(0.25, 60.0), remaining(0.0, 60.0), remaining(1.0, 60.0)
    (180.0, None, None)
    """
    if not MIN_FRACTION <= fraction < 1 or elapsed <= 0:
        return None
    return elapsed * (1 - fraction) / fraction


def time_left(
    fraction: float, started: float, progressed: float | None, now: float
) -> float | None:
    """Seconds left: the pace of the work done by ``progressed`` (when ``fraction`` was
    reached), less the time since then; None before :data:`MIN_FRACTION` is done, or once
    the countdown has run out (the estimate was too short: no number beats a wrong one).

    >>> time_left(0.25, 0.0, 60.0, 60.0), time_left(0.25, 0.0, 60.0, 90.0)
    (180.0, 150.0)
    >>> time_left(0.01, 0.0, 60.0, 61.0), time_left(0.25, 0.0, 60.0, 400.0)
    (None, None)
    """
    at = now if progressed is None else min(progressed, now)
    left = remaining(fraction, at - started)
    if left is None:
        return None
    left -= now - at
    return left if left > 0 else None


def eta_text(
    fraction: float,
    started: float | None,
    now: float | None = None,
    progressed: float | None = None,
) -> str:
    """``'1:00 elapsed, ~3:00 left'`` for a task ``fraction`` done that started at ``started``
    (a ``time.time()``) and last advanced at ``progressed``; ``''`` when it has not started.

    >>> eta_text(0.25, 1000.0, now=1060.0)
    '1:00 elapsed, ~3:00 left'
    >>> eta_text(0.25, 1000.0, now=1070.0, progressed=1060.0)
    '1:10 elapsed, ~2:50 left'
    >>> eta_text(0.0, 1000.0, now=1005.0), eta_text(0.5, None)
    ('0:05 elapsed', '')
    """
    if started is None:
        return ""
    now = time.time() if now is None else now
    left = time_left(fraction, started, progressed, now)
    text = f"{duration(now - started)} elapsed"
    return text if left is None else f"{text}, ~{duration(left)} left"


class Pace:
    """Progress of work done in this process (the Profile page's): ``update(done, total,
    msg)`` from the work, ``line(now)`` as often as the page likes — the elapsed clock ticks
    on every call, the estimate moves only with completed units.

    >>> p = Pace(started=0.0); p.update(1, 4, "block 1", now=10.0)
    >>> p.line(now=12.0)
    'block 1 · 0:12 elapsed, ~0:28 left'
    """

    def __init__(self, started: float | None = None, msg: str = "starting"):
        self.started = time.time() if started is None else started
        self.fraction, self.msg, self.progressed = 0.0, msg, None

    def update(self, done: int, total: int, msg: str, now: float | None = None) -> None:
        fraction = min(done / max(total, 1), 1.0)
        if fraction > self.fraction:
            self.fraction, self.progressed = fraction, time.time() if now is None else now
        self.msg = msg

    def line(self, now: float | None = None) -> str:
        eta = eta_text(self.fraction, self.started, now, self.progressed or self.started)
        return f"{self.msg} · {eta}"
