"""Profiler: every metric on tiny, the Profile contract, the cache, agreement with AutoScheme."""

from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.models.text import calibration_text
from mixviz.sensitivity.metrics import (
    DEFAULT_METRIC,
    METRICS,
    Metric,
    metric_names,
    register_metric,
)
from mixviz.sensitivity.profile import Profile, profile_model, profiles_dir

REPO = Path(__file__).resolve().parents[2]
LADDER = "W2A16G32,W4A16G32,W8A16G32,BF16"


def _spearman(a, b):
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic


PROGRESS: dict[str, list[tuple[int, int]]] = {}  # metric → (done, total) of its ladder run


@pytest.fixture(scope="module")
def ladders():
    """Each metric on tiny with a ladder of int widths (plus MXFP4 for the act term)."""
    return {
        m: profile_model(
            "tiny",
            options=LADDER + ",MXFP4",
            metric=m,
            nsamples=4,
            seqlen=64,
            use_cache=False,
            progress=lambda d, t, msg, m=m: PROGRESS.setdefault(m, []).append((d, t)),
        )
        for m in ("hessian", "fisher", "delta_loss", "kl")
    }


@pytest.mark.parametrize("metric", ["hessian", "fisher", "delta_loss", "kl"])
def test_metric_shapes_and_signs(ladders, metric):
    p = ladders[metric]
    assert p.metric == metric and len(p.layers) == 28
    assert len(p.rows) == 28 * 5
    assert all(r.score is not None and r.score >= 0 for r in p.rows)
    for x in p.layers:
        assert p.score(x.name, "BF16") == 0.0
        assert p.score(x.name, "W2A16G32") > 0
        assert p.row(x.name, "MXFP4").bits == x.numel * 4 + x.numel // 32 * 8
        assert p.row(x.name, "MXFP4").bits_no_scale == x.numel * 4


@pytest.mark.parametrize("metric", ["hessian", "fisher", "delta_loss", "kl"])
def test_work_units_count_every_step(ladders, metric):
    """The registry's ``work_units`` is exactly the number of ``step`` calls of its metric."""
    seen = PROGRESS[metric]
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [d for d, _ in seen] == list(range(total + 1))


def test_metric_registry():
    assert metric_names() == ("fisher", "hessian", "delta_loss", "kl")
    assert DEFAULT_METRIC == "fisher" and DEFAULT_METRIC in metric_names()
    from mixviz.sensitivity import profile

    assert profile.DEFAULT_METRIC == DEFAULT_METRIC
    for name, m in METRICS.items():
        assert isinstance(m, Metric) and m.name == name
        # the batch size profiling passes is the one the function defaults to
        assert inspect.signature(m.score).parameters["batch_size"].default == m.batch_size
        assert m.description.endswith(".") and m.description.count(". ") == 0


@pytest.fixture
def toy_metric():
    """A metric registered for one test (three steps; fewer bits, higher score), then removed."""

    def toy(model, layers, schemes, ids, step, batch_size=1):
        for _ in range(3):
            step("toy")
        return {(x.name, s.name): float(16 - s.bits) for x in layers for s in schemes}

    yield register_metric(Metric("toy", toy, 2, lambda *_: 3, "A toy: fewer bits hurt more."))
    METRICS.pop("toy", None)


