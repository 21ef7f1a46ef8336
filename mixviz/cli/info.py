"""``mixviz info MODEL``: the layer inventory and each scheme's average bits."""

from __future__ import annotations

import argparse
import sys

from mixviz.cli.common import add_json, add_model, add_trust_remote_code, emit, resolve


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="layer inventory and per-scheme average bits")
    add_model(info)
    add_json(info, help="print JSON")
    info.add_argument(
        "--path",
        action="store_true",
        help="print only what from_pretrained loads (the built folder of demo or tiny)",
    )
    add_trust_remote_code(info, help="allow the model's own Python code (off by default)")
    info.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> None:
    from mixviz.models.inventory import inventory, inventory_report
    from mixviz.models.loading import meta_model

    ref = resolve(args)
    if args.path:  # for scripts: auto-round --model "$(mixviz info demo --path)"
        sys.stdout.write(ref.path + "\n")
        return
    doc = inventory_report(ref.name, inventory(meta_model(ref)))
    if ref.note:
        doc["note"] = ref.note
    emit(doc, args.json, _info_text)


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
    lines.append(
        f"{'scheme':10} {'avg bits':>9} {'no scale':>9} {'served':>9}  unavailable for "
        "(avg bits: every block linear, a GGML type with llama.cpp's fallback; served: over "
        "the layers it takes itself)"
    )
    for name, s in doc["schemes"].items():
        na = f"{len(s['unavailable'])} layers" if s["unavailable"] else ""
        fb = s.get("fallback") or {}
        if fb:
            na += "; written as " + ", ".join(f"{t} on {n}" for t, n in fb.items())
        own = "—" if s.get("avg_bits_served") is None else f"{s['avg_bits_served']:.4f}"
        lines.append(
            f"{name:10} {s['avg_bits']:>9.4f} {s['avg_bits_no_scale']:>9.4f} {own:>9}  {na}"
        )
    return "\n".join(lines)
