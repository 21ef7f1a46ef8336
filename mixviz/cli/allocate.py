"""``mixviz allocate PROFILE.json|MODEL --avg-bits B``: one option per layer under a budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from mixviz.cli.common import (
    WHEN_PROFILING,
    Bar,
    add_json,
    add_profile_flags,
    add_trust_remote_code,
    emit,
    profile_kwargs,
    profile_spec,
    progress,
    resolve,
    strategy_names,
)
from mixviz.errors import MixvizError


def add_parser(sub) -> None:
    alloc = sub.add_parser("allocate", help="choose an option per layer under a bit budget")
    alloc.add_argument("target", metavar="PROFILE.json|MODEL")
    budget = alloc.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", help="the average-bits budget")
    budget.add_argument(
        "--bpw",
        help="bits per weight including scales, as llama.cpp states them (= --avg-bits with "
        "scale bits counted)",
    )
    budget.add_argument(
        "--size",
        help="a file size (4.2GB, 300MB, 1.5GiB): the allocated layers get what the rest of "
        "the file leaves (embedding, norms, metadata, at the types --file-format stores them)",
    )
    alloc.add_argument(
        "--file-format",
        choices=("gguf", "auto_round", "auto_gptq", "llm_compressor"),
        help="the checkpoint --size prices (default: gguf for GGML options or --target "
        "llamacpp, else auto_round)",
    )
    alloc.add_argument("--strategy", default="optimal", choices=strategy_names())
    alloc.add_argument(
        "--ignore-scale-bits",
        action="store_true",
        help="count bits·numel only, as AutoScheme's ignore_scale_zp_bits",
    )
    alloc.add_argument(
        "--shared",
        action="append",
        metavar="qkv,gate_up|REGEX",
        help="layers that must share an option (repeatable)",
    )
    add_target(alloc)
    add_pins(alloc)
    add_profile_flags(
        alloc, "include_lm_head", include_lm_head="put lm_head in the budget (profiles it too)"
    )
    add_profile_when_model(alloc)
    add_trust_remote_code(alloc)
    add_json(alloc)
    alloc.add_argument(
        "--anchor",
        action="store_true",
        help="measure the allocation's KLD once in memory (8×512 calibration tokens, cached) "
        "so the predicted KLD has something to rest on before any run has finished",
    )
    alloc.add_argument("--out", help="also write the allocation JSON to this file")
    alloc.set_defaults(func=cmd_allocate)


def add_profile_when_model(parser: argparse.ArgumentParser, **helps: str) -> None:
    """The profiling flags of a command that takes ``PROFILE.json|MODEL`` (used for a MODEL)."""
    names = ("options", "metric", "calib", "nsamples", "seqlen", "allow_partial", "imatrix")
    add_profile_flags(parser, *names, when=WHEN_PROFILING, metric_choices=False, **helps)


def add_target(parser: argparse.ArgumentParser) -> None:
    """``--target RUNTIME``: the runtime's rules become constraints (models/targets.py)."""
    from mixviz.models.targets import RUNTIMES

    parser.add_argument(
        "--target",
        dest="target_runtime",
        choices=list(RUNTIMES),
        help="the runtime that will serve the model: its rules join the problem (vllm/sglang: "
        "fused q/k/v and gate/up share one format; vllm-cpu: this CPU's vLLM kernels, 4-bit "
        "integers with AVX-512, nothing quantized without (vllm-cpu-avx512/-avx2 name the "
        "serving CPU's); llamacpp: GGML types only)",
    )


def add_pins(alloc: argparse.ArgumentParser) -> None:
    alloc.add_argument(
        "--pin", action="append", metavar="NAME=OPTION", help="fix a layer's option (repeatable)"
    )
    alloc.add_argument(
        "--pin-kind",
        action="append",
        metavar="KIND=OPTION",
        help="fix a module kind in every block, e.g. down=MXFP8 (repeatable)",
    )
    alloc.add_argument(
        "--pin-block",
        action="append",
        metavar="N=OPTION",
        help="fix every linear of block N, e.g. 0=MXFP8 (repeatable); "
        "--pin beats --pin-block beats --pin-kind",
    )


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise MixvizError(f"{what} must be a number, got {text!r}") from None


