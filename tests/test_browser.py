"""The main flow in a real browser on tiny: profile, move the slider, run, see the result."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, browser_page, streamlit_server, wait_idle
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from mixviz.runs.store import FINAL, Store

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"
QUERY = "model=tiny&options=MXFP4,MXFP8&metric=hessian&nsamples=2&seqlen=32&noscale=1"

GD = "document.querySelector('.st-key-allocate_heatmap .js-plotly-plot')"
# Page coordinates of the centre of a heatmap cell (module kind, block).
CELL = f"""([kind, block]) => {{
    const gd = {GD}, xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    const r = gd.getBoundingClientRect();
    return [r.left + xa._offset + xa.d2p(kind), r.top + ya._offset + ya.d2p(block)];
}}"""
LOCKED_CELLS = f"""() => {{
    const t = ({GD}?.data || []).find(t => t.name === 'locked');
    return t ? [t.x, t.y] : [[], []];
}}"""
LOCKED = f"(n) => ({LOCKED_CELLS})()[0].length === n"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def test_profile_slider_run_results(tmp_path):
    SHOTS.mkdir(exist_ok=True)
    with streamlit_server() as url, browser_page() as page:
        page.goto(f"{url}/?{QUERY}")
        page.get_by_text("Linear layers in blocks").wait_for(timeout=120_000)
        page.screenshot(path=SHOTS / "model.png", full_page=True)

        page.goto(f"{url}/profile?{QUERY}")
        page.get_by_role("button", name=re.compile("[Pp]rofile tiny")).click()
        page.get_by_text("hessian sensitivity — MXFP4").first.wait_for(timeout=180_000)
        wait_idle(page)
        page.screenshot(path=SHOTS / "profile.png", full_page=True)

        page.goto(f"{url}/allocate?{QUERY}&bits=5")
        metric = page.locator('[data-testid="stMetricValue"]').nth(1)
        metric.wait_for(timeout=120_000)
        wait_idle(page)
        before = metric.inner_text()
        slider = page.get_by_role("slider")
        slider.focus()
        for _ in range(50):
            page.keyboard.press("ArrowRight")
        wait_idle(page)
        page.wait_for_function(
            "(b) => document.querySelectorAll('[data-testid=\"stMetricValue\"]')[1]"
            ".innerText !== b",
            arg=before,
            timeout=60_000,
        )
        after = metric.inner_text()
        assert float(after) > float(before)
        assert float(after) <= 5.5 + 1e-9
        page.screenshot(path=SHOTS / "allocate.png", full_page=True)

        # the grid (default): click block 1's row marker, lock the row as it is, undo
        heat = page.locator(".st-key-allocate_heatmap")
        heat.scroll_into_view_if_needed()
        box = heat.locator("[data-testid=stDataFrame]").bounding_box()
        page.mouse.click(box["x"] + 12, box["y"] + 36 + 24 * 1 + 12)  # 36 px header, 24 px rows
        page.get_by_text("7 selected: model.layers.1.self_attn.q_proj").wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Lock as is").click()
        page.get_by_text(re.compile(r"^7 / \d+$")).wait_for(timeout=60_000)  # locked / moved
        wait_idle(page)
        heat.screenshot(path=SHOTS / "allocate-grid-locked.png")
        page.get_by_role("button", name="Undo").click()
        page.get_by_text(re.compile(r"^0 / 0$")).wait_for(timeout=60_000)
        wait_idle(page)

        # the chart: click a cell, lock it to MXFP8: the lock is drawn; undo takes it away
        page.get_by_text("chart", exact=True).click()
        page.locator(".st-key-allocate_heatmap .js-plotly-plot").wait_for(timeout=60_000)
        wait_idle(page)
        heat.scroll_into_view_if_needed()
        x, y = page.evaluate(CELL, ["down", 2])
        page.mouse.click(x, y)
        page.get_by_text("1 selected: model.layers.2.mlp.down_proj").wait_for(timeout=60_000)
        wait_idle(page)
        combo = page.locator(".st-key-edit_option").get_by_role("combobox")
        choice = page.locator("[role=option]", has_text="MXFP8").first
        for _ in range(5):  # the first click can land while the fragment is redrawn
            combo.click()
            try:
                choice.wait_for(timeout=5_000)
                break
            except PlaywrightTimeout:
                wait_idle(page)
        choice.click()
        page.get_by_role("button", name="Set MXFP8").wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Set MXFP8").click()
        page.wait_for_function(LOCKED, arg=1, timeout=60_000)
        wait_idle(page)
        assert page.evaluate(LOCKED_CELLS) == [["down"], [2]]
        heat.screenshot(path=SHOTS / "allocate-locked.png")
        page.get_by_role("button", name="Undo").click()
        page.wait_for_function(LOCKED, arg=0, timeout=60_000)
        wait_idle(page)

        page.goto(f"{url}/runs?{QUERY}&bits=5.5")
        page.get_by_label("Items per task").fill("2")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name=re.compile("Run the comparison")).click()
        page.get_by_text(re.compile(r"Queued \d runs")).wait_for(timeout=60_000)
        # The queue table is drawn on a canvas: watch the store it shows instead.
        store = Store()
        deadline = time.time() + 900
        while time.time() < deadline:
            runs = [r for r in store.list() if r.label.endswith("@5.5")]
            if len(runs) == 4 and all(r.status in FINAL for r in runs):
                break
            time.sleep(2)
        assert [r.status for r in runs] == ["done"] * 4, [(r.label, r.error) for r in runs]
        wait_idle(page)
        page.screenshot(path=SHOTS / "runs.png", full_page=True)

        page.goto(f"{url}/results?{QUERY}")
        page.get_by_text("Accuracy vs average bits").wait_for(timeout=120_000)
        wait_idle(page)
        # plotly.js is a lazily loaded chunk: the chart appears some time after the run ends.
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert "optimal @5.5" in text and "bf16" in text and "average" in text
        page.screenshot(path=SHOTS / "results.png", full_page=True)
