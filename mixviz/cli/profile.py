"""``mixviz profile MODEL``: per-layer sensitivity to each option (cached), or
``--from-autoscheme DIR --model MODEL``: AutoScheme's score cache imported as a profile."""

from __future__ import annotations

import argparse

from mixviz.cli.common import (
    Bar,
    add_device_flags,
    add_json,
    add_model,
    add_offload_flag,
    add_profile_flags,
    add_trust_remote_code,
    emit,
    profile_kwargs,
    profile_spec,
    resolve,
)
from mixviz.errors import MixvizError


def add_parser(sub) -> None:
    prof = sub.add_parser("profile", help="per-layer sensitivity to each option (cached)")
    add_model(prof, nargs="?")
    add_profile_flags(
        prof,
        "options",
        "metric",
        "nsamples",
        "seqlen",
        "calib",
        "layers",
        "include_lm_head",
        "allow_partial",
        "no_cache",
        "around",
        "imatrix",
    )
    add_device_flags(prof)
    add_offload_flag(prof)
    prof.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where kl runs: this process, or one Ray task per block (default: local)",
    )
    prof.add_argument(
        "--ray-address",
        help="Ray cluster address for --backend ray: host:port, ray://host:port or auto "
        "(default: $RAY_ADDRESS, else a local Ray); not the dashboard URL `run` takes",
    )
    prof.add_argument(
        "--from-autoscheme",
        metavar="DIR",
        help="import AutoScheme's score cache folder instead of profiling",
    )
    prof.add_argument("--model", dest="model_opt", help="the model (with --from-autoscheme)")
    add_json(prof)
    prof.add_argument("--out", help="also write the profile JSON to this file")
    add_trust_remote_code(prof)
    prof.set_defaults(func=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> None:
    from mixviz.sensitivity.profile import profile_model

    if args.from_autoscheme:
        from mixviz.sensitivity.autoscheme import import_autoscheme

        model = args.model_opt or args.model
        if not model:
            raise MixvizError("--from-autoscheme needs --model MODEL (the model it scored)")
        prof = import_autoscheme(args.from_autoscheme, model)  # takes a name: resolves it
    else:
        if not args.model:
            raise MixvizError("give a MODEL to profile (demo, tiny, a folder or a hub id)")
        spec = profile_spec(args)  # checked before the model is resolved
        ref = resolve(args, quiet=True)  # once; profile_model takes the ref as it is
        prof = profile_model(ref, spec, **profile_kwargs(args), progress=Bar())
        if spec.imatrix is not None:  # the file to hand `quantize --imatrix`
            from mixviz.sensitivity.imatrix import auto_path

            path = auto_path(ref.hash, spec) if spec.imatrix == "auto" else spec.imatrix
            emit({**prof.to_dict(), "imatrix_file": str(path)}, args.json, _profile_text,
                 args.out)  # fmt: skip
            return
    emit(prof.to_dict(), args.json, _profile_text, args.out)


def _profile_text(doc: dict) -> str:
    c = doc["calib"]
    lines = [
        f"{doc['metric']} profile of {doc['model']}: {len(doc['layers'])} layers × "
        f"{', '.join(doc['options'])}; calib {c['source']} {c['nsamples']}×{c['seqlen']}; "
        f"{doc['device']} {doc['dtype']}; {doc['seconds']:.1f} s"
    ]
    if doc.get("imatrix_file"):
        lines.append(f"importance matrix (for quantize --imatrix): {doc['imatrix_file']}")
    for opt in doc["options"]:
        rows = [r for r in doc["rows"] if r["option"] == opt and r["score"] is not None]
        rows.sort(key=lambda r: -r["score"])
        total = sum(r["score"] for r in rows)
        lines.append(f"\n{opt}: total score {total:.4g}; most sensitive:")
        lines += [f"  {r['layer']:48} {r['score']:.4g}" for r in rows[:5]]
    return "\n".join(lines)
