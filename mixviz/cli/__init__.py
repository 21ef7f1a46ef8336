"""The command line: ``python -m mixviz info|...``. Thin: parse, call the library, print.

User errors (:class:`MixvizError`) print one line on stderr and exit 2, never a traceback.

One module per command group, each with ``add_parser(sub)`` and its ``cmd_*`` functions:
:mod:`.info` (info), :mod:`.profile` (profile, ``--from-autoscheme``), :mod:`.allocate`
(allocate), :mod:`.refine` (refine), :mod:`.runs` (run, runs, cancel), :mod:`.compare`
(compare), :mod:`.export`
(export, import),
:mod:`.quantize` (quantize),
:mod:`.reproduce` (reproduce); :mod:`.common` holds what they share (output, progress, error
handling, the model and profiling flags, the registries the choices come from).
"""

from __future__ import annotations

import argparse

from mixviz.cli import allocate, compare, export, info, profile, quantize, refine, reproduce, runs
from mixviz.cli.allocate import load_or_profile
from mixviz.cli.common import quiet_libraries, run_command
from mixviz.cli.reproduce import STUDY_TASKS
from mixviz.cli.runs import read_recipe_layers

# the order `mixviz -h` lists
GROUPS = (info, profile, allocate, refine, runs, compare, quantize, export, reproduce)

__all__ = [
    "STUDY_TASKS",
    "build_parser",
    "load_or_profile",
    "main",
    "read_recipe_layers",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``mixviz`` parser; choices (metrics, strategies, export targets) are read from their
    registries now, so anything registered before this call is offered."""
    p = argparse.ArgumentParser(prog="mixviz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    return run_command(args)
