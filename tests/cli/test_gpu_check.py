"""``bench/gpu_check.py --dry-run``: the device check's own steps, with the tiny model on the CPU,
so the script a GPU machine runs is known to work before one is lent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_on_the_cpu():
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "plan:" in out and "ρ" in out and "| current | fisher | tiny |" in out
    assert '"profiles": true, "run": true, "scale": true' in out
