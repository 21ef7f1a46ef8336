"""No raw ``None`` / ``nan`` on any page: a value that is missing shows a dash and says why
(the strategy table's row for a baseline that cannot reach the budget, lm_head's block, the
Locks table's free layers)."""

from __future__ import annotations

import pytest
from apptest import TINY, open_app, profiled_tiny
from screen import raw_values, table_cells


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """tiny profiled through the Profile page, in this module's own cache folder."""
    yield from profiled_tiny(tmp_path_factory)


@pytest.mark.parametrize("page", ["model", "profile", "allocate", "runs", "results"])
def test_no_page_shows_a_raw_none_or_nan(profiled, page):
    at = open_app(f"app_pages/{page}.py", **{**TINY, "bits": "4.3"})
    assert not at.exception
    assert raw_values(at) == []


def test_a_baseline_that_cannot_reach_the_budget_shows_a_dash_and_why(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "4.3"})  # llamacpp needs ~4.56
    (summary,) = [d for d in at.dataframe if "why not" in d.value.columns]
    cells = table_cells(summary)
    row = cells.index("llamacpp")
    shown = cells[row : row + 5]
    assert shown[1:4] == ["—", "—", "—"]
    assert "needs" in shown[4] and "average bits, above this budget" in shown[4]
    numbers = summary.value.set_index("strategy")
    assert numbers.loc["optimal", "avg bits"] <= 4.3 + 1e-9  # the numbers stay numbers


def test_free_layers_in_the_locks_table_say_so(profiled):
    at = open_app("app_pages/allocate.py", **{**TINY, "bits": "6"})
    (locks,) = [d for d in at.dataframe if "lock" in d.value.columns]
    assert set(locks.value["lock"]) == {"— (free)"}
