"""A run's log: where its worker writes it, and the text as a person reads it (terminal escapes
stripped, each ``\\r``-redrawn progress line kept only in its last state)."""

from __future__ import annotations

import re
from pathlib import Path

from mixviz.runs.store import runs_dir

# CSI (colours, cursor moves: ESC [ … final byte) and OSC (ESC ] … BEL or ESC \) sequences
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def clean_log(text: str) -> str:
    """Plain text: no ANSI escapes, and a line that tqdm redrew with ``\\r`` in its last state.

    >>> clean_log("\\x1b[32mloading\\x1b[0m\\n 10%|#  |\\r 50%|### |\\r100%|#####|\\nok\\r\\n")
    'loading\\n100%|#####|\\nok\\n'
    """
    text = _ESCAPE.sub("", text).replace("\r\n", "\n")
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def log_path(run_id: str) -> Path:
    return runs_dir() / run_id / "log.txt"


def read_log(run_id: str, tail: int = 20000) -> str:
    p = log_path(run_id)
    if not p.is_file():
        return ""
    data = p.read_bytes()[-tail:]
    return data.decode("utf-8", errors="replace")
