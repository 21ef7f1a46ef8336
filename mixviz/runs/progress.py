"""Elapsed time and an estimate of the time left, from the work done and when it was done
(the app's Runs and Profile pages and the CLI's ``runs --wait`` say both).

The estimate rests on completed work only: the pace up to the moment the last unit finished
(``progressed``), counted down since. It is a promise that only shrinks: each finished unit
makes a "finish by" time (:func:`promise`) that replaces the kept one only when it is earlier,
or when the kept one has run out — so a slow unit (a stage boundary) never raises it, and a
poll between two units counts down. It is absent until :data:`MIN_FRACTION` of the work is
done, and once the promise has run out, until the next unit gives a new one.
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


def promise(fraction: float, started: float, at: float, kept: float | None = None) -> float | None:
    """The "finish by" time once ``fraction`` is done at ``at``: the pace so far makes a new
    one, which replaces ``kept`` only when it is earlier or ``kept`` has run out by ``at``.
    None before :data:`MIN_FRACTION` is done, and once all of it is.

    >>> promise(0.25, 0.0, 60.0)  # 60 s for a quarter: 180 s more
    240.0
    >>> promise(0.5, 0.0, 200.0, kept=240.0)  # a slow unit: the earlier promise stays
    240.0
    >>> promise(0.5, 0.0, 100.0, kept=240.0), promise(0.5, 0.0, 250.0, kept=240.0)
    (200.0, 500.0)
    """
    left = remaining(fraction, at - started)
    if left is None:
        return None
    new = at + left
    return kept if kept is not None and at < kept < new else new


def time_left(
    fraction: float,
    started: float,
    progressed: float | None,
    now: float,
    finish_by: float | None = None,
) -> float | None:
    """Seconds left until ``finish_by`` (kept by the store or a :class:`Pace`; without one,
    the promise the work done by ``progressed`` makes); None before :data:`MIN_FRACTION` is
    done, or once the promise has run out (it was too short: no number beats a wrong one).

    >>> time_left(0.25, 0.0, 60.0, 60.0), time_left(0.25, 0.0, 60.0, 90.0)
    (180.0, 150.0)
    >>> time_left(0.01, 0.0, 60.0, 61.0), time_left(0.25, 0.0, 60.0, 400.0)
    (None, None)
    >>> time_left(0.5, 0.0, 200.0, 210.0, finish_by=240.0)  # not the 200 s its pace says
    30.0
    """
    if fraction >= 1:
        return None
    at = now if progressed is None else min(progressed, now)
    by = promise(fraction, started, at) if finish_by is None else finish_by
    if by is None:
        return None
    return by - now if by > now else None


def eta_text(
    fraction: float,
    started: float | None,
    now: float | None = None,
    progressed: float | None = None,
    finish_by: float | None = None,
) -> str:
    """``'1:00 elapsed, ~3:00 left'`` for a task ``fraction`` done that started at ``started``
    (a ``time.time()``), last advanced at ``progressed`` and promised to end by ``finish_by``
    (:func:`time_left`); ``''`` when it has not started.

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
    left = time_left(fraction, started, progressed, now, finish_by)
    text = f"{duration(now - started)} elapsed"
    return text if left is None else f"{text}, ~{duration(left)} left"


class Pace:
    """Progress of work done in this process (the Profile page's): ``update(done, total,
    msg)`` from the work, ``line(now)`` as often as the page likes — the elapsed clock ticks
    on every call, the estimate counts down to a promise (:func:`promise`) kept here that
    completed units may only bring forward.

    >>> p = Pace(started=0.0); p.update(1, 4, "block 1", now=10.0)
    >>> p.line(now=12.0)
    'block 1 · 0:12 elapsed, ~0:28 left'
    """

    def __init__(self, started: float | None = None, msg: str = "starting"):
        self.started = time.time() if started is None else started
        self.fraction, self.msg, self.progressed = 0.0, msg, None
        self.finish_by: float | None = None

    def update(self, done: int, total: int, msg: str, now: float | None = None) -> None:
        fraction = min(done / max(total, 1), 1.0)
        if fraction > self.fraction:
            at = time.time() if now is None else now
            self.finish_by = promise(fraction, self.started, at, self.finish_by)
            self.fraction, self.progressed = fraction, at
        self.msg = msg

    def line(self, now: float | None = None) -> str:
        at = self.progressed or self.started
        eta = eta_text(self.fraction, self.started, now, at, self.finish_by)
        return f"{self.msg} · {eta}"
