"""What every command shares: output (JSON or text), progress on stderr, error handling, the
model and profiling flags (defined once here), and the registries the choices come from."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from mixviz.errors import MixvizError

MODEL_HELP = "demo | tiny | local HF folder | hub id"
WHEN_PROFILING = "when profiling a MODEL"


# ------------------------------------------------------------------ output


def progress(msg: str) -> None:
    """One ``mixviz: …`` line on stderr."""
    sys.stderr.write(f"mixviz: {msg}\n")
    sys.stderr.flush()


class JobLine:
    """A queued job's line on stderr: ``show(row)`` on every poll. On a terminal the line is
    redrawn in place each time (the elapsed clock ticks with the poll, 1 s); in a log, a line
    when the job moves and every 30 s while it does not."""

    def __init__(self, every: float = 30.0):
        self.tty = sys.stderr.isatty()
        self.every, self.last, self.at = every, None, 0.0

    def show(self, row) -> None:
        import time

        eta = row.eta()
        text = f"{row.id}: {row.status} {row.stage} {row.progress:.0%}" + (
            f" · {eta}" if eta else ""
        )
        if self.tty:
            end = "\n" if row.status in ("done", "failed", "cancelled", "lost") else ""
            sys.stderr.write(f"\r\x1b[Kmixviz: {text}{end}")
            sys.stderr.flush()
            return
        moved = (row.status, row.stage, round(row.progress, 2))
        if moved != self.last or time.time() - self.at > self.every:
            progress(text)
            self.last, self.at = moved, time.time()


def follow(backend, run_id: str, reused: bool, timeout: float | None = None):
    """Wait for the job with its :class:`JobLine`; its final row. Ctrl-C cancels the job when
    this command queued it (a reused one was queued by someone else: it is left running, and
    how to stop it said) and is raised again; ``timeout`` (seconds) is ``wait``'s: an error,
    the job left as it is."""
    from mixviz.runs.jobs.backends import wait

    line = JobLine()
    try:
        return wait(backend.store, run_id, timeout=timeout, on_update=line.show, backend=backend)
    except KeyboardInterrupt:
        if line.tty:
            sys.stderr.write("\n")
        if reused:
            progress(f"job {run_id} left running (queued before this command; `mixviz cancel "
                     f"{run_id}` stops it)")  # fmt: skip
        else:
            try:
                backend.cancel(run_id)
                progress(f"cancelled job {run_id}")
            except MixvizError:  # it finished meanwhile
                pass
        raise


def emit(doc: dict, as_json: bool, text: Callable[[dict], str], out: str | None = None) -> None:
    """Print ``doc`` as JSON or as ``text(doc)``; with ``out``, also write the JSON there."""
    rendered = json.dumps(doc, indent=2) if as_json else text(doc)
    if out:
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(out, (json.dumps(doc, indent=2) + "\n").encode())
        progress(f"wrote {out}")
    sys.stdout.write(rendered + "\n")


def write_text(text: str, out: str | None) -> None:
    """``text`` to the file ``out`` (atomically), or to stdout."""
    if out:
        from mixviz.paths import atomic_write_bytes

        atomic_write_bytes(out, text.encode())
        progress(f"wrote {out}")
    else:
        sys.stdout.write(text)


class Bar:
    """A tqdm progress bar on stderr, driven by the library's progress callback."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int, msg: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.bar.set_description(msg[:40])
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.bar.close()


