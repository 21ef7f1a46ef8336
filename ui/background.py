"""Work the page waits on without freezing its progress line: a call in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class InThread:
    """``fn(*args, **kwargs)`` running in a daemon thread: ``wait(s)`` says whether it has
    finished (waiting at most ``s`` seconds), ``result()`` gives its value or raises its
    exception. The thread never calls Streamlit; the page redraws between waits."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        self._value: Any = None
        self._error: BaseException | None = None
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

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> InThread:
    return InThread(fn, *args, **kwargs)
