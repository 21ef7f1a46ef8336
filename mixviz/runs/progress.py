"""Elapsed time and an estimate of the time left, from a progress fraction and a start time
(the app's Runs and Profile pages and the CLI's ``runs --wait`` say both)."""

from __future__ import annotations

import time


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
    if not 0.005 <= fraction < 1 or elapsed <= 0:
        return None
    return elapsed * (1 - fraction) / fraction


def eta_text(fraction: float, started: float | None, now: float | None = None) -> str:
    """``'1:00 elapsed, ~3:00 left'`` for a task ``fraction`` done that started at ``started``
    (a ``time.time()``); ``''`` when it has not started.

    >>> eta_text(0.25, 1000.0, now=1060.0)
    '1:00 elapsed, ~3:00 left'
    >>> eta_text(0.0, 1000.0, now=1005.0), eta_text(0.5, None)
    ('0:05 elapsed', '')
    """
    if started is None:
        return ""
    elapsed = (time.time() if now is None else now) - started
    left = remaining(fraction, elapsed)
    text = f"{duration(elapsed)} elapsed"
    return text if left is None else f"{text}, ~{duration(left)} left"
