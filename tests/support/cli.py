"""Run ``python -m mixviz`` the way a user does, for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict | None = None, timeout: int = 900):
    """``python -m mixviz ARGS`` in the repository, with the test environment (+ ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "mixviz", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
