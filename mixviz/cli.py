"""The command line: ``python -m mixviz info|...``. Thin: parse, call the library, print.

User errors (:class:`MixvizError`) print one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from mixviz.errors import MixvizError


def _progress(msg: str) -> None:
    sys.stderr.write(f"mixviz: {msg}\n")
    sys.stderr.flush()


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _emit(doc: dict, as_json: bool, text: Callable[[dict], str], out: str | None = None) -> None:
    rendered = json.dumps(doc, indent=2) if as_json else text(doc)
    if out:
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
        _progress(f"wrote {out}")
    sys.stdout.write(rendered + "\n")


# ------------------------------------------------------------------ info


def cmd_info(args: argparse.Namespace) -> None:
    from mixviz.inventory import inventory, inventory_report
    from mixviz.models import meta_model, resolve_model

    ref = resolve_model(args.model, trust_remote_code=args.trust_remote_code, progress=_progress)
    doc = inventory_report(ref.name, inventory(meta_model(ref)))
    if ref.note:
        doc["note"] = ref.note
    _emit(doc, args.json, _info_text)


def _info_text(doc: dict) -> str:
    lines = [f"model {doc['model']}" + (f" — {doc['note']}" if doc.get("note") else "")]
    layers = doc["layers"]
    lines.append(
        f"{len(layers)} linear layers ({sum(x['block'] is not None for x in layers)} in blocks)"
    )
    lines.append(f"{'name':48} {'block':>5} {'kind':8} {'in':>6} {'out':>6} {'numel':>10} group")
    for x in layers:
        block = "-" if x["block"] is None else x["block"]
        lines.append(
            f"{x['name']:48} {block:>5} {x['kind']:8} {x['in_features']:>6} "
            f"{x['out_features']:>6} {x['numel']:>10} {x['group'] or ''}"
        )
    lines.append("")
    lines.append(f"{'scheme':10} {'avg bits':>9} {'no scale':>9}  unavailable for")
    for name, s in doc["schemes"].items():
        na = f"{len(s['unavailable'])} layers" if s["unavailable"] else ""
        lines.append(f"{name:10} {s['avg_bits']:>9.4f} {s['avg_bits_no_scale']:>9.4f}  {na}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixviz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="layer inventory and per-scheme average bits")
    info.add_argument("model", help="demo | tiny | local HF folder | hub id")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model's own Python code (off by default)",
    )
    info.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MixvizError as e:
        sys.stderr.write(f"mixviz: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mixviz: interrupted\n")
        return 130
    return 0
