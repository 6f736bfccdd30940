"""Reports: the Allure 3 single-file HTML report (npm `allure`, pinned in reports/package.json) and a
status summary read straight from the allure-results (the quality gate is done here, in Python:
Allure 3's own quality-gate needs node 22).

The report uses reports/allurerc.mjs (categories from reports/categories.json) and keeps run history in
reports/history/history.jsonl (``history``), outside allure-results, so nightly trends survive
``make run``'s clean.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from moe_cts import repo

REPORTS = repo.REPORTS


class ReportError(Exception):
    """One line: what could not be produced and why."""


def summarize(results: Path) -> dict:
    """Counts per status from allure-results (latest attempt of each test)."""
    results = Path(results)
    if not results.is_dir():
        raise ReportError(f"{results}: no allure results folder (run the suite with --alluredir first)")
    latest: dict[str, dict] = {}
    for f in results.glob("*-result.json"):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            raise ReportError(f"{f}: corrupt allure result file") from None
        key = r.get("historyId") or r.get("fullName") or f.name
        if key not in latest or r.get("stop", 0) > latest[key].get("stop", 0):
            latest[key] = r
    counts = Counter(r.get("status", "unknown") for r in latest.values())
    waived = sum(1 for r in latest.values() if any(l.get("name") == "waiver" for l in r.get("labels", [])))
    return {"total": len(latest), **dict(sorted(counts.items())), "waived": waived}


def allure_cli() -> list[str]:
    exe = REPORTS / "node_modules" / ".bin" / "allure"
    if not exe.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise ReportError("the Allure 3 CLI needs node/npm: install node 20+ (npm) and rerun")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=REPORTS, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0 or not exe.exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise ReportError(f"npm ci in {REPORTS} failed: {last[0][:200]}")
    return [str(exe)]


HISTORY = REPORTS / "history" / "history.jsonl"
CONFIG = REPORTS / "allurerc.mjs"


def generate_html(results: Path, out: Path, *, name: str = "moe-cts", history: Path | None = HISTORY) -> Path:
    """Write the single-file HTML report (opens from file://) and return its path.

    ``history``: the Allure history file to read and append to (None: no history). Allure writes into a
    fresh folder first: given an output folder that already holds a sub-folder (perf plots, screenshots),
    it would put the report in ``<out>/awesome/`` and leave a stale ``<out>/index.html``. The new files then
    replace the old ones in ``out``; other things there (perf/, screenshots/) stay."""
    results, out = Path(results), Path(out)
    summarize(results)  # validates the folder first: one clear line instead of a node stack trace
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".moe-cts-report-", dir=out))
    try:
        cmd = allure_cli() + ["awesome", str(results), "-o", str(tmp / "r"), "--single-file", "--report-name", name]
        if CONFIG.exists():
            cmd += ["--config", str(CONFIG)]
        if history is not None:
            Path(history).parent.mkdir(parents=True, exist_ok=True)
            cmd += ["--history-path", str(Path(history).resolve())]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("plugin ") and " error " in line:  # allure 3 exits 0 when a plugin fails
                raise ReportError(f"allure awesome: {line.strip()[:200]}")
        made = tmp / "r" / "index.html"
        if proc.returncode != 0 or not made.exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise ReportError(f"allure awesome failed ({proc.returncode}): {last[0][:200]}")
        for f in (tmp / "r").iterdir():
            dest = out / f.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def gate(results: Path) -> int:
    """Quality gate from allure-results: 1 when anything failed or broke, else 0."""
    c = summarize(results)
    return 1 if c.get("failed", 0) or c.get("broken", 0) else 0