def _budget(args: argparse.Namespace, prof, problem) -> tuple[float, dict]:
    """The average-bits budget from ``--avg-bits``, ``--bpw`` or ``--size`` (and how)."""
    from mixviz.allocation.problem import parse_size, size_budget

    if args.avg_bits is not None:
        return _float(args.avg_bits, "--avg-bits"), {}
    if args.bpw is not None:
        return _float(args.bpw, "--bpw"), {"bpw": _float(args.bpw, "--bpw")}
    size = parse_size(args.size)
    fmt = args.file_format or _file_format(prof, args.target_runtime)
    over = file_overhead(prof, problem, fmt)
    avg = over.counted_bits(size_budget(problem, size, overhead_bytes=over.bytes))
    return avg, {"size_bytes": size, "file_format": fmt, "overhead_bytes": over.bytes,
                 "overhead": over.parts, "avg_bits": avg}  # fmt: skip


def _file_format(prof, target: str | None) -> str:
    from mixviz.models.schemes import get_scheme

    ggml = all(get_scheme(o).ggml for o in prof.options if get_scheme(o).bits < 16)
    return "gguf" if target == "llamacpp" or ggml else "auto_round"


def file_overhead(prof, problem, fmt: str):
    """What a ``fmt`` checkpoint of the profile's model holds besides the allocated layers
    (:mod:`mixviz.models.file_size`): for a GGUF, with the header of llama.cpp's own F32
    conversion where it is cached."""
    from mixviz.models.file_size import overhead
    from mixviz.models.loading import meta_model, resolve_model
    from mixviz.runs.ship.llamacpp import converted_path

    try:
        ref = resolve_model(prof.model)
        model = meta_model(ref)
    except MixvizError as e:
        raise MixvizError(f"--size needs the model {prof.model!r} to price the rest of its "
                          f"file: {e}") from None  # fmt: skip
    conv = converted_path(ref.hash, "f32")
    return overhead(model, set(problem.layers), fmt, dtype=prof.dtype, folder=ref.path,
                    gguf_file=conv, options=prof.options)  # fmt: skip


def shared_groups(items: list[str] | None) -> list[str]:
    out = []
    for item in items or []:
        parts = [p.strip() for p in item.split(",")]
        out += parts if all(p in ("qkv", "gate_up") for p in parts) else [item]
    return out


def load_or_profile(target: str, args: argparse.Namespace, include_lm_head: bool = False):
    """A Profile from a JSON file, or by profiling a model (cached)."""
    from mixviz.sensitivity.profile import Profile, profile_model

    if target.endswith(".json") or Path(target).is_file():
        return Profile.load(target)
    spec = profile_spec(args, include_lm_head=include_lm_head)
    ref = resolve(args, target, quiet=True)  # once; profile_model takes the ref as it is
    return profile_model(ref, spec, **profile_kwargs(args), progress=Bar())


def cmd_allocate(args: argparse.Namespace) -> None:
    from mixviz.allocation.edits import parse_pins
    from mixviz.allocation.problem import Problem
    from mixviz.allocation.strategies import allocate

    if (args.bpw or args.size) and args.ignore_scale_bits:
        raise MixvizError("--bpw and --size count scale bits: drop --ignore-scale-bits")
    prof = load_or_profile(args.target, args, args.include_lm_head)
    problem = Problem.from_profile(
        prof,
        ignore_scale_bits=args.ignore_scale_bits,
        shared=shared_groups(args.shared),
        pins=parse_pins(prof.layers, args.pin, args.pin_kind, args.pin_block),
        include_lm_head=args.include_lm_head,
        target=args.target_runtime,
    )
    budget, how = _budget(args, prof, problem)
    result = allocate(problem, budget, args.strategy)
    doc = result.to_dict()
    if how:
        doc["budget_from"] = how
    doc["model"] = prof.model
    doc["model_hash"] = prof.model_hash
    doc["predicted_loss_is"] = _loss_is(prof.metric)
    doc.update(_predicted_kld(prof, result, args))
    if args.target_runtime:
        from mixviz.models.targets import resolve_target

        doc["target"] = resolve_target(args.target_runtime)  # the build it was solved for
    emit(doc, args.json, _allocation_text, args.out)


