"""A refine job in the queue: ``mixviz refine`` run by the worker (:mod:`.worker`), its stage
and progress in the store, each round written to ``runs/<id>/rounds.json`` as it finishes and
the answer to ``runs/<id>/refine.json``. The CLI and the app's panel both build the job with
:func:`refine_spec` and check it with :func:`refine_plan` — the rules the job refines under.

Progress counts measurements: round 0 is one (plus its held-out score), every later round one
per group moved, one for the re-solved allocation (plus its held-out score); a ``context``
round profiles around the allocation instead of moving groups.

>>> expected_measurements(rounds=3, groups=7, heldout=True)
29
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

from mixviz.errors import MixvizError
from mixviz.paths import atomic_write_json, cache_dir, read_json
from mixviz.runs.runspec import REFINE_TASK, RefineArgs, RunSpec
from mixviz.runs.store import Store, runs_dir

SETUP = 0.1  # the share of progress loading the model and its references take


def expected_measurements(rounds: int, groups: int, heldout: bool) -> int:
    """Measurements (and re-profiles) a refinement makes at most."""
    per = 1 + int(heldout)
    return per + rounds * (groups + per)


class RefinePlan(NamedTuple):
    """What a refine job refines: the problem (built with ``rules``), its settings and where
    it measures."""

    problem: object
    settings: object
    where: object
    rules: dict


def refine_plan(prof, args: RefineArgs, device: str = "auto", dtype: str = "auto") -> RefinePlan:
    """The job's problem from ``prof`` under ``args``' rules (pins, shared groups, target,
    scale-bit accounting), every refusal raised here — a split group, a budget outside the
    feasible range, bad windows — so a caller can check before it queues anything."""
    from mixviz.allocation.problem import Problem, budget_bits
    from mixviz.allocation.refine import RefineSettings
    from mixviz.runs.evaluation.measure import MeasureSettings

    rules = {
        "ignore_scale_bits": args.ignore_scale_bits,
        "shared": list(args.shared),
        "pins": dict(args.pins),
        "target": args.target,
    }
    problem = Problem.from_profile(prof, **rules)
    settings = RefineSettings(args.avg_bits, args.rounds, args.grouping)
    where = MeasureSettings(args.calib, args.windows, args.seqlen, device, dtype, args.heldout)
    budget_bits(problem, settings.avg_bits)
    return RefinePlan(problem, settings, where, rules)


def refine_spec(prof, args: RefineArgs, device: str = "auto", dtype: str = "auto") -> RunSpec:
    """The refine job of ``prof`` (saved at ``args.profile``) as the queue runs and keys it."""
    return RunSpec(
        model=prof.model,
        recipe=None,
        tasks=(REFINE_TASK,),
        model_hash=prof.model_hash,
        device=device,
        dtype=dtype,
        refine=args,
    )


def profile_file(prof) -> Path:
    """``prof`` saved where a refine job reads it, named by its content (written once): the
    same profile is the same file, so the same job (``cache/refine/profiles/``)."""
    text = json.dumps(prof.to_dict(), sort_keys=True)
    path = (
        cache_dir()
        / "refine"
        / "profiles"
        / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.save(path)
    return path


def rounds_so_far(run_id: str) -> list[dict]:
    """The rounds a refine job has finished (``rounds.json``), oldest first; [] before any."""
    path = runs_dir() / run_id / "rounds.json"
    if not path.is_file():
        return []
    try:
        return list(read_json(path, "refine rounds")["rounds"])
    except (MixvizError, KeyError, TypeError):
        return []


def answer_path(run_id: str):
    """Where the finished job's refinement lies (``refine.json``, as ``refine --out``)."""
    return runs_dir() / run_id / "refine.json"


def refine_steps(store: Store, run_id: str, spec: RunSpec) -> str:
    """Load the profile, build its problem, refine with the progress in the store; ``done``,
    or ``failed`` where the job was no longer running at the end (cancelled meanwhile)."""
    from dataclasses import asdict

    from mixviz.allocation.refine import groups_of
    from mixviz.runs.evaluation.measure import refine_profile, refined_doc
    from mixviz.sensitivity.profile import Profile

    args = spec.refine
    prof = Profile.load(args.profile)
    problem, settings, where, rules = refine_plan(prof, args, spec.device, spec.dtype)
    groups = 1 if args.grouping == "context" else len(groups_of(problem, args.grouping))
    total = expected_measurements(args.rounds, groups, bool(args.heldout))
    say = _reporter(store, run_id, total)
    rounds: list[dict] = []

    def on_round(r) -> None:
        rounds.append(asdict(r))
        atomic_write_json(runs_dir() / run_id / "rounds.json", {"rounds": rounds})
        store.update(run_id, stage=f"round {r.index} done")

    result = refine_profile(prof, problem, settings, where, say, rules, on_round)
    if not rounds:  # a cached answer: its rounds at once
        for r in result.rounds:
            on_round(r)
    doc = refined_doc(prof, result)
    atomic_write_json(answer_path(run_id), doc)
    done = store.transition(
        run_id,
        ("running",),
        status="done",
        stage="done",
        progress=1.0,
        finished=time.time(),
        avg_bits=result.rounds[result.best].avg_bits,
    )
    return "done" if done else "failed"


def _reporter(store: Store, run_id: str, total: int):
    """``say(message)``: the message as the job's stage; each measurement started moves the
    progress by one of ``total`` (after the :data:`SETUP` share)."""
    started = [0]

    def say(message: str) -> None:
        progress = None
        if message.startswith("reference"):
            progress = SETUP / 2
        elif message.startswith("round"):
            started[0] += 1
            progress = SETUP + (1 - SETUP) * min(started[0] - 1, total) / total
        fields = {"stage": message}
        if progress is not None:
            fields["progress"] = progress
        store.update(run_id, **fields)

    return say
