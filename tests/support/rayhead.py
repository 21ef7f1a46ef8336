"""A local Ray head for tests: ``ray start --head --block`` in its own session, with its own
temporary folder and free ports, so it neither meets another head on this machine nor needs
``ray stop`` (which stops every Ray process of the user): teardown signals the head's process
group only. Every wait has a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple


class Head(NamedTuple):
    gcs: str  # what ray.init takes: host:port
    dashboard: str  # what the Jobs API takes: http://host:port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what: str, check, timeout: float, poll: float = 0.5):
    """``check()`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[Head]:
    """A head with ``num_cpus`` CPUs and no GPU, up (GCS and Jobs API answering) until exit."""
    from ray.job_submission import JobSubmissionClient

    ray = Path(sys.executable).parent / "ray"
    temp = tempfile.mkdtemp(prefix="mxray", dir="/tmp")  # short: Ray's socket paths live here
    gcs, dashboard = free_port(), free_port()
    ports = {
        "--port": gcs,
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    log = open(Path(temp) / "head.log", "wb")  # noqa: SIM115 — closed below
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            *(f"{k}={v}" for k, v in ports.items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    address = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}")

    def ready():
        if head.poll() is not None:
            raise AssertionError(
                f"ray start exited {head.returncode}: "
                + (Path(temp) / "head.log").read_text(errors="replace")[-2000:]
            )
        try:
            socket.create_connection(("127.0.0.1", gcs), timeout=1).close()
            JobSubmissionClient(address.dashboard).list_jobs()
        except Exception:
            return False
        return True

    try:
        until("the Ray head", ready, timeout=180, poll=1)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
