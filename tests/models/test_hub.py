"""A hub id with no hub: the answer comes at once (it took ~25 s of retries), and says why."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mixviz
from mixviz.errors import MixvizError

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connecting is refused


def test_offline_unknown_hub_id_answers_without_touching_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise AssertionError("network call while HF_HUB_OFFLINE is set")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    t0 = time.monotonic()
    with pytest.raises(MixvizError) as err:
        mixviz.resolve_model("SomeOrg/no-such-model-xyz")
    assert time.monotonic() - t0 < 2.0 and not calls
    msg = str(err.value)
    assert "'SomeOrg/no-such-model-xyz'" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg


def _resolve_in_a_fresh_process(name: str, env: dict) -> dict:
    """resolve_model(name) in a new interpreter: its seconds and its error or path."""
    code = (
        "import json, sys, time, mixviz\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        f"    out = {{'path': mixviz.resolve_model({name!r}).path}}\n"
        "except mixviz.MixvizError as e:\n"
        "    out = {'error': str(e)}\n"
        "out['seconds'] = time.monotonic() - t0\n"
        "print(json.dumps(out))\n"
    )
    base = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**base, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unreachable_hub_answers_in_under_two_seconds():
    """No HF_HUB_OFFLINE, and the hub's port refuses: the old code retried for ~26 s here."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    out = _resolve_in_a_fresh_process("SomeOrg/no-such-model-xyz", {"HF_ENDPOINT": endpoint})
    assert out["seconds"] < 2.0, out
    assert "cannot be reached: connection refused" in out["error"] and endpoint in out["error"]


def test_offline_hub_id_in_the_local_cache_still_resolves(tmp_path, tiny_ref):
    """The offline short cut only refuses what the hub cache does not hold."""
    snapshot = tmp_path / "hub" / "models--SomeOrg--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes((Path(tiny_ref.path) / "config.json").read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = _resolve_in_a_fresh_process("SomeOrg/cached", env)
    assert out.get("path") == "SomeOrg/cached", out
