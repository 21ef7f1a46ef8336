"""Uploaded calibration texts: stored under a name made from their content, the only local
files a link may name."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mixviz.errors import MixvizError
from mixviz.paths import MAX_BYTES, atomic_write_bytes, cache_dir

_UPLOAD_NAME = re.compile(r"[0-9a-f]{16}\.(txt|jsonl)")


def uploads_dir() -> Path:
    """Where :func:`save_upload` keeps uploaded texts: the only files the URL may name."""
    return cache_dir() / "uploads"


def is_upload(path: str) -> bool:
    """``path`` is an existing file that :func:`save_upload` wrote (symlinks, ``..`` resolved)."""
    try:
        p = Path(path).resolve(strict=True)
        root = uploads_dir().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return p.parent == root and bool(_UPLOAD_NAME.fullmatch(p.name)) and p.is_file()


def save_upload(data: bytes, name: str) -> str:
    """Store an uploaded text under a name derived from its content (never the user's name)."""
    if len(data) > MAX_BYTES:
        raise MixvizError(
            f"uploaded file {name} is larger than the {MAX_BYTES >> 20} MB limit "
            f"({len(data) >> 20} MB)"
        )
    suffix = ".jsonl" if name.lower().endswith(".jsonl") else ".txt"
    path = uploads_dir() / (hashlib.sha256(data).hexdigest()[:16] + suffix)
    if not path.is_file():
        atomic_write_bytes(path, data)
    return str(path)
