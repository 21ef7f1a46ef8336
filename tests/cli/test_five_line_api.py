"""The front door: the five-line main job of README's Python section, and what it rests on."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _readme_python() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_readme_five_lines_run_as_a_doctest():
    block = _readme_python()
    assert block.count(">>> ") == 5
    test = doctest.DocTestParser().get_doctest(block, {}, "README", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries == 5


def test_the_same_five_lines_on_tiny():
    import mixviz

    profile = mixviz.profile("tiny", options="MXFP4,MXFP8", metric="hessian", nsamples=2,
                             seqlen=32)  # fmt: skip
    alloc = mixviz.allocate(profile, avg_bits=6)
    recipe = mixviz.Recipe.from_allocation(alloc)
    assert (recipe.model, recipe.model_hash) == (profile.model, profile.model_hash)
    assert recipe.layers == alloc.layers and alloc.avg_bits <= 6
    text = mixviz.export(recipe, "llmcompressor")
    assert text.startswith("quant_stage:")
    assert all(f"# {o}" in text for o in set(alloc.layers.values()) - {"BF16"})
    with pytest.raises(mixviz.MixvizError, match="one budget"):
        mixviz.allocate(profile)
    vllm = mixviz.allocate(profile, avg_bits=6, target="vllm")
    for b in range(4):
        assert len({vllm.layers[f"model.layers.{b}.self_attn.{k}_proj"] for k in "qkv"}) == 1
    uniform = mixviz.Recipe.uniform("tiny", "MXFP4")
    assert set(uniform.layers.values()) == {"MXFP4"} and len(uniform.layers) == 28


def test_import_mixviz_stays_light():
    code = (
        "import sys, mixviz; "
        "heavy = [m for m in ('streamlit', 'mixviz.api', 'mixviz.runs.ship.step', 'auto_round') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr
