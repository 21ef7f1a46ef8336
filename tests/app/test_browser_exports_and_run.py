"""What the second newcomer walk (issue 35) did after the allocation, in a real browser on
tiny: every download button of the Allocate page pressed, its label shown whole and its file
runnable as written (a loadable model path, a complete snippet, no path of this machine); a
small comparison (1 item per task) run to the end and read on Results (accuracy cells as
``0.xxxx (yy.y%)`` or ``± — (why)``, never a raw None/nan); a bad model name answered fast."""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import CHROMIUM, REPO, browser_page, no_raw, streamlit_server, wait_idle

from mixviz.report.export import EXPORTERS
from mixviz.runs.store import FINAL, Store

QUERY = "model=tiny&options=MXFP4,MXFP8&metric=hessian&nsamples=2&seqlen=32&noscale=1"
# a number with its ± (or a dash and why it has none), then its share of BF16's where it has one
CELL = re.compile(r"^\d\.\d{4}( ± \d\.\d{4}| ± — \([^()]+\))( \(\d+\.\d%\))?$")
# a label drawn cut: its text wider than the box that shows it
CUT = """(el) => [...el.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1)"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed"),
]


def undefined_names(source: str) -> list[str]:
    """Names a script reads before any line above defines them (a snippet that is not
    complete), statement by statement at module level.

    >>> undefined_names("import os\\nx = os.sep\\nprint(y)")
    ['y']
    """
    defined, missing = set(dir(builtins)), []
    for stmt in ast.parse(source).body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id not in defined:
                    missing.append(node.id)
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.alias):
                defined.add((node.asname or node.name).split(".")[0])
    return missing


def download_all(page, folder: Path) -> dict[str, str]:
    """Press every enabled download button of the Allocate page; ``{exporter name: text}``.
    Each label is checked whole on screen first."""
    files = {}
    for name, exporter in EXPORTERS.items():
        box = page.locator(f".st-key-allocate_download_{name}")
        button = box.get_by_role("button")
        box.scroll_into_view_if_needed()
        assert button.inner_text().strip() == exporter.label
        assert not button.evaluate(CUT), f"the label {exporter.label!r} is drawn cut"
        if button.is_disabled():
            continue
        with page.expect_download(timeout=60_000) as download:
            button.click()
        path = folder / download.value.suggested_filename
        download.value.save_as(path)
        assert path.name.endswith(exporter.suffix)
        files[name] = path.read_text()
    return files


def check_exports(files: dict[str, str], cache: Path) -> None:
    """auto-round's files run as written: the CLI line loads a real folder, the snippet and
    the script define what they use, and neither names a path of this machine."""
    doc = json.loads(files["autoround"])
    model = re.match(r"auto-round --model (\"\$\(.*?\)\"|\S+) ", doc["cli"])[1]
    assert model not in ("demo", "tiny"), doc["cli"]  # a bare alias auto-round cannot load
    venv = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    folder = subprocess.run(
        ["bash", "-c", f"printf %s {model}"], env=venv, capture_output=True, text=True, cwd="/"
    )
    assert (Path(folder.stdout) / "config.json").is_file(), (doc["cli"], folder.stderr)
    for name, source in (("snippet", doc["python"]), ("script", files["autoround-script"])):
        compile(source, name, "exec")
        assert undefined_names(source) == [], (name, source)
    for name, text in files.items():  # every file, the script's and the JSON's code included
        for machine in (str(cache), str(REPO), "/tmp/", "/root/", "/home/"):
            assert machine not in text, (name, machine)


def results_table(page) -> dict[str, dict[str, str]]:
    """The Results table as shown (st.table is real HTML): ``{run: {column: cell}}``."""
    table = page.locator('[data-testid="stTable"] table').first
    table.wait_for(timeout=120_000)
    header = [h.strip() for h in table.locator("thead th").all_inner_texts()][1:]
    rows = {}
    for row in table.locator("tbody tr").all():
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        rows[row.locator("th").first.inner_text().strip()] = dict(zip(header, cells, strict=True))
    return rows


def test_exports_and_a_small_run(tmp_path):
    cache = tmp_path / "cache"
    with streamlit_server(env={"MIXVIZ_CACHE": str(cache)}, log=tmp_path / "log") as url, \
            browser_page() as page:  # fmt: skip
        page.goto(f"{url}/profile?{QUERY}")
        page.get_by_role("button", name=re.compile("[Pp]rofile tiny")).click(timeout=120_000)
        page.get_by_text("hessian sensitivity — MXFP4").first.wait_for(timeout=180_000)
        wait_idle(page)

        page.goto(f"{url}/allocate?{QUERY}&bits=5")
        page.get_by_role("slider").wait_for(timeout=120_000)
        wait_idle(page)
        files = download_all(page, tmp_path)
        assert {"recipe", "autoround", "autoround-script", "autoround-layer-config"} <= set(files)
        check_exports(files, cache)
        no_raw(page)

        page.goto(f"{url}/runs?{QUERY}&bits=5")
        page.get_by_label("Items per task", exact=True).fill("1")
        page.keyboard.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name=re.compile("Run the comparison")).click()
        page.get_by_text(re.compile(r"Queued \d runs")).wait_for(timeout=60_000)
        store, deadline = Store(cache / "mixviz.db"), time.time() + 900
        while time.time() < deadline:
            runs = store.list()
            if runs and all(r.status in FINAL for r in runs):
                break
            time.sleep(2)
        assert {r.status for r in runs} == {"done"}, [(r.label, r.error) for r in runs]
        assert {r.spec["limit"] for r in runs} == {1}
        wait_idle(page)
        no_raw(page)

        page.goto(f"{url}/results?{QUERY}")
        table = results_table(page)
        wait_idle(page)
        assert "BF16" in table and len(table) >= 3, table
        for run, cells in table.items():  # as the study writes them, or — and why
            for column in ("mixviz_lastword", "mixviz_nextsent", "average", "KLD"):
                assert CELL.match(cells[column]), (run, column, cells)
            assert "± — (1 item per task: no interval)" in cells["average"], (run, cells)
        no_raw(page)

        # a bad model name answers with an error, fast: the hub is off (HF_HUB_OFFLINE)
        t0 = time.time()
        page.goto(f"{url}/?model=no-such-model-xyz")
        page.locator('[data-testid="stAlertContentError"]').first.wait_for(timeout=60_000)
        took = time.time() - t0
        print(f"bad model name answered in {took:.1f} s")
        assert took < 10
