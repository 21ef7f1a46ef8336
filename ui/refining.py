"""The Allocate page's *Refine* panel: ``mixviz refine`` as a job in the one queue (beside the
runs, with its stage, progress and cancel), found again by its spec after a reload.

The job gets the profile as a file and the page's problem (locks as pins, shared groups,
target, accounting), so what it refines is what the page shows; it selects on calibration
windows and scores every round on :data:`HELDOUT` held-out windows it never selects on (both
shown). Its rounds are shown as they finish (:mod:`mixviz.runs.jobs.refine`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import streamlit as st

from mixviz.errors import MixvizError
from mixviz.models.targets import resolve_target
from mixviz.paths import cache_dir
from mixviz.runs.evaluation.measure import load_refinement
from mixviz.runs.jobs.refine import answer_path, refine_spec, rounds_so_far
from mixviz.runs.runspec import RefineArgs, RunSpec
from mixviz.runs.store import FINAL, RunRow, Store

HELDOUT = 16  # held-out windows each round is scored on (part of the answer's key)
CORRECTIONS = {"kind": "one factor per module kind", "context": "profile around each round"}


def profile_path(page) -> Path:
    """The file the page's profile is saved to for a refine job (one per problem)."""
    stem = hashlib.sha256(json.dumps(list(map(str, page.problem_key))).encode()).hexdigest()
    return cache_dir() / "refine" / "app" / f"{stem[:16]}.profile.json"


def job_spec(page, avg: float, rounds: int, how: str) -> RunSpec:
    """The refine job of ``page``'s problem at ``avg`` bits (what the queue runs and keys)."""
    c = page.choice
    args = RefineArgs(
        str(profile_path(page)),
        round(avg, 4),
        rounds,
        how,
        heldout=HELDOUT,
        ignore_scale_bits=c.ignore_scale_bits,
        shared=tuple(c.shared),
        pins=dict(page.locks),
        target=resolve_target(c.target or None),
    )
    return refine_spec(page.profile, args, c.device, c.dtype)


def job(page, avg: float, rounds: int, how: str) -> RunRow | None:
    """The latest refine job for these settings (any state), or None."""
    key = job_spec(page, avg, rounds, how).key
    rows = [r for r in Store().list() if r.key == key]
    return rows[-1] if rows else None


def latest(page, avg: float) -> RunRow | None:
    """The latest refine job of ``page``'s profile at ``avg`` bits, whatever its rounds and
    correction: after a reload the panel's inputs start from its settings, so the job is found
    again (the inputs live in the session, which a reload forgets)."""
    path, bits = str(profile_path(page)), round(avg, 4)
    rows = [
        r
        for r in Store().list()
        if (r.spec.get("refine") or {}).get("profile") == path
        and (r.spec.get("refine") or {}).get("avg_bits") == bits
    ]
    return rows[-1] if rows else None


def resume_inputs(page, avg: float) -> None:
    """On a fresh session, set the panel's inputs to the latest job's settings (see
    :func:`latest`); inputs the user has set already are left alone."""
    if "allocate_refine_rounds" in st.session_state:
        return
    row = latest(page, avg)
    if row is not None:
        args = row.spec["refine"]
        st.session_state["allocate_refine_rounds"] = int(args.get("rounds", 3))
        st.session_state["allocate_refine_how"] = args.get("grouping", "kind")


def finished(page, avg: float, rounds: int, how: str):
    """The refinement a finished job wrote for these settings, or None."""
    row = job(page, avg, rounds, how)
    return load_refinement(answer_path(row.id)) if row and row.status == "done" else None


