"""Work the page waits on without freezing its progress line: a call in a thread, which the page
can ask to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class InThread:
    """``fn(*args, **kwargs)`` running in a daemon thread: ``wait(s)`` says whether it has
    finished (waiting at most ``s`` seconds), ``result()`` gives its value or raises its
    exception. The thread never calls Streamlit; the page redraws between waits.

    Cooperative cancel: with ``cancel_kw``, ``fn`` is also given that keyword, a callable that
    turns True once :meth:`cancel` was asked; ``fn`` checks it between steps and stops by
    raising (the profiler's ``cancel=`` raises its ``Cancelled`` at its next step), which
    :attr:`error` then holds."""

    def __init__(
        self, fn: Callable[..., Any], *args: Any, cancel_kw: str | None = None, **kwargs: Any
    ):
        self._value: Any = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        if cancel_kw is not None:
            kwargs[cancel_kw] = self._stop.is_set
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as e:  # handed to the page's thread by result()
            self._error = e

    def wait(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def cancel(self) -> bool:
        """Ask ``fn`` to stop (never waits): whether it was still running when asked."""
        self._stop.set()
        return self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was asked."""
        return self._stop.is_set()

    @property
    def error(self) -> BaseException | None:
        """What ``fn`` raised, once it has finished (None while it runs, or when it returned)."""
        return None if self._thread.is_alive() else self._error

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def in_thread(
    fn: Callable[..., Any], *args: Any, cancel_kw: str | None = None, **kwargs: Any
) -> InThread:
    return InThread(fn, *args, cancel_kw=cancel_kw, **kwargs)
