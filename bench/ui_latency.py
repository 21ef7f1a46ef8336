"""Slider latency in a real browser on the demo model: move the Allocate slider 20 times and
time until the allocation heatmap and figures are redrawn. Goal: median < 300 ms.

The anchor is the server-side solve itself (allocate at the same budgets, measured in the same
run), printed beside the browser figure.

    .venv/bin/python bench/ui_latency.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/profile.py shadows the stdlib's ``profile`` (imported via cProfile): drop this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import browser_page, streamlit_server, wait_idle  # noqa: E402

from mixviz.allocate import Problem, allocate  # noqa: E402
from mixviz.profile import profile_model  # noqa: E402

QUERY = "model=demo&options=MXFP4,MXFP8&metric=hessian&nsamples=16&seqlen=256&noscale=1&bits=5"


def main() -> None:
    prof = profile_model(
        "demo", options="MXFP4,MXFP8", metric="hessian", nsamples=16, seqlen=256, allow_partial=True
    )
    problem = Problem.from_profile(prof, ignore_scale_bits=True)
    solve = []
    for i in range(20):
        t0 = time.perf_counter()
        allocate(problem, 5.0 + 0.01 * (i + 1))
        solve.append(time.perf_counter() - t0)

    times = []
    with streamlit_server() as url, browser_page() as page:
        page.goto(f"{url}/allocate?{QUERY}")
        metric = page.locator('[data-testid="stMetricValue"]').nth(1)
        metric.wait_for(timeout=300_000)
        wait_idle(page, 300_000)
        slider = page.get_by_role("slider")
        for _ in range(20):
            before = metric.inner_text()
            slider.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "(b) => document.querySelectorAll('[data-testid=\"stMetricValue\"]')[1]"
                ".innerText !== b",
                arg=before,
                timeout=60_000,
            )
            wait_idle(page, settle_ms=0)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"server-side solve (anchor): median {statistics.median(solve) * 1000:.1f} ms")
    print(
        f"slider → redrawn in the browser: median {med * 1000:.0f} ms, max "
        f"{max(times) * 1000:.0f} ms over {len(times)} moves "
        f"({med / statistics.median(solve):.0f}× the solve); goal < 300 ms"
    )


if __name__ == "__main__":
    main()
