"""The Allocate page's *Refine* action: ``mixviz refine`` in a background process (it measures
the model for a minute or more), its answer read back from a file keyed by the page's problem.

The process gets the profile as a file and the page's problem as flags (locks as ``--pin``,
shared groups, target, accounting), so what it refines is what the page shows; it selects on
calibration windows and scores every round on :data:`HELDOUT` held-out windows it never
selects on (both shown). Its log lies beside the answer, and the page polls for it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.paths import cache_dir
from mixviz.runs.evaluation.measure import load_refinement

HELDOUT = 16  # held-out windows each round is scored on (part of the answer's key)


def job_paths(page, avg: float, rounds: int, how: str) -> tuple[Path, Path, Path]:
    """(answer, log, profile) files of the refinement of ``page``'s problem at ``avg`` bits
    (the process id goes beside the log, suffix ``.pid``)."""
    doc = json.dumps([list(map(str, page.problem_key)), round(avg, 4), rounds, how, HELDOUT])
    stem = hashlib.sha256(doc.encode()).hexdigest()[:16]
    folder = cache_dir() / "refine" / "app"
    return folder / f"{stem}.json", folder / f"{stem}.log", folder / f"{stem}.profile.json"


def finished(page, avg: float, rounds: int, how: str):
    """The refinement written for these settings, or None."""
    return load_refinement(job_paths(page, avg, rounds, how)[0])


def running(page, avg: float, rounds: int, how: str) -> bool:
    """Whether a process for these settings is still at work (its log says so)."""
    out, log, _ = job_paths(page, avg, rounds, how)
    if out.is_file() or not log.is_file():
        return False
    try:
        pid = int(log.with_suffix(".pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def log_tail(page, avg: float, rounds: int, how: str, lines: int = 6) -> str:
    log = job_paths(page, avg, rounds, how)[1]
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def start(page, avg: float, rounds: int, how: str) -> None:
    """Start ``mixviz refine`` on the page's problem in its own process session."""
    if page.profile.calib.source != "pydoc":
        raise MixvizError("refine from the app measures on the bundled calibration text only")
    out, log, prof = job_paths(page, avg, rounds, how)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.profile.save(prof)
    c = page.choice
    argv = [sys.executable, "-m", "mixviz", "refine", str(prof), "--avg-bits", f"{avg:.4f}"]
    argv += ["--rounds", str(rounds), "--grouping", how, "--out", str(out)]
    argv += ["--heldout", str(HELDOUT)]
    argv += ["--device", c.device, "--dtype", c.dtype]
    if c.ignore_scale_bits:
        argv.append("--ignore-scale-bits")
    if c.target:
        argv += ["--target", c.target]
    for s in c.shared:
        argv += ["--shared", s]
    for name, option in sorted(page.locks.items()):
        argv += ["--pin", f"{name}={option}"]
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    log.with_suffix(".pid").write_text(str(proc.pid))


@st.cache_data(ttl=15, show_spinner=False)
def trust_line(_profile, key: str, model: str) -> str:
    """How far the profile's prediction held over this model's finished runs (one line)."""
    from mixviz.report.tables import results_frame
    from mixviz.report.trust import kld_trust, run_points
    from mixviz.runs.store import Store

    try:
        frame = results_frame(Store(), model)
    except MixvizError as e:
        return f"No runs to check the prediction against ({e})."
    quant = frame[frame["strategy"] != "bf16"] if not frame.empty else frame
    pts = run_points(_profile, quant) if not quant.empty else []
    t = kld_trust(pts)
    if t is None:
        have = sum(1 for p in pts if p.get("kld") is not None)
        return (
            "How far to trust the prediction: needs 3 finished runs with KLD whose layers this "
            f"profile scores (have {have}; Runs page)."
        )
    return f"How far to trust the prediction: {t.sentence('runs')} (held-out KLD, Runs page)."
