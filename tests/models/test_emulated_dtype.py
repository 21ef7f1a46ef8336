"""Issue 33: ``auto`` never picks a precision the CPU only emulates, and bfloat16 asked for on a
CPU without native bfloat16 warns once, with the slowdown measured there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch

from mixviz.models import device


def test_explicit_bf16_on_an_emulating_cpu_warns_once_with_the_measured_factor(monkeypatch, caplog):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(device, "bf16_factor", lambda: 4.2)
    monkeypatch.setattr(device, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="mixviz"):
        for _ in range(3):
            assert device.placement("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    notes = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(notes) == 1 and "4.2× slower than in float32" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixviz"):
        assert device.placement("cpu", "auto")[1] == torch.float32  # auto: never emulated
        device.placement("cpu", "float32")
    assert not caplog.records


def test_a_native_cpu_gets_no_warning(monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    assert device.emulated_dtype_note(torch.device("cpu"), torch.bfloat16) is None
    assert device.emulated_dtype_note(torch.device("cpu"), torch.float32) is None


def test_torch_capped_at_avx2_counts_as_emulated_and_says_so_once():
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA at AVX2: what a CPU without AVX512-BF16 runs."""
    code = (
        "from mixviz.models import device as d\n"
        "assert not d.cpu_bf16_native()\n"
        "d.placement('cpu', 'bfloat16'); d.placement('cpu', 'bfloat16')\n"
        "assert str(d.placement('auto', 'auto')[1]) == 'torch.float32'\n"
        "print(round(d.bf16_factor(), 2))\n"
    )
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("no native bfloat16") == 1 and "× slower" in r.stderr
    assert float(r.stdout.strip()) > 0