def test_a_metric_registered_later_is_profiled(toy_metric):
    assert metric_names()[-1] == "toy" and METRICS["toy"] is toy_metric
    seen = []
    p = profile_model(
        "tiny",
        options="MXFP4,MXFP8",
        metric="toy",
        nsamples=2,
        seqlen=32,
        use_cache=False,
        progress=lambda d, t, m: seen.append((d, t)),
    )
    assert p.metric == "toy" and p.score("model.layers.0.mlp.down_proj", "MXFP4") == 12.0
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_reading_the_registry_does_not_import_torch():
    code = (
        "import sys; from mixviz.sensitivity.metrics import metric_names; "
        "assert metric_names() and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_profile_model_resolves_the_model_once(monkeypatch, tiny_ref):
    """Resolved once at entry, then the ModelRef is passed down (no second resolve_model)."""
    from mixviz.models import loading

    calls = []
    real = loading.resolve_model

    def counting(spec, **kw):
        calls.append(spec)
        return real(spec, **kw)

    monkeypatch.setattr(loading, "resolve_model", counting)
    kw = dict(options="MXFP4", metric="hessian", nsamples=2, seqlen=32, use_cache=False)
    by_name = profile_model("tiny", **kw)
    assert calls == ["tiny"]
    by_ref = profile_model(tiny_ref, **kw)  # a ModelRef is never resolved again
    assert calls == ["tiny"]
    assert by_ref.rows == by_name.rows and by_ref.model == "tiny"


@pytest.mark.parametrize("metric", ["hessian", "kl"])
def test_fewer_bits_never_score_lower(ladders, metric):
    p = ladders[metric]
    for x in p.layers:
        w2, w4, w8 = (p.score(x.name, o) for o in ("W2A16G32", "W4A16G32", "W8A16G32"))
        assert w2 >= w4 >= w8 >= 0, x.name


def test_profile_json_contract_and_roundtrip(ladders, tmp_path):
    p = ladders["hessian"]
    d = p.to_dict()
    assert d["format"] == "mixviz.profile" and d["version"] == 1
    # the calibration the profile was given: the bundled pydoc text, 4 × 64 tokens; its hash is
    # the first 16 hex digits of the text's SHA-256
    text = calibration_text().text
    assert d["calib"] == {
        "source": "pydoc",
        "hash": hashlib.sha256(text.encode()).hexdigest()[:16],
        "nsamples": 4,
        "seqlen": 64,
    }
    assert sorted(d["options"]) == sorted([*LADDER.split(","), "MXFP4"])
    assert d["layers"][0]["name"] == "model.layers.0.self_attn.q_proj"
    assert set(d["rows"][0]) == {"layer", "option", "bits", "bits_no_scale", "score"}
    assert {"torch", "transformers", "auto-round"} <= set(d["versions"])
    p.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == p


def test_cache_hit_miss_and_corrupt_file():
    kw = dict(options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32)
    first = profile_model("tiny", **kw)
    files = list(profiles_dir().glob("tiny-hessian-*.json"))
    assert files
    again = profile_model("tiny", **kw)
    assert again == first and again.seconds == pytest.approx(first.seconds, abs=1e-3)
    other = profile_model("tiny", **{**kw, "nsamples": 3})
    assert other.calib.nsamples == 3 and other.key != first.key
    # the file of this very profile (other tests leave other nsamples=2 profiles beside it)
    target = profiles_dir() / f"tiny-hessian-{first.key}.json"
    assert target.exists()
    target.write_text(target.read_text()[:200])  # truncated by a crash
    healed = profile_model("tiny", **kw)
    assert healed.rows == first.rows
    assert json.loads(target.read_text())["format"] == "mixviz.profile"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"options": "MXFP4,FP5"}, "unknown option 'FP5'"),
        ({"options": "W4A16,MXFP8"}, "W4A16 \\(group 128\\) is unavailable for 24 of 28 layers"),
        ({"metric": "entropy"}, "unknown metric 'entropy'"),
        ({"nsamples": 999, "seqlen": 2048}, "but 999 are needed"),
        ({"layers": "no_such_layer"}, "matches no candidate layer"),
    ],
)
def test_bad_input_is_clear(kwargs, message):
    with pytest.raises(MixvizError, match=message):
        profile_model(
            "tiny",
            **{"options": "MXFP4,MXFP8", "nsamples": 2, "seqlen": 32, "use_cache": False, **kwargs},
        )


def test_allow_partial_marks_unavailable_rows():
    p = profile_model(
        "tiny",
        options="W4A16,W8A16G64",
        metric="hessian",
        nsamples=2,
        seqlen=32,
        allow_partial=True,
        use_cache=False,
    )
    assert p.score("model.layers.0.self_attn.q_proj", "W4A16") is None
    assert p.score("model.layers.0.mlp.down_proj", "W4A16") > 0


