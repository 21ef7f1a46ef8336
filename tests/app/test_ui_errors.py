"""Bad input through the app and the CLI: a specific st.error / one stderr line, never a
traceback; a model with no block linears; trust_remote_code off unless ticked, and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest import open_app
from cli import run_cli

from mixviz.runs.runspec import RunSpec

TINY = {"model": "tiny", "options": "MXFP4,MXFP8", "metric": "hessian", "noscale": "1"}


_page = open_app


@pytest.fixture(scope="module")
def convless(tmp_path_factory) -> Path:
    """A GPT-2 folder: its blocks use Conv1D, so there is no nn.Linear for mixviz to quantize."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2-conv1d")
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


def test_model_without_block_linears_is_named(convless):
    r = run_cli("info", convless)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "has no linear layers inside transformer blocks" in r.stderr
    at = _page(None, model=str(convless))
    assert not at.exception
    assert any("has no linear layers inside transformer blocks" in e.value for e in at.error)


@pytest.mark.parametrize(
    "model, message",
    [
        ("./no/such/folder", "no folder at"),
        (str(Path(__file__).parent), "has no config.json"),  # a folder, not a model
        ("nobody-xyz/not-a-model", "not in the local hub cache"),
    ],
)
def test_bad_model_names_are_one_clear_error(model, message):
    at = _page("app_pages/profile.py", model=model)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value.lower()
    r = run_cli("info", model)
    assert r.returncode == 2 and message in r.stderr.lower() and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "bits, message, used",
    [
        ("abc", "Average bits 'abc' (from the URL) is not a number; using 5.", 5.0),
        ("nan", "Average bits 'nan' (from the URL) is not a number; using 5.", 5.0),
        # tiny with MXFP4/MXFP8 and no scale bits reaches 4 to 8 bits: the nearest end is used
        ("-1", "Average bits -1 is outside the feasible range 4.00–8.00; using the nearest", 4.0),
        ("99", "Average bits 99 is outside the feasible range 4.00–8.00; using the nearest", 8.0),
    ],
)
def test_bad_budget_in_the_url_is_an_error_not_a_crash(bits, message, used, tmp_path):
    from mixviz.sensitivity.profile import profile_model

    profile_model("tiny", options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32)
    at = _page("app_pages/allocate.py", **TINY, nsamples="2", seqlen="32", bits=bits)
    assert not at.exception
    assert any(e.value.startswith(message) for e in at.error), [e.value for e in at.error]
    # the page goes on at the budget the message promises: the slider, the URL, the allocation
    assert at.slider(key="allocate_avg_bits").value == used
    assert at.query_params["bits"] == f"{used:g}"
    alloc = at.session_state["allocation"]
    assert alloc["budget_avg_bits"] == used
    if used == 4.0:  # the lowest end: every layer at MXFP4
        assert set(alloc["layers"].values()) == {"MXFP4"} and alloc["avg_bits_no_scale"] == 4.0
    elif used == 8.0:  # the highest end: every layer at MXFP8
        assert set(alloc["layers"].values()) == {"MXFP8"} and alloc["avg_bits_no_scale"] == 8.0
    else:  # the optimum at 5 bits: less than one layer's step up (at most 4 · 8192 bits) below
        assert used - 4 * 8192 / 147456 < alloc["avg_bits_no_scale"] <= used


@pytest.mark.parametrize("bits", ["abc", "nan", "inf", ""])
def test_bad_budget_in_the_url_on_the_runs_page(bits):
    at = _page("app_pages/runs.py", **TINY, nsamples="2", seqlen="32", bits=bits)
    assert not at.exception
    assert any("average bits" in e.value.lower() for e in at.error), [e.value for e in at.error]
    assert "at 5 bits" in at.button(key="runs_start").label  # the page still works


@pytest.mark.parametrize(
    "params", [{"nsamples": "x"}, {"seqlen": "0"}, {"nsamples": "1e9"}, {"seqlen": "nan"}]
)
def test_bad_calibration_size_in_the_url_is_an_error_not_a_crash(params):
    at = _page(None, **{**TINY, "nsamples": "2", "seqlen": "32", **params})
    assert not at.exception
    assert any("from the url" in e.value.lower() for e in at.error), [e.value for e in at.error]
    assert 1 <= at.number_input(key="sb_nsamples").value <= 512
    assert 16 <= at.number_input(key="sb_seqlen").value <= 4096


def test_empty_calibration_text_in_the_app():
    import ui

    empty = ui.save_upload(b"  \n", "empty.txt")  # the URL only names uploads
    at = _page("app_pages/profile.py", **TINY, nsamples="2", seqlen="32", calib=empty)
    if not at.error:  # the text is read when the profile's cache key is made, or on the button
        at.button(key="profile_start").click().run()
    assert not at.exception
    assert any("holds no text" in e.value for e in at.error), [e.value for e in at.error]


def test_unknown_option_in_the_url_is_dropped_and_cli_names_it():
    at = _page("app_pages/profile.py", **{**TINY, "options": "MXFP4,FP3"})
    assert not at.exception
    assert at.multiselect(key="sb_options").value == ["MXFP4"]
    r = run_cli("profile", "tiny", "--options", "MXFP4,FP3")
    assert r.returncode == 2 and "FP3" in r.stderr and "Traceback" not in r.stderr


def test_trust_remote_code_is_off_unless_ticked_and_recorded():
    at = _page(None, model="tiny")
    assert at.checkbox(key="sb_trust:tiny").value is False
    assert "trust_remote_code" not in at.query_params  # never in a link (test_security.py)
    base = {"model": "tiny", "tasks": ("mixviz_lastword",), "recipe": None, "strategy": "bf16"}
    off, on = RunSpec(**base), RunSpec(**base, trust_remote_code=True)
    assert off.trust_remote_code is False
    assert on.to_dict()["trust_remote_code"] is True
    assert RunSpec.from_dict(on.to_dict()) == on and on.key != off.key


def test_locks_that_break_a_shared_group_offer_the_way_back():
    from mixviz.sensitivity.profile import profile_model

    profile_model("tiny", options="MXFP4,MXFP8", metric="hessian", nsamples=2, seqlen=32)
    at = _page("app_pages/allocate.py", **TINY, nsamples="2", seqlen="32", bits="6")
    at.multiselect(key="edit_blocks").set_value([0]).run()
    at.selectbox(key="edit_option").set_value("MXFP8").run()
    at.button(key="edit_set").click().run()
    at.multiselect(key="edit_blocks").set_value([]).run()
    at.multiselect(key="edit_kinds").set_value(["k"]).run()
    at.selectbox(key="edit_option").set_value("MXFP4").run()
    at.button(key="edit_set").click().run()
    assert not at.exception and not at.error
    # q/k/v must now share one format, but block 0 has q locked MXFP8 and k locked MXFP4
    at.multiselect(key="sb_shared").set_value(["qkv"]).run()
    assert not at.exception
    assert any("conflicting pins inside the shared group" in e.value for e in at.error)
    at.button(key="edit_undo_broken").click().run()
    assert not at.exception and not at.error
    assert at.session_state["allocate_pins"] == {
        f"model.layers.0.{m}": "MXFP8"
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    }
