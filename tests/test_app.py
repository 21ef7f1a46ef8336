"""AppTest: the app opens on a model and shows its inventory; bad input is an st.error."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def _app(model: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["model"] = model
    return at.run()


def test_model_page_shows_tiny_inventory():
    at = _app("tiny")
    assert not at.exception
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Linear layers in blocks"] == "28"
    assert metrics["Blocks"] == "4"
    schemes = at.dataframe[0].value
    assert set(schemes["scheme"]) >= {"MXFP4", "MXFP8", "NVFP4", "W4A16G64", "BF16"}
    layers = at.dataframe[1].value
    assert len(layers) == 29 and layers.iloc[-1]["name"] == "lm_head"


def test_unknown_model_is_an_error_not_a_traceback():
    at = _app("no-such-model-xyz")
    assert not at.exception
    assert len(at.error) == 1 and "unknown model 'no-such-model-xyz'" in at.error[0].value