def _predicted_kld(prof, result, args: argparse.Namespace) -> dict:
    """``predicted_kld`` (value, lo, hi, source, …; None without runs or an anchor) and
    ``predicted_kld_note``: what it rests on, or what would give one."""
    from mixviz.report.predicted_kld import how_to_get, predict_kld, run_points_for
    from mixviz.runs.evaluation.anchor import cached_anchors, measure_anchor

    if args.anchor:
        measure_anchor(prof, result, progress=progress)
    try:
        points = run_points_for(prof)
    except MixvizError:
        points = []  # no readable run store: the anchor alone
    got = predict_kld(result.predicted_loss, points, cached_anchors(prof))
    if got is not None:
        return {"predicted_kld": got.to_dict(), "predicted_kld_note": got.source}
    have = sum(1 for p in points if p.get("kld") is not None)
    again = (  # the same command and flags (pins, --shared, --target …): the same allocation
        "this allocate command again with --anchor (one measured anchor, minutes on a CPU), "
        "or 3 runs with KLD (mixviz run)"
    )
    return {"predicted_kld": None, "predicted_kld_note": how_to_get(have, again)}


def _loss_is(metric: str) -> dict[str, str]:
    """What ``predicted_loss`` is, for the JSON and the text line: the sum over layers of
    ``metric``'s score, its unit, and what one score is."""
    from mixviz.sensitivity.metrics import score_meaning, score_unit

    unit = score_unit(metric)
    return {
        "short": f"Σ over layers of the {metric} score" + (f", {unit}" if unit else ""),
        "score": score_meaning(metric),
    }


def _allocation_text(doc: dict) -> str:
    from collections import Counter

    lines = [
        f"{doc['strategy']} allocation of {doc['model']} at {doc['budget_avg_bits']:g} bits "
        f"({'without' if doc['ignore_scale_bits'] else 'with'} scale bits): "
        f"{doc['avg_bits']:.4f} avg bits ({doc['avg_bits_no_scale']:.4f} without scales), "
        f"predicted loss {doc['predicted_loss']:.4g}"
        + (f" ({doc['predicted_loss_is']['short']})" if "predicted_loss_is" in doc else "")
        + f", {doc['seconds'] * 1000:.1f} ms",
        _kld_line(doc),
        "  "
        + ", ".join(f"{o}: {n} layers" for o, n in sorted(Counter(doc["layers"].values()).items())),
    ]
    blocks: dict[str, list[str]] = {}
    for name, option in doc["layers"].items():
        parts = name.split(".")
        key = next((p for p in parts if p.isdigit()), "-")
        blocks.setdefault(key, []).append(f"{parts[-1].removesuffix('_proj')}={option}")
    lines += [f"  block {k:>3}: {' '.join(v)}" for k, v in blocks.items()]
    return "\n".join(lines)


def _kld_line(doc: dict) -> str:
    """``'  predicted KLD 0.031 ± 0.0051 nats/token (calibration line over 5 runs)'``."""
    got = doc.get("predicted_kld")
    if got is None:
        return f"  predicted KLD {doc.get('predicted_kld_note', '—')}"
    return (
        f"  predicted KLD to the unquantized model {got['value']:.3g} ± "
        f"{got['half_width_95']:.2g} nats/token ({got['source']})"
    )
