"""What a link or a file can make the app do: never run a repository's code, never read a file
the user did not give it, never read an unbounded amount of text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from apptest import open_app

import mixviz
import mixviz.models.loading
import mixviz.models.text
from mixviz import MixvizError
from mixviz.paths import MAX_BYTES, cache_dir

TINY = {"model": "tiny", "options": "MXFP4,MXFP8", "metric": "hessian", "noscale": "1"}
PAGES = [None, "app_pages/profile.py", "app_pages/allocate.py", "app_pages/runs.py"]
EVIL = "evil-org/remote-code-model"


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple[str, bool]]:
    """Every (model, trust_remote_code) the app asks for; the hub config load always fails."""
    from transformers import AutoConfig

    calls: list[tuple[str, bool]] = []
    real = mixviz.models.loading.resolve_model

    def spy(spec, *, trust_remote_code=False, progress=None):
        calls.append((spec, trust_remote_code))
        return real(spec, trust_remote_code=trust_remote_code, progress=progress)

    def fake_config(name, *args, **kwargs):
        calls.append((f"AutoConfig:{name}", bool(kwargs.get("trust_remote_code"))))
        raise OSError("no hub in this test")

    monkeypatch.setattr(mixviz, "resolve_model", spy)
    monkeypatch.setattr(mixviz.models.loading, "resolve_model", spy)
    monkeypatch.setattr(AutoConfig, "from_pretrained", fake_config)
    return calls


def _trust_box(at):
    boxes = [c for c in at.checkbox if c.label.startswith("Trust remote code")]
    assert len(boxes) == 1
    return boxes[0]


def _qp(at, key):
    v = at.query_params.get(key)
    return v[0] if isinstance(v, list) else v


@pytest.mark.parametrize("page", PAGES)
def test_trust_remote_code_in_the_url_is_ignored(page, hub_calls):
    at = open_app(page, **{**TINY, "model": EVIL, "trust_remote_code": "1"})
    assert not at.exception
    assert _trust_box(at).value is False
    assert hub_calls and not [c for c in hub_calls if c[1]], hub_calls
    assert "trust_remote_code" not in at.query_params
    assert not [w for w in at.warning if "Remote code enabled" in w.value]


def test_trust_remote_code_is_per_model_and_shown(hub_calls):
    at = open_app(None, model=EVIL)
    assert _trust_box(at).value is False and not hub_calls[-1][1]
    _trust_box(at).check().run()
    assert not at.exception
    assert (EVIL, True) in hub_calls  # ticked by hand: now asked for, for this model only
    assert any(f"Remote code enabled for {EVIL}" in w.value for w in at.warning)
    assert "trust_remote_code" not in at.query_params  # a shared link never carries it

    hub_calls.clear()
    at.text_input(key="sb_model").set_value("other-org/other-model").run()
    assert not at.exception
    assert _trust_box(at).value is False  # another model: asked again
    assert hub_calls and not [c for c in hub_calls if c[1]], hub_calls
    assert not [w for w in at.warning if "Remote code enabled" in w.value]

    at.text_input(key="sb_model").set_value(EVIL).run()  # and back: not silently restored
    assert _trust_box(at).value is False


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every user text file the library is asked to read."""
    calls: list[str] = []
    real = mixviz.models.text.load_user_text

    def spy(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(mixviz.models.text, "load_user_text", spy)
    return calls


def _outside_files(tmp_path) -> list[str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("a private note " * 200)
    beside = cache_dir() / "beside-uploads.txt"  # in the cache, but not an upload
    beside.parent.mkdir(parents=True, exist_ok=True)
    beside.write_text("not an upload " * 200)
    return [
        "/etc/passwd",
        str(secret),
        str(cache_dir() / "uploads" / ".." / beside.name),  # climbs out of the uploads folder
        str(cache_dir() / "uploads" / "0123456789abcdef.txt"),  # an upload that isn't there
    ]


@pytest.mark.parametrize("which", range(4))
def test_calib_in_the_url_reads_only_uploads(which, tmp_path, reads):
    path = _outside_files(tmp_path)[which]
    at = open_app("app_pages/profile.py", **TINY, nsamples="2", seqlen="32", calib=path)
    assert not at.exception
    assert reads == [], reads  # the file was never opened
    assert any("calibration" in w.value.lower() for w in at.warning), [w.value for w in at.warning]
    assert _qp(at, "calib") == "pydoc"
    assert any("pydoc (bundled)" in c.value for c in at.caption)


def test_calib_in_the_url_keeps_an_upload(reads):
    import ui

    path = ui.save_upload(("some uploaded calibration text. " * 100).encode(), "mine.txt")
    assert Path(path).parent == cache_dir() / "uploads"
    at = open_app("app_pages/profile.py", **TINY, nsamples="2", seqlen="32", calib=path)
    assert not at.exception and not at.warning
    assert _qp(at, "calib") == path
    assert path in reads


def test_an_upload_over_the_cap_is_refused():
    import ui

    with pytest.raises(MixvizError, match="20 MB"):
        ui.save_upload(b"x" * (MAX_BYTES + 1), "big.txt")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_over_the_cap_is_a_clear_error(suffix, tmp_path):
    big = tmp_path / f"big{suffix}"
    with open(big, "wb") as f:  # sparse: costs no disk
        f.truncate(MAX_BYTES + 1)
    with pytest.raises(MixvizError, match=r"big\S* is larger than the 20 MB limit"):
        mixviz.models.text.load_user_text(big)
    with pytest.raises(MixvizError, match="20 MB"):
        mixviz.calibration_text(str(big))


def test_text_at_the_cap_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(mixviz.models.text, "MAX_BYTES", 64)
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"text": "x" * 40}) + "\n")
    assert os.path.getsize(ok) <= 64
    assert mixviz.models.text.load_user_text(ok).records == ("x" * 40,)
    ok.write_text(json.dumps({"text": "x" * 80}) + "\n")
    with pytest.raises(MixvizError, match="limit"):
        mixviz.models.text.load_user_text(ok)