def start(page, avg: float, rounds: int, how: str) -> str:
    """Queue the refine job (a finished or running identical one is reused); its line."""
    from mixviz.runs.jobs.backends import get_backend, submit

    if page.profile.calib.source != "pydoc":
        raise MixvizError("refine from the app measures on the bundled calibration text only")
    path = profile_path(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.profile.save(path)
    spec = job_spec(page, avg, rounds, how)
    return submit(get_backend(), spec).describe(spec.label)


def rounds_frame(rounds: list[dict]):
    """One row per finished round: bits, the calibration and held-out KLD with their ± (95 %
    t), the change against the best before it."""
    import pandas as pd

    from mixviz.allocation.refine import Round

    rows = []
    for d in rounds:
        r = Round(**d)
        held = "—" if r.heldout is None else f"{r.heldout:.4f} ± {r.half('heldout'):.4f}"
        gain = "— (round 0)" if r.gain is None else f"{r.gain:+.4f} ± {r.half('gain'):.4f}"
        rows.append(
            {
                "round": r.index,
                "avg bits": f"{r.avg_bits:.3f}",
                "calibration KLD": f"{r.measured:.4f} ± {r.half():.4f}",
                "held-out KLD": held,
                "vs best before": gain,
            }
        )
    return pd.DataFrame(rows)


def follow(row: RunRow) -> None:
    """A running (or queued) job: its stage, progress, clock, rounds so far; cancel."""
    from mixviz.runs.jobs.backends import get_backend

    text = "queued behind other jobs"
    if row.started:
        text = row.eta()
    st.progress(min(max(row.progress, 0.0), 1.0), text=f"{row.stage or row.status} · {text}")
    done = rounds_so_far(row.id)
    if done:
        st.caption(f"{len(done)} round(s) finished so far:")
        st.dataframe(rounds_frame(done), hide_index=True, key="allocate_refine_rounds_so_far")
    if st.button("Cancel refine", key="allocate_refine_cancel"):
        try:
            get_backend(row.backend).cancel(row.id)
        except MixvizError as e:
            st.error(str(e))


def ended(row: RunRow) -> None:
    """A job that failed, was cancelled or lost: why, and that Refine starts it again."""
    why = f": {row.error}" if row.error else ""
    st.warning(f"The last refine at these settings was {row.status}{why}. Refine starts anew.")


@st.fragment(run_every=2)
def refine_panel(page, avg: float) -> None:
    """*Refine from measured KLD*: solve, measure on calibration text, correct the additive
    model per module kind, re-solve — a job in the queue, followed here round by round."""
    st.subheader("Refine from measured KLD")
    avg = st.session_state.get("budget", avg)  # the slider's, as it moved since the page ran
    resume_inputs(page, avg)
    c1, c2 = st.columns(2)
    resumed = "allocate_refine_rounds" in st.session_state  # no default beside a set state
    rounds = c1.number_input(
        "Rounds at most", 1, 10, **({} if resumed else {"value": 3}), key="allocate_refine_rounds"
    )
    how = c2.selectbox(
        "Correction",
        ["kind", "context"],
        format_func=CORRECTIONS.get,
        key="allocate_refine_how",
        help="kind: measure each module kind moved, rescale its scores; context: profile "
        "again around each round's allocation (fisher or kl profiles)",
    )
    row = job(page, avg, rounds, how)
    done = finished(page, avg, rounds, how)
    if done is not None:
        return finished_view(done)
    if row is not None and row.status not in FINAL:
        return follow(row)
    if row is not None:
        ended(row)
    st.caption(
        "Measures the model quantized to this allocation on calibration text, corrects the "
        "additive model (each module kind's scores by measured ÷ predicted, or scored afresh "
        "around the allocation), re-solves; stops when a round no longer lowers the measured "
        "KLD beyond its interval. A job in the queue (Runs page), after any queued runs; a "
        "minute or more per round on a CPU."
    )
    if st.button("Refine", key="allocate_refine", help="mixviz refine, queued like a run"):
        try:
            st.success(start(page, avg, rounds, how) + ": its rounds appear here as they finish")
        except MixvizError as e:
            st.error(str(e))


def finished_view(done) -> None:
    """The finished refinement: each round's KLD, the best one and what it rests on."""
    from mixviz.report import trust

    best = done.rounds[done.best]
    st.plotly_chart(trust.refinement_chart(done), key="allocate_refine_chart")
    held = "not scored on held-out windows" if best.heldout is None else (
        f"on held-out windows it was never selected on: {best.heldout:.4f} ± "
        f"{best.half('heldout'):.4f} (round 0: {done.rounds[0].heldout:.4f})")  # fmt: skip
    st.caption(
        f"Best: round {best.index}, chosen on calibration windows (KLD {best.measured:.4f} ± "
        f"{best.half():.4f}; round 0: {done.rounds[0].measured:.4f}); {held}. ± = 95 % t "
        f"interval over windows. {done.measurements} measurements in {done.seconds:.0f} s."
    )


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
