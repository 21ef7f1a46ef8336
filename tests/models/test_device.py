"""Device and dtype resolution: one place decides where a model runs, and nothing else names a
device."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mixviz.errors import MixvizError
from mixviz.models.device import (
    check_device,
    check_dtype,
    describe,
    placement,
    resolve_device,
    resolve_dtype,
)

PKG = Path(__file__).resolve().parents[2] / "mixviz"
DEVICE_MODULE = PKG / "models" / "device.py"
# a device named in a string: "cpu", 'cpu', "cuda", "cuda:0" (device_map="cpu" included)
NAMED_DEVICE = re.compile(r"""(["'])(cpu|cuda(:\d+)?)\1""")


def test_no_module_outside_device_resolution_names_a_device():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == DEVICE_MODULE or "__pycache__" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if NAMED_DEVICE.search(line):
                found.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not found, "devices named outside mixviz/models/device.py:\n" + "\n".join(found)


def test_the_scan_would_catch_one():
    assert NAMED_DEVICE.search('AutoRound(m, device_map="cpu")')
    assert NAMED_DEVICE.search("x.to('cuda:1')")
    assert not NAMED_DEVICE.search("dev.type == CPU  # cpu in a comment is fine")


def test_auto_is_cpu_float32_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement() == (torch.device("cpu"), torch.float32)
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert describe(*placement("cpu", "bfloat16")) == ("cpu", "bfloat16")


def test_auto_is_first_cuda_in_bfloat16_where_one_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert placement() == (torch.device("cuda", 0), torch.bfloat16)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("float16", "cuda") == torch.float16
    assert describe(*placement("cuda:1", "float32")) == ("cuda", "float32")
    with pytest.raises(MixvizError, match="does not exist: this machine has 2"):
        resolve_device("cuda:2")


def test_bad_values_are_user_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for bad in ("gpu", "cuda:x", "mps", ""):
        with pytest.raises(MixvizError, match="unknown device"):
            check_device(bad)
    with pytest.raises(MixvizError, match="unknown dtype"):
        check_dtype("int8")
    with pytest.raises(MixvizError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(MixvizError, match="float16"):
        resolve_dtype("float16", "cpu")


def test_profile_run_and_reproduce_take_device_and_dtype():
    from mixviz.cli import build_parser
    from mixviz.cli.common import device_kwargs

    parser = build_parser()
    for argv in (
        ["profile", "tiny"],
        ["run", "tiny", "--bf16", "--tasks", "t"],
        ["reproduce", "tiny"],
    ):
        args = parser.parse_args([*argv, "--device", "cpu", "--dtype", "bf16"])
        assert device_kwargs(args) == {"device": "cpu", "dtype": "bfloat16"}
        assert device_kwargs(parser.parse_args(argv)) == {"device": "auto", "dtype": "auto"}


def test_a_profile_records_where_it_ran_and_keys_on_it(tmp_path, monkeypatch):
    from mixviz.sensitivity.profile import Profile, profile_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kw = dict(options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32)
    p32 = profile_model("tiny", **kw)
    p16 = profile_model("tiny", **kw, device="cpu", dtype="bfloat16")
    assert (p32.device, p32.dtype, p16.dtype) == ("cpu", "float32", "bfloat16")
    assert p32.key != p16.key
    assert Profile.from_dict(p16.to_dict()) == p16
    old = {k: v for k, v in p32.to_dict().items() if k not in ("device", "dtype")}
    assert Profile.from_dict(old).dtype == "float32"  # written before it was recorded


@pytest.mark.slow
def test_demo_profiles_in_bfloat16_and_float32_agree():
    """The done-when of issue 15: the demo model's fisher profile in bf16 ranks layers as fp32."""
    from scipy.stats import spearmanr

    from mixviz.sensitivity.profile import profile_model

    kw = dict(options="MXFP4,MXFP8", nsamples=4, seqlen=128, device="cpu", use_cache=False)
    p32 = profile_model("demo", **kw, dtype="float32")
    p16 = profile_model("demo", **kw, dtype="bfloat16")
    keys = [(r.layer, r.option) for r in p32.rows]
    rho = spearmanr([p32.score(*k) for k in keys], [p16.score(*k) for k in keys]).statistic
    print(f"demo fisher bf16 vs fp32: Spearman ρ = {rho:.4f}")
    assert rho >= 0.98, rho
