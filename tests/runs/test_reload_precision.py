"""The reload check runs in the precision the in-memory measurement used: a float32 run on a
CPU reloads its ``auto_round`` / ``auto_gptq`` checkpoint in float32 (auto-round's pure-torch
backends would cast it to float16: ~50× slower on a CPU)."""

from __future__ import annotations

import json

import pytest
from cli import run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return {"MIXVIZ_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize("fmt", ["auto_round", "auto_gptq"])
def test_a_float32_run_reloads_in_float32(tmp_path, cache, tiny_layers, fmt):
    import torch

    from mixviz.runs.runspec import RunSpec
    from mixviz.runs.ship.reload import TORCH_INT_BACKENDS, reload

    plan = {x.name: ["W4A16G32", "W8A16G32"][i % 2] for i, x in enumerate(tiny_layers)
            if x.block is not None}  # fmt: skip
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"layers": plan}))
    out = tmp_path / "ckpt"
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", fmt, "--out", out,
                "--limit", "2", "--json", env=cache)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = json.loads(r.stdout)["id"]
    log = (tmp_path / "cache" / "runs" / run_id / "log.txt").read_text()
    assert "Forced model to" not in log

    spec = RunSpec.from_dict(json.loads((out.parent / "cache" / "runs" / run_id / "spec.json")
                                        .read_text()))  # fmt: skip
    model = reload(out, spec, plan)
    floats = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    assert floats == {torch.float32}  # embeddings, norms, the recipe's BF16 layers
    mods = dict(model.named_modules())
    first = next(n for n, o in plan.items() if o == "W4A16G32")
    assert hasattr(mods[first], "qweight")  # still the packed layer, run by auto-round
    x = torch.randn(2, mods[first].infeatures)
    assert mods[first](x).dtype == torch.float32
    from auto_round.inference.backend import BackendInfos

    assert all("float32" not in BackendInfos[n].compute_dtype for n in TORCH_INT_BACKENDS)
