"""Set up every test run — ``tests/`` and the doctests of ``mixviz/`` — before anything imports.

Caches go to a per-session temporary folder (``MIXVIZ_CACHE``), never the repository's
``cache/``; converted models stay shared (``MIXVIZ_MODELS``) so the demo model is converted once
per machine; no hub, no Ray address from the environment.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent


def pytest_configure(config):
    # Set before any fixture runs (module-scoped ones included), inherited by subprocesses.
    os.environ["MIXVIZ_CACHE"] = tempfile.mkdtemp(prefix="mixviz-test-cache-")
    os.environ.setdefault("MIXVIZ_MODELS", str(REPO / "cache" / "models"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.pop("MIXVIZ_RAY_ADDRESS", None)
