"""The main flow in a real browser on tiny: profile, move the slider, run, see the result."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, browser_page, streamlit_server, wait_idle
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from mixviz.runs.store import FINAL, Store

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts"
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
# A server log line that is about our code: a deprecation or widget-state warning, a traceback.
OURS = re.compile(r"use_container_width|Session State API|deprecat|Traceback|app_pages/|ui/\w+\.py")


def pick_option(page, option: str) -> None:
    """Choose ``option`` in the edit panel's format box."""
    combo = page.locator(".st-key-edit_option").get_by_role("combobox")
    choice = page.locator("[role=option]", has_text=option).first
    for _ in range(5):  # the first click can land while the fragment is redrawn
        combo.click()
        try:
            choice.wait_for(timeout=5_000)
            break
        except PlaywrightTimeout:
            wait_idle(page)
    choice.click()
    page.get_by_role("button", name=f"Set {option}").wait_for(timeout=60_000)
    wait_idle(page)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def test_profile_slider_run_results(tmp_path):
    SHOTS.mkdir(exist_ok=True)
    log = tmp_path / "server.log"
    # its own cache folder: a profile an earlier test cached would replace the Profile button
    cache = {"MIXVIZ_CACHE": str(tmp_path / "cache")}
    with streamlit_server(env=cache, log=log) as url, browser_page() as page:
        page.goto(f"{url}/?{QUERY}")
        page.get_by_text("Linear layers in blocks").wait_for(timeout=120_000)
        page.screenshot(path=SHOTS / "model.png", full_page=True)

        page.goto(f"{url}/profile?{QUERY}")
        page.get_by_role("button", name=re.compile("[Pp]rofile tiny")).click()
        page.get_by_text("hessian sensitivity — MXFP4").first.wait_for(timeout=180_000)
        wait_idle(page)
        page.screenshot(path=SHOTS / "profile.png", full_page=True)

        page.goto(f"{url}/allocate?{QUERY}&bits=5")
        metric = page.locator('[data-testid="stMetric"]', has_text="Achieved average bits")
        metric = metric.locator('[data-testid="stMetricValue"]')
        metric.wait_for(timeout=120_000)
        wait_idle(page)
        before = metric.inner_text()
        slider = page.get_by_role("slider")
        slider.focus()
        for _ in range(50):
            page.keyboard.press("ArrowRight")
        wait_idle(page)
        deadline = time.time() + 60
        while metric.inner_text() == before and time.time() < deadline:
            page.wait_for_timeout(250)
        after = metric.inner_text()
        assert float(after) > float(before)
        assert float(after) <= 5.5 + 1e-9
        page.screenshot(path=SHOTS / "allocate.png", full_page=True)

        # the grid (default), with its legend: click block 1's and block 2's row markers (the
        # clicks add up), lock the rows as they are, undo: the selection starts afresh
        heat = page.locator(".st-key-allocate_heatmap")
        heat.scroll_into_view_if_needed()
        assert heat.locator(".mixviz-legend").inner_text().split() == ["MXFP4", "MXFP8"]
        box = heat.locator("[data-testid=stDataFrame]").bounding_box()
        page.mouse.click(box["x"] + 12, box["y"] + 36 + 24 * 1 + 12)  # 36 px header, 24 px rows
        page.get_by_text("7 selected: model.layers.1.self_attn.q_proj").wait_for(timeout=60_000)
        wait_idle(page)
        page.mouse.click(box["x"] + 12, box["y"] + 36 + 24 * 2 + 12)
        page.get_by_text(re.compile(r"^14 selected: ")).wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("button", name="Lock as is").click()
        page.get_by_text(re.compile(r"^14 / \d+$")).wait_for(timeout=60_000)  # locked / moved
        wait_idle(page)
        heat.screenshot(path=SHOTS / "allocate-grid-locked.png")
        page.get_by_role("button", name="Undo").click()
        page.get_by_text(re.compile(r"^0 / 0$")).wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"^0 selected")).wait_for(timeout=60_000)
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
        pick_option(page, "MXFP8")
        page.get_by_role("button", name="Set MXFP8").click()
        page.wait_for_function(LOCKED, arg=1, timeout=60_000)
        wait_idle(page)
        assert page.evaluate(LOCKED_CELLS) == [["down"], [2]]
        heat.screenshot(path=SHOTS / "allocate-locked.png")
        page.get_by_role("button", name="Undo").click()
        page.wait_for_function(LOCKED, arg=0, timeout=60_000)
        wait_idle(page)

        # blocks 0–2 at BF16 need 13–14 bits: refused at 5.5, nothing changes, the range is
        # said; raising the budget is a button; undo brings the budget back with the locks
        blocks = page.locator(".st-key-edit_blocks input")
        for block in "012":
            blocks.click()
            blocks.type(block)
            page.keyboard.press("Enter")
            wait_idle(page)
        page.keyboard.press("Escape")
        page.get_by_text(re.compile(r"^21 selected")).wait_for(timeout=60_000)
        pick_option(page, "BF16")
        page.get_by_role("button", name="Set BF16").click()
        page.get_by_text(
            re.compile("needs an average of 13.00–14.00 bits.*Nothing was changed")
        ).wait_for(timeout=60_000)
        assert metric.inner_text() == after and "bits=5.5" in page.url
        page.get_by_role("button", name=re.compile("Raise the budget to 13")).click()
        page.get_by_text(re.compile(r"^21 / \d+$")).wait_for(timeout=60_000)
        wait_idle(page)
        assert "bits=13" in page.url
        page.get_by_role("button", name="Undo").click()
        page.get_by_text(re.compile(r"^0 / 0$")).wait_for(timeout=60_000)
        wait_idle(page)
        assert "bits=5.5" in page.url and metric.inner_text() == after

        page.goto(f"{url}/runs?{QUERY}&bits=5.5")
        page.get_by_label("Items per task", exact=True).fill("2")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name=re.compile("Run the comparison")).click()
        page.get_by_text(re.compile(r"Queued \d runs")).wait_for(timeout=60_000)
        # uniform @5.5 is pure MXFP4 on tiny: one run, named both ways
        assert "1 identical to another in this comparison, run once" in page.inner_text("body")
        # the running run's stage, elapsed time and ETA (the table itself is a canvas)
        page.get_by_text(re.compile(r"\d:\d\d elapsed, ~\d+:\d\d left")).first.wait_for(
            timeout=300_000
        )
        page.screenshot(path=SHOTS / "runs-running.png", full_page=True)
        # The queue table is drawn on a canvas: watch the store it shows instead.
        store = Store(tmp_path / "cache" / "mixviz.db")  # the server's
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
        assert "optimal @5.5" in text and "BF16" in text and "average" in text
        assert "pure MXFP4 = uniform @5.5" in text
        chart = page.locator(".stPlotlyChart").first
        assert "vs average bits" in chart.locator(".gtitle").text_content()  # a title
        assert " items" in chart.locator(".ytitle").text_content()  # metric, item count
        assert chart.locator(".legend .traces").count() >= 3  # a legend: strategies and BF16
        page.screenshot(path=SHOTS / "results.png", full_page=True)
    ours = [line for line in log.read_text().splitlines() if OURS.search(line)]
    assert ours == [], "\n".join(ours[:20])  # no warnings from our code in the server log
