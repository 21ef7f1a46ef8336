"""The app as a person first meets it, in a real browser on tiny: a local tool's header (no
Deploy button), a model field found by its own label, a bad model name answered at once, no
raw None / nan in any page's text, whole download labels, the frontier's label above the plot."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, browser_page, streamlit_server, wait_idle
from screen import RAW

QUERY = "model=tiny&options=MXFP4,MXFP8&metric=hessian&nsamples=2&seqlen=32&noscale=1"
PAGES = ("", "profile", "allocate", "runs", "results")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]

# every button label cut by its column (Streamlit's ellipsis): its text is wider than its box
# (eight download buttons in one row cut four of them at this width: "auto-round l…")
CUT_LABELS = """() => [...document.querySelectorAll(
    '[data-testid^="stBaseButton"] .stMarkdownEllipsis')]
    .filter(d => d.scrollWidth > d.clientWidth + 1).map(d => d.innerText)"""


def test_first_meeting(tmp_path):
    cache = {"MIXVIZ_CACHE": str(tmp_path / "cache")}
    with streamlit_server(env=cache) as url, browser_page() as page:
        page.goto(f"{url}/?{QUERY}")
        page.get_by_text("Linear layers in blocks").wait_for(timeout=120_000)
        wait_idle(page)
        assert page.locator('[data-testid="stAppDeployButton"]').count() == 0
        assert "Deploy" not in page.locator("header").inner_text()

        # the sidebar's field has a label of its own: a bad name is answered at once
        field = page.get_by_label("Model name or folder", exact=True)
        field.fill("SomeOrg/no-such-model-xyz")
        t0 = time.monotonic()
        page.keyboard.press("Enter")
        page.get_by_text(re.compile("unknown model 'SomeOrg/no-such-model-xyz'")).wait_for(
            timeout=30_000
        )
        assert time.monotonic() - t0 < 5.0  # ~25 s of hub retries before

        page.goto(f"{url}/profile?{QUERY}")
        page.get_by_role("button", name=re.compile("[Pp]rofile tiny")).click()
        page.get_by_text("hessian sensitivity — MXFP4").first.wait_for(timeout=180_000)
        wait_idle(page)
        for name in PAGES:
            bits = "&bits=4.3" if name == "allocate" else ""  # llamacpp cannot reach 4.3
            page.goto(f"{url}/{name}?{QUERY}{bits}")
            page.locator("h1").first.wait_for(timeout=120_000)
            wait_idle(page)
            page.wait_for_timeout(1000)
            raw = [line for line in page.inner_text("body").splitlines() if RAW.search(line)]
            assert raw == [], (name, raw)
            if name == "allocate":
                assert page.locator('[data-testid="stDownloadButton"]').count() >= 3
                assert page.evaluate(CUT_LABELS) == []
