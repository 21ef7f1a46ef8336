"""Tables and short texts the pages show, made from library results (no widgets here)."""

from __future__ import annotations

import pandas as pd

from mixviz.models.schemes import get_scheme
from mixviz.report.tables import PRIMARY
from ui.caches import file_overhead


def layers_frame(report: dict) -> pd.DataFrame:
    return pd.DataFrame(report["layers"])


def schemes_frame(report: dict) -> pd.DataFrame:
    """One row per format: formats every block linear can use first, by bits; a format some
    layers cannot use says why in words."""
    features = {x["name"]: x["in_features"] for x in report["layers"]}
    rows = []
    for name, s in report["schemes"].items():
        scheme = get_scheme(name)
        bad = sorted({features[n] for n in s["unavailable"] if n in features})
        rows.append(
            {
                "scheme": name,
                "available": "all layers"
                if not bad
                else f"not for {len(s['unavailable'])} of {len(features)} layers: group "
                f"{scheme.group_size} does not divide {_join(bad)} input features",
                "avg bits": s["avg_bits"],
                "avg bits (no scale)": s["avg_bits_no_scale"],
            }
        )
    frame = pd.DataFrame(rows)
    order = sorted(
        range(len(rows)), key=lambda i: (rows[i]["available"] != "all layers", rows[i]["avg bits"])
    )
    return frame.iloc[order].reset_index(drop=True)


def _join(numbers: list[int]) -> str:
    """``[576]`` → ``'576'``; ``[576, 1536]`` → ``'576 or 1536'``."""
    text = [str(n) for n in numbers]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


def task_metrics(frame: pd.DataFrame, tasks: list[str]) -> str:
    """Which metric the accuracy of ``tasks`` is (``acc``, ``acc_norm``, or both)."""
    found = [next((m for m in PRIMARY if f"{t}:{m}" in frame), "acc") for t in tasks]
    return " / ".join(dict.fromkeys(found)) or "acc"


def items_per_task(store, frame: pd.DataFrame, tasks: list[str]) -> str:
    """What a number over ``tasks`` rests on, per run, from the runs' item counts
    (``task:items``): `` (2 items: 1 per task × 2 tasks)``, `` (50 items)`` for one task, a
    range where runs differ; `` (up to 50 items per task)`` from the spec's limit for runs that
    stored no count."""
    columns = [f"{t}:items" for t in tasks if f"{t}:items" in frame]
    if not columns or not frame[columns].notna().any().any():
        limits = {store.get(i).spec.get("limit") for i in frame["id"]} - {None}
        return f" (up to {_span(limits)} items per task)" if limits else ""
    per_run = {int(n) for n in frame[columns].fillna(0).sum(axis=1) if n}
    per_task = {int(n) for n in frame[columns].stack().dropna()}
    total = f"{_span(per_run)} item" + ("s" if max(per_run) > 1 else "")
    if len(tasks) == 1:
        return f" ({total})"
    return f" ({total}: {_span(per_task)} per task × {len(tasks)} tasks)"


def windows_note(frame: pd.DataFrame) -> str:
    """What a KLD rests on: `` (2044 tokens)``, a range where runs differ, or ``""``."""
    if "tokens" not in frame or not frame["tokens"].notna().any():
        return ""
    return f" ({_span({int(n) for n in frame['tokens'].dropna()})} tokens)"


def _span(counts: set[int]) -> str:
    """``{1}`` → ``'1'``, ``{1, 5, 3}`` → ``'1–5'``."""
    return "–".join(str(n) for n in sorted({min(counts), max(counts)}))


def file_size(spec: str, bpw: float, problem) -> str:
    """``123.4 MB (…)``: the allocated layers at ``bpw`` plus the rest of the file as its writer
    stores it — the size ``allocate --size`` solves for (:mod:`mixviz.models.file_size`)."""
    fmt = "gguf" if problem.target == "llamacpp" or all(
        get_scheme(o).ggml for o in problem.options if get_scheme(o).bits < 16
    ) else "auto_round"  # fmt: skip
    rest = file_overhead(spec, tuple(problem.layers), fmt)
    total = bpw * problem.total_numel / 8 + rest
    what = "GGUF: embedding at llama.cpp's output type, norms F32, header" if fmt == "gguf" else (
        "auto_round: the rest in the run's float32, headers, tokenizer files"
    )  # fmt: skip
    return f"{total / 1e6:.1f} MB as {what} ({rest / 1e6:.1f} MB of it)"
