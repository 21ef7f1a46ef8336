"""Exports that run as written: the auto-round CLI line and snippet load a real model path (not
the mixviz name ``demo``), the snippet defines what it uses, and no file carries this machine's
cache path (a model mixviz builds is found through mixviz, on whatever machine runs it)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from stubs import run_with_stubs

from mixviz.paths import models_dir
from mixviz.report.export import export
from mixviz.report.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
LAYERS = {"model.layers.0.mlp.up_proj": "W4A16G32", "model.layers.0.mlp.down_proj": "MXFP8"}


def _loads(calls, what: str) -> list[str]:
    return [args[0] for w, args, _ in calls if w == what]


def test_autoround_snippet_is_complete_and_loads_the_model_folder(monkeypatch, tiny_ref):
    doc = json.loads(export(Recipe("tiny", "", LAYERS), "autoround"))
    ns, calls = run_with_stubs(doc["python"], monkeypatch)  # a NameError if incomplete
    assert _loads(calls, "model") == _loads(calls, "tokenizer") == [tiny_ref.path]
    (ar,) = [(args, kw) for w, args, kw in calls if w == "AutoRound"]
    assert [a.what for a in ar[0]] == ["model", "tokenizer"]
    assert ar[1]["layer_config"] == LAYERS and ar[1]["enable_torch_compile"] is False
    assert ns["model"] == "quantized-model"


def test_autoround_cli_line_names_the_model_path(tmp_path, tiny_ref):
    """Run the line in bash with ``auto-round`` a function printing its arguments and the
    ``mixviz`` command on PATH (as ``pip install -r requirements.txt`` puts it)."""
    cli = json.loads(export(Recipe("tiny", "", LAYERS), "autoround"))["cli"]
    assert "tiny" not in shlex.split(cli)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mixviz").write_text(f'#!/bin/sh\nexec {sys.executable} -m mixviz "$@"\n')
    (bin_dir / "mixviz").chmod(0o755)
    dump = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    script = f'auto-round() {{ {dump} "$@"; }}\n{cli}\n'
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    args = json.loads(out.stdout.strip().splitlines()[-1])
    opts = dict(zip(args[::2], args[1::2], strict=True))
    assert opts["--model"] == tiny_ref.path and Path(opts["--model"]).is_dir()
    assert json.loads(opts["--layer_config"]) == LAYERS


def test_no_export_carries_this_machines_cache_path():
    recipe = Recipe("demo", "", LAYERS)
    for name in ("autoround", "autoround-script"):
        text = export(recipe, name)
        assert str(models_dir()) not in text and "mixviz.resolve_model('demo').path" in text


def test_the_script_runs_as_written_and_takes_another_model(monkeypatch, tiny_ref):
    script = export(Recipe("tiny", "", LAYERS), "autoround-script")
    ns, calls = run_with_stubs(script, monkeypatch)
    assert ns["MODEL"] == tiny_ref.path and _loads(calls, "model") == [tiny_ref.path]
    assert [a for w, a, _ in calls if w == "quantize_and_save"] == [("./quantized",)]
    ns, calls = run_with_stubs(script, monkeypatch, ["script.py", "/models/other"])
    assert _loads(calls, "tokenizer") == ["/models/other"]
