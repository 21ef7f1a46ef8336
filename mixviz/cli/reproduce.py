"""``mixviz reproduce MODEL``: the reference study's tables for a model."""

from __future__ import annotations

import argparse
import sys

from mixviz.cli.common import add_device_flags, add_profile_flags, device_kwargs, progress

STUDY_TASKS = "lambada_openai,hellaswag,piqa,winogrande,mmlu,mixviz_kld"


def add_parser(sub) -> None:
    rep = sub.add_parser("reproduce", help="the reference study's tables for a model")
    rep.add_argument("model")
    rep.add_argument("--tasks", help=f"default: {STUDY_TASKS} (demo/tiny: the bundled ones)")
    rep.add_argument("--limit", type=int, help="items per task (default: all)")
    add_profile_flags(rep, "metric", "nsamples", "seqlen")
    add_device_flags(rep)
    rep.add_argument(
        "--no-autoscheme", action="store_true", help="skip AutoScheme's own allocations"
    )
    rep.add_argument(
        "--tables-only",
        action="store_true",
        help="write the tables from the runs the store holds now; queue and wait for nothing",
    )
    rep.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> None:
    from mixviz.report.reproduce import reports_dir, run_protocol
    from mixviz.runs.evaluation.tasks import check_tasks
    from mixviz.sensitivity.spec import ProfileSpec

    # the profiles' settings, checked before anything runs (each profile adds its options)
    spec = ProfileSpec(
        metric=args.metric, nsamples=args.nsamples, seqlen=args.seqlen, **device_kwargs(args)
    )

    bundled = "mixviz_lastword,mixviz_nextsent,mixviz_kld"
    default = bundled if args.model in ("demo", "tiny") else STUDY_TASKS
    tasks = tuple(check_tasks((args.tasks or default).split(",")))
    run_protocol(
        args.model,  # run_protocol and reports_dir take the name (they resolve it themselves)
        tasks=tasks,
        limit=args.limit,
        metric=spec.metric,
        nsamples=spec.nsamples,
        seqlen=spec.seqlen,
        with_autoscheme=not args.no_autoscheme,
        log=progress,
        device=spec.device,
        dtype=spec.dtype,
        tables_only=args.tables_only,
    )
    folder = reports_dir(args.model)
    progress(f"wrote {folder}/tables.md, table1-4.csv and chart.html")
    sys.stdout.write((folder / "tables.md").read_text())
