"""Where mixviz keeps its caches, and how it writes them (atomically)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mixviz.errors import MixvizError

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of every cache: ``$MIXVIZ_CACHE`` or ``<repo>/cache``."""
    return Path(os.environ.get("MIXVIZ_CACHE") or REPO_ROOT / "cache")


def models_dir() -> Path:
    """Converted models and downloaded wheels: ``$MIXVIZ_MODELS`` or ``<cache>/models``.

    Separate from :func:`cache_dir` so tests can isolate every other cache in a temporary
    folder while reusing the (expensive) converted demo model.
    """
    return Path(os.environ.get("MIXVIZ_MODELS") or cache_dir() / "models")


SETTINGS_PREFIXES = ("MIXVIZ_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
"""Environment variables that decide which model, text and caches a worker finds."""


def worker_env(settings_only: bool = False) -> dict[str, str]:
    """The environment of a worker process (a run, a Ray task): this checkout first on
    ``PYTHONPATH``, the same cache and models folders, no tokenizer threads of its own. With
    ``settings_only`` (a worker started by Ray, which has its own environment) only those and
    :data:`SETTINGS_PREFIXES` variables, else all of this process's environment besides."""
    env = dict(os.environ)
    if settings_only:
        env = {k: v for k, v in env.items() if k.startswith(SETTINGS_PREFIXES)}
    env["MIXVIZ_CACHE"] = str(cache_dir())
    env["MIXVIZ_MODELS"] = str(models_dir())
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), path) if p)
    return env


def safe_filename(name: str) -> str:
    """A user-given name (a model, a hub id) as a file-name fragment that never escapes its
    folder: ``Qwen/Qwen3-8B`` → ``Qwen_Qwen3-8B``; at most 60 characters, never empty.

    >>> safe_filename("../../etc/passwd"), safe_filename("..")
    ('etc_passwd', 'model')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "model"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """``atomic_write_bytes`` of ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def check_header(doc: Any, fmt: str, version: int, what: str) -> None:
    """Refuse a document that is not ``{"format": fmt, "version": version, ...}``.

    >>> check_header({"format": "mixviz.recipe", "version": 1}, "mixviz.recipe", 1, "recipe")
    """
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise MixvizError(f'not a mixviz {what} (missing "format": "{fmt}")')
    if doc.get("version") != version:
        raise MixvizError(
            f"unsupported {what} version {doc.get('version')!r} "
            f"(this mixviz reads version {version})"
        )


MAX_BYTES = 20 * 1024 * 1024  # far above any profile or recipe; caps user uploads


def read_json(path: str | Path, what: str) -> object:
    """Read a JSON file with precise, one-line errors (and a size cap for uploads)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_BYTES:
            raise MixvizError(f"{what} file {p.name} is larger than {MAX_BYTES >> 20} MB")
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MixvizError(f"{what} file not found: {p}") from None
    except OSError as e:
        raise MixvizError(f"cannot read {what} file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise MixvizError(f"{what} file {p.name} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise MixvizError(
            f"{what} file {p.name} is not valid JSON: {e.msg} at line {e.lineno}"
        ) from None
