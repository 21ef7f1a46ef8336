"""AutoScheme's caches in ``reproduce`` are keyed by what changes them (issue 13 items 10, 11)."""

from __future__ import annotations

import inspect
import json

import pytest

import mixviz.sensitivity.autoscheme
from mixviz.report.reproduce import autoscheme_key, autoscheme_recipe, reports_dir, run_protocol
from mixviz.sensitivity.profile import DEFAULT_METRIC


@pytest.fixture
def fake_autoscheme(tmp_path, monkeypatch, tiny_layers):
    """AutoScheme replaced by a recorder whose answer depends on its inputs."""
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    calls = []
    names = [x.name for x in tiny_layers if x.block is not None]

    def run(model, tok, options, dataset, nsamples, seqlen, cache, avg_bits=None, **kw):
        calls.append(
            {"nsamples": nsamples, "seqlen": seqlen, "cache": str(cache), "bits": avg_bits}
        )
        hi = options[-1] if avg_bits > 5 else options[0]
        return {n: {"bits": 8 if hi == "MXFP8" else 4, "data_type": "mx_fp", "group_size": 32,
                    "act_bits": 8 if hi == "MXFP8" else 4} for n in names}, 0.0  # fmt: skip

    monkeypatch.setattr(mixviz.sensitivity.autoscheme, "run_autoscheme", run)
    return calls


def test_autoscheme_allocation_cache_is_keyed_by_everything(fake_autoscheme, tiny_ref):
    opts = ("MXFP4", "MXFP8")
    # a stale allocation under the old name-only key must not be picked up
    stale = reports_dir(tiny_ref.name) / "autoscheme-MXFP4-MXFP8-6.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps({"layers": {"stale": "BF16"}}))

    a = autoscheme_recipe(tiny_ref, opts, 6, 2, 32, lambda m: None)
    assert "stale" not in a and set(a.values()) == {"MXFP8"}
    assert len(fake_autoscheme) == 1
    autoscheme_recipe(tiny_ref, opts, 6, 2, 32, lambda m: None)  # same inputs: cached
    assert len(fake_autoscheme) == 1
    for args in ((opts, 6, 4, 32), (opts, 6, 2, 64), (opts, 4.5, 2, 32)):
        autoscheme_recipe(tiny_ref, *args, lambda m: None)
    assert len(fake_autoscheme) == 4  # calibration size, seqlen, budget: each a new answer
    # AutoScheme's own score folder differs with the calibration, not with the budget
    folders = [c["cache"] for c in fake_autoscheme]
    assert folders[0] != folders[1] != folders[2] and folders[3] == folders[0]


def test_autoscheme_key_changes_with_each_input():
    base = ("h", ("MXFP4", "MXFP8"), 16, 256, "c", 5.0)
    keys = {autoscheme_key(*base)}
    for i, other in enumerate(["h2", ("MXFP4",), 8, 128, "c2", 4.5]):
        args = list(base)
        args[i] = other
        keys.add(autoscheme_key(*args))
    assert len(keys) == 7
    assert autoscheme_key("h", ("MXFP8", "MXFP4"), 16, 256, "c") == autoscheme_key(
        "h", ("MXFP4", "MXFP8"), 16, 256, "c"
    )


def test_reproduce_defaults_to_the_documented_metric():
    assert DEFAULT_METRIC == "fisher"
    assert inspect.signature(run_protocol).parameters["metric"].default == DEFAULT_METRIC
    from mixviz.cli import build_parser

    args = build_parser().parse_args(["reproduce", "tiny"])
    assert args.metric == DEFAULT_METRIC