# ------------------------------------------------------------------ running a command


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_command(args: argparse.Namespace) -> int:
    """Call the parsed command: 0, or 2 with one line on stderr for a user error
    (:class:`MixvizError`, never a traceback), or 130 when interrupted."""
    try:
        args.func(args)
    except MixvizError as e:
        sys.stderr.write(f"mixviz: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("mixviz: interrupted\n")
        return 130
    return 0


def resolve(args: argparse.Namespace, name: str | None = None, quiet: bool = False):
    """The command's model (``args.model``, or ``name``) as a ModelRef: resolved once, here."""
    from mixviz.models.loading import resolve_model

    return resolve_model(
        name or args.model,
        trust_remote_code=args.trust_remote_code,
        progress=None if quiet else progress,
    )


# ------------------------------------------------------------------ shared flags


def metric_names() -> tuple[str, ...]:
    """``--metric`` choices: the metric registry, read when the parser is built."""
    from mixviz.sensitivity.metrics import metric_names as registered

    return registered()


def default_metric() -> str:
    from mixviz.sensitivity.metrics import DEFAULT_METRIC

    return DEFAULT_METRIC


def strategy_names() -> tuple[str, ...]:
    """``--strategy`` choices: the strategy registry, read when the parser is built."""
    from mixviz.allocation.strategies import strategy_names as registered

    return registered()


def add_model(parser: argparse.ArgumentParser, **kw) -> None:
    parser.add_argument("model", help=MODEL_HELP, **kw)


def add_json(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_trust_remote_code(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", help=help)


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: where the model runs (checked by
    :mod:`mixviz.models.device`; ``auto`` = CUDA in bfloat16 where there is one, else CPU in
    float32)."""
    from mixviz.models.device import DTYPES

    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)"
    )
    parser.add_argument("--dtype", default="auto", help=f"{' | '.join(DTYPES)} (default: auto)")


def add_offload_flag(parser: argparse.ArgumentParser) -> None:
    """``--offload``: weights on the CPU, one block at a time on the device."""
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep the weights on the CPU and move one block at a time to --device, for a "
        "model larger than the device (same scores, slower)",
    )


def device_kwargs(args: argparse.Namespace) -> dict:
    """``{"device": …, "dtype": …}`` from the device flags, checked (a bad value is a user
    error before anything loads)."""
    from mixviz.models.device import check_device, check_dtype

    return {
        "device": check_device(getattr(args, "device", "auto")),
        "dtype": check_dtype(getattr(args, "dtype", "auto")),
    }


def _profile_flags(metric_choices: bool) -> dict[str, tuple[str, dict]]:
    metric: dict = {"default": default_metric()}
    if metric_choices:
        metric["choices"] = metric_names()
    partial = "keep options whose group size does not divide some layers"
    around = (
        "score each layer with the others quantized: every layer at this option, or as in "
        "this recipe JSON"
    )
    return {
        "options": ("--options", {"default": "MXFP4,MXFP8", "help": "comma-separated options"}),
        "metric": ("--metric", metric),
        "nsamples": ("--nsamples", {"type": int, "default": 16}),
        "seqlen": ("--seqlen", {"type": int, "default": 256}),
        "calib": ("--calib", {"default": "pydoc", "help": "pydoc | a .txt or .jsonl file"}),
        "layers": ("--layers", {"help": "regex: score only matching layers (e.g. for kl)"}),
        "include_lm_head": (
            "--include-lm-head",
            {"action": "store_true", "help": "score lm_head too"},
        ),
        "allow_partial": ("--allow-partial", {"action": "store_true", "help": partial}),
        "no_cache": ("--no-cache", {"action": "store_true", "help": "recompute, do not store"}),
        "around": ("--around", {"metavar": "LOW_OPTION|RECIPE", "help": around}),
        "imatrix": (
            "--imatrix",
            {
                "metavar": "auto|FILE",
                "help": "weight GGML types by llama.cpp's importance matrix: auto (computed "
                "from the calibration text) or a llama-imatrix file (GGUF or .dat)",
            },
        ),
    }


def add_profile_flags(
    parser: argparse.ArgumentParser,
    *names: str,
    when: str | None = None,
    metric_choices: bool = True,
    **helps: str,
) -> None:
    """Add the profiling flags ``names`` (``options``, ``metric``, ``nsamples``, ``seqlen``,
    ``calib``, ``layers``, ``include_lm_head``, ``allow_partial``, ``no_cache``, ``around``,
    ``imatrix``),
    in the order given.

    ``when`` replaces every help text (``allocate`` profiles only when given a MODEL); ``helps``
    replaces one flag's; ``metric_choices=False`` leaves ``--metric`` unchecked by argparse.
    """
    flags = _profile_flags(metric_choices)
    for name in names:
        flag, kw = flags[name]
        help = helps.get(name, when or kw.get("help"))
        parser.add_argument(flag, **{**kw, "help": help})


def profile_spec(args: argparse.Namespace, **fields):
    """The :class:`~mixviz.sensitivity.spec.ProfileSpec` the command's profiling flags give
    (those it lacks keep their defaults; ``fields`` replace any), checked before anything
    loads."""
    from mixviz.sensitivity.spec import ProfileSpec

    flags = {
        "options": args.options,
        "metric": args.metric,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "calib": args.calib,
        "layers": getattr(args, "layers", None),
        "include_lm_head": getattr(args, "include_lm_head", False),
        "offload": getattr(args, "offload", False),
        "around": getattr(args, "around", None),
        "imatrix": getattr(args, "imatrix", None),
        "backend": getattr(args, "backend", "local"),
        "ray_address": getattr(args, "ray_address", None),
        **device_kwargs(args),
    }
    return ProfileSpec(**{**flags, **fields})


def profile_kwargs(args: argparse.Namespace) -> dict:
    """``profile_model``'s keyword arguments besides the spec, from the command's flags."""
    return {
        "use_cache": not getattr(args, "no_cache", False),
        "allow_partial": args.allow_partial,
        "trust_remote_code": args.trust_remote_code,
    }


def add_score_from(parser: argparse.ArgumentParser) -> None:
    """``--score-from all|half``: which positions of each KLD window are scored."""
    from mixviz.runs.runspec import SCORE_FROM

    parser.add_argument(
        "--score-from",
        choices=SCORE_FROM,
        default="all",
        help="KLD, perplexity and top-1 on every position of each 512-token window (all) or on "
        "llama.cpp's (half: the second half, as llama-perplexity scores); recorded in the result",
    )
