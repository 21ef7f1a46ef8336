"""Chart titles say what each number rests on per run: a mean over two tasks of one item each
said "(2 items)", the per-task chart too, and the KLD chart counted those items, not tokens."""

from __future__ import annotations

import pandas as pd

import ui

TASKS = ["mixviz_lastword", "mixviz_nextsent"]


def _frame(items_a, items_b, tokens):
    return pd.DataFrame(
        {
            "id": ["r1", "r2"],
            "mixviz_lastword:items": items_a,
            "mixviz_nextsent:items": items_b,
            "tokens": tokens,
        }
    )


def test_items_per_run_and_per_task():
    frame = _frame([1, 1], [1, 1], [511.0, 511.0])
    assert ui.items_per_task(None, frame, TASKS) == " (2 items: 1 per task × 2 tasks)"
    assert ui.items_per_task(None, frame, TASKS[:1]) == " (1 item)"
    uneven = _frame([1, 50], [1, 50], [511.0, 1022.0])
    assert ui.items_per_task(None, uneven, TASKS) == " (2–100 items: 1–50 per task × 2 tasks)"


def test_kld_rests_on_tokens_and_says_when_runs_differ():
    assert ui.windows_note(_frame([1, 1], [1, 1], [511.0, 1022.0])) == " (511–1022 tokens)"
    assert ui.windows_note(_frame([1, 1], [1, 1], [None, None])) == ""


def test_runs_without_counts_fall_back_to_the_limit():
    class Store:
        def get(self, run_id):
            return type("Row", (), {"spec": {"limit": 5}})()

    frame = pd.DataFrame({"id": ["r1"]})
    assert ui.items_per_task(Store(), frame, TASKS) == " (up to 5 items per task)"
