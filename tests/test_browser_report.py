"""The HTML report as a person sees it: headless Chromium (Debian's package, started here over a
DevTools pipe, no network) opens the single-file report of a real sim run with a mutant backend, checks
the summary shows the run's counts and that the failing case shows its mismatch summary, and saves
screenshots as artefacts ($MOE_CTS_ARTEFACTS, default reports/html/screenshots/)."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from moe_cts import report
from moe_cts.report.browser import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None,
                       reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="the Allure 3 CLI needs node 20+"),
]


def _artefacts() -> Path:
    d = Path(os.environ.get("MOE_CTS_ARTEFACTS", ROOT / "reports" / "html" / "screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_report_in_a_browser_shows_counts_and_the_mismatch(tmp_path, tmp_path_factory):
    from test_report import mutant_results  # one mutant sim run per session, shared with test_report.py

    res = mutant_results(tmp_path_factory)
    counts = report.summarize(res)
    assert counts.get("failed") == 2 and counts.get("passed") == 1, counts
    failing = next(json.loads(f.read_text()) for f in res.glob("*-result.json")
                   if '"failed"' in f.read_text() and "test_dispatch[" in f.read_text())
    index = report.generate_html(res, tmp_path / "html", history=None)
    art = _artefacts()
    with Browser(width=1400, height=1000) as b:
        b.open(index.resolve().as_uri())
        text = b.wait_text("Total", "Failed", "Passed", timeout_s=60)
        (art / "report-summary.png").write_bytes(b.screenshot())
        flat = re.sub(r"\s+", " ", text)
        assert re.search(rf"Total {counts['total']}\b", flat), flat[:600]
        assert re.search(rf"Failed {counts['failed']}\b", flat) and re.search(rf"Passed {counts['passed']}\b", flat), flat[:600]
        # open the failing dispatch case: its mismatch summary names case, rank, output and rows
        assert b.click_text('[data-testid="tree-leaf"]', failing["name"]), f"no tree entry for {failing['name']}"
        page = b.wait_text("[conformance failure]", "Conformance failure", timeout_s=30)
        first = failing["statusDetails"]["message"].splitlines()[0].split(": ", 1)[-1]
        assert first in page, f"the case page does not show {first!r}"
        assert "expected row" in page and "local expert" in page
        (art / "report-failing-case.png").write_bytes(b.screenshot())
    for name in ("report-summary.png", "report-failing-case.png"):
        assert (art / name).read_bytes()[:4] == b"\x89PNG"
