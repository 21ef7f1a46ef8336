"""``mixviz refine PROFILE.json|MODEL --avg-bits B --rounds K``: solve, measure KLD on
calibration text, correct the additive model per group, re-solve, until it stops helping; every
round is also scored on held-out windows it never selects on."""

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
    emit,
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
    from mixviz.allocation.edits import parse_pins
    from mixviz.allocation.problem import Problem
    from mixviz.allocation.refine import RefineSettings
    from mixviz.runs.evaluation.measure import MeasureSettings, refine_profile, refined_doc

    prof = load_or_profile(args.target, args)
    if prof.calib.source != "pydoc" and args.calib == "pydoc":
        raise MixvizError(
            f"the profile was calibrated on {prof.calib.source!r}: pass that file as --calib "
            "so refine measures on calibration text too"
        )
    rules = {
        "ignore_scale_bits": args.ignore_scale_bits,
        "shared": shared_groups(args.shared),
        "pins": parse_pins(prof.layers, args.pin, args.pin_kind, args.pin_block),
        "target": args.target_runtime,
    }
    problem = Problem.from_profile(prof, **rules)
    settings = RefineSettings(args.avg_bits, args.rounds, args.grouping)
    where = MeasureSettings(
        args.calib, args.windows, args.window_len, args.device, args.dtype, args.heldout
    )
    result = refine_profile(prof, problem, settings, where, progress, rules)
    doc = refined_doc(prof, result)
    emit(doc, args.json, _text, args.out)


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
