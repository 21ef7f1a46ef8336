"""The second newcomer walk (issue 35) in a real browser on tiny: first start, a profile with
its progress, slider steps that add no history entry, Back that walks pages and keeps the
budget, a reload, a shared link with a lock that holds, a bad model name, refine and a
quantize with a limit followed in the one queue — and no raw None/nan on any page."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, browser_page, no_raw, streamlit_server, wait_idle

from mixviz.runs.store import FINAL, Store

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts"
QUERY = "model=tiny&options=MXFP4,MXFP8&metric=hessian&nsamples=2&seqlen=32&noscale=1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    wait_idle(page)


def test_the_walk(tmp_path):
    SHOTS.mkdir(exist_ok=True)
    cache = tmp_path / "cache"
    with streamlit_server(env={"MIXVIZ_CACHE": str(cache)}, log=tmp_path / "log") as url, \
            browser_page() as page:  # fmt: skip
        page.goto(f"{url}/?{QUERY}")  # first start
        page.get_by_text("Linear layers in blocks").wait_for(timeout=120_000)
        no_raw(page)

        page.goto(f"{url}/profile?{QUERY}")
        page.get_by_role("button", name=re.compile("[Pp]rofile tiny")).click()
        page.get_by_text("hessian sensitivity — MXFP4").first.wait_for(timeout=180_000)
        wait_idle(page)
        no_raw(page)

        # the slider: twelve steps replace the history entry; a new page adds one
        page.goto(f"{url}/allocate?{QUERY}&bits=5")
        page.get_by_role("slider").wait_for(timeout=120_000)
        wait_idle(page)
        entries = page.evaluate("history.length")
        page.get_by_role("slider").focus()
        for _ in range(12):
            page.keyboard.press("ArrowRight")
            page.wait_for_timeout(150)
        wait_idle(page)
        page.wait_for_function("() => location.search.includes('bits=5.')", timeout=30_000)
        bits = re.search(r"bits=([0-9.]+)", page.url)[1]
        assert float(bits) > 5 and page.evaluate("history.length") == entries
        no_raw(page)
        nav(page, "Runs")
        page.wait_for_function("() => location.pathname.endsWith('/runs')", timeout=30_000)
        assert page.evaluate("history.length") == entries + 1
        assert f"bits={bits}" in page.url  # the budget goes along
        page.go_back()
        page.wait_for_function("() => location.pathname.endsWith('/allocate')", timeout=30_000)
        wait_idle(page)
        assert f"bits={bits}" in page.url
        page.reload()
        page.get_by_role("slider").wait_for(timeout=120_000)
        wait_idle(page)
        shown = page.locator('[data-testid="stSliderThumbValue"]').first.inner_text()
        assert float(shown) == float(bits)  # the reload kept the budget

        # refine: a queued job, followed on the page, still followed after a reload
        page.get_by_label("Rounds at most", exact=True).fill("1")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Refine", exact=True).click()
        page.get_by_role("button", name="Cancel refine").wait_for(timeout=60_000)  # followed
        # quantize with a limit, its predicted time said
        assert page.get_by_text(re.compile(r"^Predicted time: ")).count() == 1
        page.get_by_label("KLD windows (--limit)", exact=True).fill("2")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Quantize", exact=True).click()
        page.get_by_text(re.compile(r"queued run .*quantize auto_round")).wait_for(timeout=60_000)
        page.reload()
        running = re.compile(r"\d:\d\d elapsed|^Best: round")
        page.get_by_text(running).first.wait_for(timeout=300_000)
        page.screenshot(path=SHOTS / "walk-refine-running.png", full_page=True)
        page.get_by_text(re.compile("^Best: round")).wait_for(timeout=600_000)
        no_raw(page)
        page.screenshot(path=SHOTS / "walk-refine-done.png", full_page=True)

        store = Store(cache / "mixviz.db")
        deadline = time.time() + 600
        while time.time() < deadline:
            jobs = store.list()
            if len(jobs) == 2 and all(r.status in FINAL for r in jobs):
                break
            time.sleep(2)
        refine = [r for r in jobs if r.spec.get("refine")]
        ship = [r for r in jobs if r.spec.get("ship")]
        assert [r.status for r in refine + ship] == ["done", "done"], [r.error for r in jobs]
        assert ship[0].spec["limit"] == 2
        nav(page, "Runs")
        page.get_by_text(re.compile("refine @")).first.wait_for(state="attached", timeout=60_000)
        no_raw(page)
        nav(page, "Results")
        wait_idle(page)
        no_raw(page)

        # a shared link with a lock: budget and lock hold through a reload, a page and Back
        def held() -> None:
            wait_idle(page)
            assert "bits=5.5" in page.url and "locks=0.down" in page.url, page.url
            metric = page.locator('[data-testid="stMetric"]', has_text="Locked / moved")
            assert re.search(r"\b1 / \d+", metric.inner_text()), metric.inner_text()
            thumb = page.locator('[data-testid="stSliderThumbValue"]').first.inner_text()
            assert float(thumb) == 5.5

        page.goto(f"{url}/allocate?{QUERY}&bits=5.5&locks=0.down=MXFP8")
        page.get_by_role("slider").wait_for(timeout=120_000)
        held()
        page.reload()
        page.get_by_role("slider").wait_for(timeout=120_000)
        held()
        nav(page, "Runs")
        page.go_back()
        page.wait_for_function("() => location.pathname.endsWith('/allocate')", timeout=30_000)
        page.get_by_role("slider").wait_for(timeout=120_000)
        held()
        no_raw(page)

        # a bad model name answers with an error, fast: the hub is off (HF_HUB_OFFLINE, set
        # for every test) — about 0.5 s here, page render included
        t0 = time.time()
        page.goto(f"{url}/?model=no-such-model-xyz")
        page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=60_000)
        assert time.time() - t0 < 10
