"""``mixviz refine PROFILE.json|MODEL --avg-bits B --rounds K``: solve, measure KLD on
calibration text, correct the additive model per group, re-solve, until it stops helping; every
round is also scored on held-out windows it never selects on.

The refinement is a job in the one queue, the same kind the app's *Refine* panel queues
(:mod:`mixviz.runs.jobs.refine`): ``mixviz runs`` lists it, an identical one is reused, the
command follows it with the ticking line and Ctrl-C cancels it."""

from __future__ import annotations

import argparse

from mixviz.cli.allocate import (
    add_pins,
    add_profile_when_model,
    add_target,
    load_or_profile,
    shared_groups,
)
from mixviz.cli.common import (
    add_device_flags,
    add_json,
    add_trust_remote_code,
    device_kwargs,
    emit,
    follow,
    progress,
)
from mixviz.errors import MixvizError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "refine",
        help="correct the allocation from measured KLD (calibration text), round by round",
    )
    p.add_argument("target", metavar="PROFILE.json|MODEL")
    p.add_argument("--avg-bits", required=True, type=float, help="the average-bits budget")
    p.add_argument("--rounds", type=int, default=3, help="corrections at most (default 3)")
    p.add_argument(
        "--grouping",
        choices=("kind", "block", "context"),
        default="kind",
        help="the correction: one factor per module kind or per block from measured moves "
        "(default: kind), or context: profile again around each round's allocation",
    )
    p.add_argument(
        "--windows", type=int, default=16, help="calibration windows measured (default 16)"
    )
    p.add_argument("--window-len", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument(
        "--heldout",
        type=int,
        default=16,
        help="held-out windows (the evaluation text's last) every round is scored on and never "
        "selected on (default 16; 0: none)",
    )
    p.add_argument("--ignore-scale-bits", action="store_true")
    p.add_argument(
        "--shared",
        action="append",
        metavar="qkv,gate_up|REGEX",
        help="layers that must share an option (repeatable)",
    )
    add_target(p)
    add_pins(p)
    add_profile_when_model(
        p, calib="calibration text: profiled (a MODEL) and measured on (never the evaluation text)"
    )
    add_device_flags(p)
    add_trust_remote_code(p)
    add_json(p)
    p.add_argument("--out", help="also write the refinement JSON (with the best layers) here")
    p.set_defaults(func=cmd_refine)


def cmd_refine(args: argparse.Namespace) -> None:
    from mixviz.paths import read_json
    from mixviz.runs.jobs.backends import get_backend, submit
    from mixviz.runs.jobs.refine import answer_path, refine_plan, refine_spec

    prof = load_or_profile(args.target, args)
    if prof.calib.source != "pydoc" and args.calib == "pydoc":
        raise MixvizError(
            f"the profile was calibrated on {prof.calib.source!r}: pass that file as --calib "
            "so refine measures on calibration text too"
        )
    job = _job_args(args, prof)
    where = device_kwargs(args)
    refine_plan(prof, job, **where)  # every refusal here, before anything is queued
    spec = refine_spec(prof, job, **where)
    backend = get_backend()
    sub = submit(backend, spec)
    progress(sub.describe(spec.label))
    row = follow(backend, sub.id, sub.reused)
    if row.status != "done":
        raise MixvizError(f"refine job {row.id} {row.status}: {row.error or ''}".strip())
    emit(read_json(answer_path(row.id), "refinement"), args.json, _text, args.out)


def _job_args(args: argparse.Namespace, prof):
    """The refine job's arguments from the command's flags (the profile saved by content)."""
    from pathlib import Path

    from mixviz.allocation.edits import parse_pins
    from mixviz.models.targets import resolve_target
    from mixviz.runs.jobs.refine import profile_file
    from mixviz.runs.runspec import RefineArgs

    calib = args.calib
    if calib != "pydoc":  # the worker reads it from wherever it runs
        calib = str(Path(calib).expanduser().resolve())
    return RefineArgs(
        str(profile_file(prof)),
        args.avg_bits,
        args.rounds,
        args.grouping,
        calib=calib,
        windows=args.windows,
        seqlen=args.window_len,
        heldout=args.heldout,
        ignore_scale_bits=args.ignore_scale_bits,
        shared=tuple(shared_groups(args.shared)),
        pins=parse_pins(prof.layers, args.pin, args.pin_kind, args.pin_block),
        target=resolve_target(args.target_runtime),
    )


def _text(doc: dict) -> str:
    from mixviz.allocation.refine import Round

    lines = [
        f"refine {doc['model']} at {doc['budget_avg_bits']:g} bits, grouped by "
        f"{doc['grouping']}: {doc['measurements']} measurements, {doc['seconds']:.1f} s",
        f"{'round':>5}  {'bits':>6}  {'predicted':>10}  {'corrected':>10}  "
        f"{'selection KLD':>18}  {'vs best before':>18}  {'held-out KLD':>18}",
    ]
    for d in doc["rounds"]:
        r = Round(**d)
        gain = "" if r.gain is None else f"{r.gain:+.5f} ± {r.half('gain'):.5f}"
        held = "" if r.heldout is None else f"{r.heldout:.5f} ± {r.half('heldout'):.5f}"
        mark = " ←" if r.index == doc["best"] else ""
        lines.append(
            f"{r.index:>5}  {r.avg_bits:6.3f}  {r.predicted:10.4g}  "
            f"{r.corrected:10.5f}  {r.measured:.5f} ± {r.half():.5f}  "
            f"{gain:>18}  {held:>18}{mark}"
        )
    lines.append(
        f"stopped: {doc['stopped']}; ← = best on the selection (calibration) windows, its "
        "held-out KLD is the unbiased figure; ± is the 95 % t interval over windows (df = "
        "windows − 1; paired for the gain)"
    )
    return "\n".join(lines)
