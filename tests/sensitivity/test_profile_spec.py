"""ProfileSpec: checked when made, round-trips, and keys caches exactly as before ``around``."""

from __future__ import annotations

import hashlib
import json

import pytest

from mixviz import MixvizError, cli
from mixviz.sensitivity.profile import Profile, profile_model
from mixviz.sensitivity.spec import Calib, ProfileSpec, library_versions
from mixviz.sensitivity.synthetic import synthetic_profile

CAL = Calib("pydoc", "0123456789abcdef", 16, 256)


def _key_before_around(model_hash, metric, options, calib, subset, lm_head, device, dtype):
    """The cache key as mixviz computed it before ProfileSpec (profile_key of version 1)."""
    doc = {
        "model": model_hash,
        "metric": metric,
        "options": sorted(options),
        "calib": vars(calib),
        "subset": subset,
        "lm_head": lm_head,
        "device": device,
        "dtype": dtype,
        "profile_version": 1,
        "versions": library_versions(),
        "algo": 2,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def test_defaults_are_profile_models():
    spec = ProfileSpec()
    assert spec.options == ("MXFP4", "MXFP8") and spec.metric == "fisher"
    assert (spec.nsamples, spec.seqlen, spec.calib, spec.layers) == (16, 256, "pydoc", None)
    assert (spec.device, spec.dtype, spec.offload, spec.around) == ("auto", "auto", False, None)
    assert ProfileSpec(options=["MXFP8", "mxfp4"], dtype="bf16").dtype == "bfloat16"
    assert hash(spec) == hash(ProfileSpec(options="MXFP8,MXFP4"))  # a usable cache key


def test_key_without_around_is_the_key_before_it():
    spec = ProfileSpec(options="MXFP8,W4A16G32", metric="fisher", layers=r"layers\.1\.")
    where = ("cpu", "float32")
    want = _key_before_around("h", "fisher", spec.options, CAL, r"layers\.1\.", False, *where)
    assert spec.key("h", CAL, where) == want
    around = ProfileSpec(options="MXFP8,W4A16G32", metric="fisher", layers=r"layers\.1\.",
                         around="mxfp4")  # fmt: skip
    assert around.around == "MXFP4" and around.key("h", CAL, where) != want


def test_a_recipe_file_is_keyed_by_its_bytes(tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"a": 1}')
    spec = ProfileSpec(around=str(recipe))
    first = spec.key("h", CAL, ("cpu", "float32"))
    assert spec.around_id().startswith("recipe.json@")
    recipe.write_text('{"a": 2}')
    assert spec.key("h", CAL, ("cpu", "float32")) != first


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"metric": "entropy"}, "unknown metric 'entropy'"),
        ({"options": "MXFP4,FP5"}, "unknown option 'FP5'"),
        ({"backend": "dask"}, "unknown backend 'dask'"),
        ({"backend": "ray"}, "only kl fans out over Ray"),
        ({"metric": "kl", "backend": "ray", "offload": True}, "--offload is for one process"),
        ({"nsamples": 0}, "nsamples must be 1..4096"),
        ({"layers": "("}, "bad --layers regex"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"around": "no/such/recipe.json"}, "neither an option name nor a recipe file"),
    ],
)
def test_bad_spec_is_clear(fields, message):
    with pytest.raises(MixvizError, match=message):
        ProfileSpec(**fields)


def test_round_trip_and_refusals():
    spec = ProfileSpec(options="W4A16G32,MXFP8", metric="kl", layers="mlp", around="MXFP4")
    assert ProfileSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(MixvizError, match="unknown field"):
        ProfileSpec.from_dict({**spec.to_dict(), "nsample": 3})
    with pytest.raises(MixvizError, match="not a mixviz profile spec"):
        ProfileSpec.from_dict({"metric": "kl"})


def test_profile_records_around_and_old_files_load(tmp_path):
    prof = synthetic_profile({"mlp.down_proj": (128, 64)}, 2, ["MXFP4", "MXFP8"])
    doc = prof.to_dict()
    assert doc["around"] is None
    del doc["around"]  # a profile written before it
    assert Profile.from_dict(doc) == prof
    from dataclasses import replace

    low = replace(prof, around="MXFP4")
    assert Profile.from_dict(low.to_dict()).around == "MXFP4" and low.key != prof.key


def test_profile_model_takes_a_spec_or_its_fields(tiny_ref):
    spec = ProfileSpec(options="MXFP4", metric="hessian", nsamples=2, seqlen=32)
    by_spec = profile_model(tiny_ref, spec, use_cache=False)
    by_fields = profile_model(tiny_ref, options="MXFP4", metric="hessian", nsamples=2, seqlen=32,
                              use_cache=False)  # fmt: skip
    assert by_spec.rows == by_fields.rows and by_spec.around is None
    changed = profile_model(tiny_ref, spec, nsamples=3, compute=False)
    assert changed is None or changed.calib.nsamples == 3


def test_around_through_the_library_and_the_cli(tiny_ref, capsys):
    spec = ProfileSpec(options="MXFP8", metric="fisher", nsamples=2, seqlen=32, around="MXFP4")
    assert profile_model(tiny_ref, spec, use_cache=False).around == "MXFP4"
    argv = ["profile", "tiny", "--metric", "hessian", "--options", "MXFP8", "--nsamples", "2"]
    assert cli.main([*argv, "--seqlen", "32", "--no-cache", "--around", "MXFP4"]) == 2
    assert "hessian cannot score around an operating point" in capsys.readouterr().err
    assert cli.main([*argv, "--seqlen", "32", "--around", "no_such.json"]) == 2
    assert "neither an option name nor a recipe file" in capsys.readouterr().err
