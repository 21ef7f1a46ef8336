"""The app's chrome: a local tool's header (no Deploy button) and labels a screen reader, or a
test finding fields by label, can tell apart."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from apptest import open_app

REPO = Path(__file__).resolve().parents[2]
PAGES = ["model", "profile", "allocate", "runs", "results"]
INPUTS = ("text_input", "number_input", "text_area", "selectbox", "multiselect", "slider")
INPUTS += ("select_slider", "checkbox", "toggle", "radio", "date_input", "color_picker")


def test_no_deploy_button():
    """``viewer`` hides Deploy, rerun and clear-cache; streamlit knows the value."""
    from streamlit import config

    mode = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["client"]
    assert mode["toolbarMode"] in ("viewer", "minimal")
    assert (
        f'"{mode["toolbarMode"]}"'
        in config._config_options_template["client.toolbarMode"].description
    )


@pytest.mark.parametrize("page", PAGES)
def test_input_labels_are_unique_and_not_the_page_title(page):
    at = open_app(f"app_pages/{page}.py", model="tiny")
    assert not at.exception
    labels = [w.label for kind in INPUTS for w in getattr(at, kind)]
    assert labels and len(labels) == len(set(labels)), sorted(labels)
    titles = {t.value for t in at.title}
    assert titles and not titles & set(labels)
