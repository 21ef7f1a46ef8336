"""Shared fixtures. The environment (a temporary ``MIXVIZ_CACHE``, shared ``MIXVIZ_MODELS``,
no hub) is set by the repository's root ``conftest.py``; tests that need more isolation
monkeypatch ``MIXVIZ_CACHE`` to their own ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "support"))  # apptest, cli, fakes, … (helpers)


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


@pytest.fixture(scope="session")
def ray_head():
    """One local Ray head (2 CPUs, no GPU) for every test that needs one (:mod:`rayhead`)."""
    pytest.importorskip("ray.job_submission")
    from rayhead import ray_head

    with ray_head() as head:
        yield head
