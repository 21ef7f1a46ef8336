"""A reused quantize job still delivers: whenever ``mixviz quantize`` exits 0, ``--out`` holds
a verified checkpoint — written by its run, copied from the identical finished run's files
(checked against the sizes and sha256 taken at verify time), or quantized again when those
files are gone or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli import run_cli

from mixviz.runs.ship.staging import changed


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MIXVIZ_MAX_PARALLEL", raising=False)
    return {"MIXVIZ_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def recipe(tmp_path, tiny_layers) -> Path:
    plan = {x.name: ["W4A16G32", "W8A16G32"][i % 2] for i, x in enumerate(tiny_layers)
            if x.block is not None}  # fmt: skip
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"layers": plan}))
    return path


def _quantize(recipe: Path, out: Path, cache: dict):
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", "auto_round", "--out", out,
                "--limit", "2", "--json", env=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout), r.stderr


def _verified(doc: dict, out: Path) -> None:
    """``out`` holds exactly the files the run verified, byte for byte."""
    from mixviz.runs.ship.delivery import ship_record

    files = ship_record(doc["id"])["files"]
    assert {"config.json", "model.safetensors", "mixviz-recipe.json", "README.md"} <= set(files)
    assert changed(out, files) is None
    assert doc["ship"]["out"] == str(out) and doc["ship"]["ok"]


def _runs(cache: dict) -> dict:
    r = run_cli("runs", "--json", env=cache)
    assert r.returncode == 0, r.stderr
    return {x["id"]: x for x in json.loads(r.stdout)["runs"]}


def test_the_same_quantize_after_its_folder_was_deleted_quantizes_again(tmp_path, cache, recipe):
    out = tmp_path / "ckpt"
    first, _ = _quantize(recipe, out, cache)
    assert first["delivered"]["how"] == "written"
    _verified(first, out)
    shutil.rmtree(out)
    runs = _runs(cache)
    assert runs[first["id"]]["checkpoint"]["state"] == "missing"
    text = run_cli("runs", env=cache).stdout
    assert f"{first['id']}" in text and "files missing" in text

    again, err = _quantize(recipe, out, cache)
    assert f"files of run {first['id']} are gone: quantizing again" in err
    assert again["id"] != first["id"] and again["delivered"]["how"] == "written"
    _verified(again, out)
    runs = _runs(cache)
    assert runs[again["id"]]["checkpoint"] == {"state": "intact", "where": str(out), "why": ""}


def test_the_same_recipe_to_two_folders_is_one_run_and_two_checkpoints(tmp_path, cache, recipe):
    a, b = tmp_path / "a", tmp_path / "b"
    first, _ = _quantize(recipe, a, cache)
    second, err = _quantize(recipe, b, cache)
    assert second["id"] == first["id"]  # one run, reused
    assert f"reused run {first['id']}, copied to {b}" in err
    assert second["delivered"] == {"how": "copied", "source": str(a)}
    _verified(second, b)
    _verified(first, a)
    # the record keeps both folders: with a gone, b still serves a third one
    shutil.rmtree(a)
    third, err = _quantize(recipe, tmp_path / "c", cache)
    assert third["id"] == first["id"] and third["delivered"]["source"] == str(b)
    _verified(third, tmp_path / "c")
    assert len(_runs(cache)) == 1


def test_a_tampered_checkpoint_is_quantized_again_not_copied(tmp_path, cache, recipe):
    a, b = tmp_path / "a", tmp_path / "b"
    first, _ = _quantize(recipe, a, cache)
    weights = a / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size: only the hash can tell
    weights.write_bytes(bytes(data))
    again, err = _quantize(recipe, b, cache)
    assert f"files of run {first['id']} changed since they were verified" in err
    assert "model.safetensors" in err and "quantizing again" in err
    assert again["id"] != first["id"] and again["delivered"]["how"] == "written"
    _verified(again, b)
    assert weights.read_bytes() == bytes(data)  # the user's folder is left as it is
    # the tampered folder itself is refused, never written over
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", "auto_round", "--out", a,
                "--limit", "2", env=cache)  # fmt: skip
    assert r.returncode == 2 and "holds files that are not run" in r.stderr, r.stderr[-800:]
    assert weights.read_bytes() == bytes(data)
