"""Every test writes its caches under a temporary folder; converted models are shared.

``MIXVIZ_CACHE`` points at a per-session temporary folder (tests that need more isolation
monkeypatch it to their own ``tmp_path``); ``MIXVIZ_MODELS`` keeps pointing at
the repository's ``cache/models`` so the demo model is converted once per machine, not per run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pytest_configure(config):
    # Set before any fixture runs (module-scoped ones included), inherited by subprocesses.
    os.environ["MIXVIZ_CACHE"] = tempfile.mkdtemp(prefix="mixviz-test-cache-")
    os.environ.setdefault("MIXVIZ_MODELS", str(REPO / "cache" / "models"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_ref():
    import mixviz

    return mixviz.resolve_model("tiny")


@pytest.fixture(scope="session")
def tiny_layers(tiny_ref):
    import mixviz

    return mixviz.inventory(mixviz.meta_model(tiny_ref))


@pytest.fixture(scope="session")
def demo_ref():
    import mixviz

    return mixviz.resolve_model("demo")


@pytest.fixture(scope="session")
def demo_layers(demo_ref):
    import mixviz

    return mixviz.inventory(mixviz.meta_model(demo_ref))