def test_progress_and_cancel():
    seen = []
    profile_model(
        "tiny",
        options="MXFP4",
        metric="hessian",
        nsamples=2,
        seqlen=32,
        use_cache=False,
        progress=lambda d, t, m: seen.append((d, t, m)),
    )
    # hessian takes one step per block; tiny has 4 blocks
    assert seen == [
        (0, 4, "hessian on tiny: 2×32 tokens"),
        (1, 4, "hessian block 0"),
        (2, 4, "hessian block 1"),
        (3, 4, "hessian block 2"),
        (4, 4, "hessian block 3"),
    ]
    with pytest.raises(MixvizError, match="cancelled"):
        profile_model(
            "tiny",
            options="MXFP4",
            metric="hessian",
            nsamples=2,
            seqlen=32,
            use_cache=False,
            cancel=lambda: True,
        )


def test_kl_on_a_subset_of_layers():
    p = profile_model(
        "tiny",
        options="MXFP4",
        metric="kl",
        nsamples=2,
        seqlen=32,
        layers=r"layers\.1\.",
        use_cache=False,
    )
    assert {x.block for x in p.layers} == {1} and len(p.rows) == 7
    assert p.subset == r"layers\.1\."


def test_delta_loss_agrees_with_autoscheme(tmp_path, tiny_ref):
    """AutoScheme on tiny with the same 8 samples: Spearman ≥ 0.95 per option."""
    from mixviz.models.loading import load_model
    from mixviz.models.text import calibration_text, token_windows
    from mixviz.sensitivity.autoscheme import import_autoscheme, run_autoscheme

    model, tok = load_model(tiny_ref)
    windows = token_windows(tok, calibration_text(), 8, 80)
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": tok.decode(w)}) + "\n" for w in windows))
    run_autoscheme(model, tok, ["MXFP4", "MXFP8"], str(calib), 8, 64, tmp_path / "as")
    theirs = import_autoscheme(tmp_path / "as", "tiny")
    ours = profile_model(
        "tiny",
        options="MXFP4,MXFP8",
        metric="delta_loss",
        nsamples=8,
        seqlen=64,
        calib=str(calib),
        use_cache=False,
    )
    assert {x.name for x in theirs.layers} == {x.name for x in ours.layers}
    for option in ("MXFP4", "MXFP8"):
        a = [theirs.score(x.name, option) for x in ours.layers]
        b = [ours.score(x.name, option) for x in ours.layers]
        rho = _spearman(a, b)
        assert rho >= 0.95, (option, rho)


def test_cli_profile_json(tmp_path):
    out = tmp_path / "p.json"
    r = run_cli(
        "profile",
        "tiny",
        "--options",
        "MXFP4,MXFP8",
        "--metric",
        "hessian",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--json",
        "--out",
        str(out),
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["metric"] == "hessian" and len(doc["rows"]) == 56
    assert json.loads(out.read_text()) == doc
    # a progress bar on stderr: hessian's 4 steps (one per block of tiny), by block, to 100 %
    bar = r.stderr.replace("\r", "\n")
    assert "hessian on tiny: 2×32 tokens:   0%" in bar and "0/4" in bar
    for step, pct in enumerate((25, 50, 75, 100), 1):
        assert f"hessian block {step - 1}: {pct:3d}%" in bar, (step, bar)
        assert f"| {step}/4 [" in bar
    bad = run_cli("profile", "tiny", "--options", "W4A16")
    assert bad.returncode == 2 and "unavailable" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_demo_profile():
    p = profile_model("demo", options="MXFP4,MXFP8", metric="hessian", nsamples=4, seqlen=128)
    assert len(p.layers) == 210
    worse = sum(p.score(x.name, "MXFP4") > p.score(x.name, "MXFP8") for x in p.layers)
    assert worse == 210
