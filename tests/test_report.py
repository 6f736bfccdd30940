"""Reports: counts from allure-results, the categories, the heatmap, what a real (mutant) run attaches,
and the single-file HTML with history kept across runs."""
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from moe_cts import report
from moe_cts.report.heatmap import heatmap_png, wrong_rows_matrix

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"Conformance failure", "Wrong error status", "Implementation-defined drift", "Hang", "Crash",
            "Infrastructure", "Waived (known kernel/doc difference)"}


def _result(d: Path, name: str, status: str, message: str = "", labels=()):
    r = {"uuid": str(uuid.uuid4()), "historyId": name, "name": name, "fullName": f"conformance.t#{name}", "status": status,
         "statusDetails": {"message": message}, "start": 1, "stop": 2, "labels": [dict(name=k, value=v) for k, v in labels]}
    (d / f"{r['uuid']}-result.json").write_text(json.dumps(r))


def test_categories_cover_the_issue_and_match_in_the_right_order():
    cats = json.loads((ROOT / "reports" / "categories.json").read_text())
    names = [c["name"] for c in cats]
    assert REQUIRED <= set(names)
    # first match wins in Allure 3: specific broken kinds before the catch-all, wrong status before conformance
    assert names.index("Hang") < names.index("Infrastructure") and names.index("Crash") < names.index("Infrastructure")
    assert names.index("Wrong error status") < names.index("Conformance failure")
    for c in cats:
        assert "matchers" in c and "matchedStatuses" not in c  # canonical Allure 3 form (labels need it)
    assert (ROOT / "reports" / "allurerc.mjs").read_text().count("categories.json") >= 1


def test_summarize_counts_latest_attempt_and_waivers(tmp_path):
    _result(tmp_path, "a", "passed")
    _result(tmp_path, "b", "failed", "[conformance failure] ...")
    _result(tmp_path, "c", "skipped", "XFAIL waived", labels=[("waiver", "W1")])
    c = report.summarize(tmp_path)
    assert c["total"] == 3 and c["passed"] == 1 and c["failed"] == 1 and c["waived"] == 1
    assert report.gate(tmp_path) == 1
    with pytest.raises(report.ReportError):
        report.summarize(tmp_path / "nope")


def test_heatmap_counts_missing_rows_per_rank_and_local_expert():
    class P:
        expert_token_nums_type = 1

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    ref = [{"expand_x": x, "expert_token_nums": np.array([2, 4])}, {"expand_x": x, "expert_token_nums": np.array([3, 3])}]
    bad = x.copy()
    bad[0] = 0  # rank 0, local expert 0
    swapped = x.copy()
    swapped[[3, 4]] = swapped[[4, 3]]  # rank 1: order inside expert 1's group is implementation-defined
    got = [{"expand_x": bad, "expert_token_nums": np.array([2, 4])}, {"expand_x": swapped, "expert_token_nums": np.array([3, 3])}]
    m = wrong_rows_matrix(P, ref, got)
    assert m.tolist() == [[1, 0], [0, 0]]
    png = heatmap_png(m, "t")
    assert png[:4] == b"\x89PNG" and len(png) < 100_000


MUTANT_K = "A3-legal-base and (dispatch or determinism or roundtrip)"


def mutant_results(tmp_path_factory) -> Path:
    """allure-results of 3 sim cases with the zero-first-row mutant (2 fail, 1 passes), run once per session
    and shared with tests/test_browser_report.py."""
    d = tmp_path_factory.getbasetemp() / "moe-cts-mutant-run"
    if not (d / "done").exists():
        shutil.rmtree(d, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "moe_cts.suite.records", "conformance", "-q",
                            "-p", "no:randomly", "-m", "smoke", "-k", MUTANT_K,
                            "--backend", "moe_cts.mutants.examples:zero_first_row", "--alluredir", str(d / "results")],
                           cwd=ROOT, capture_output=True, text=True, timeout=240)
        (d / "pytest.out").write_text(r.stdout[-4000:] + r.stderr[-2000:])
        (d / "done").write_text(str(r.returncode))
    if len(list((d / "results").glob("*-result.json"))) != 3:
        pytest.skip(f"the sim run did not produce 3 results on this checkout: {(d / 'pytest.out').read_text()[-800:]}")
    return d / "results"


@pytest.mark.skipif(shutil.which("node") is None, reason="the Allure 3 CLI needs node")
def test_allure_puts_each_kind_of_result_in_its_category(tmp_path):
    import base64
    import re

    d = tmp_path / "results"
    d.mkdir()
    want = {"hang": ("broken", "moe_cts.world.outcome.WorldBroken: broken: hang: deadline of 4 s passed", (), "Hang"),
            "crash": ("broken", "WorldBroken: broken: crash: rank 1 was killed by SIGSEGV", (), "Crash"),
            "golden": ("broken", "GoldenError: the oracle no longer reproduces golden X", (), "Golden / oracle drift"),
            "infra": ("broken", "OSError: no space left", (), "Infrastructure"),
            "status": ("failed", "case X: expected every rank to fail with aclnn status 561002 ...", (), "Wrong error status"),
            "conf": ("failed", "[conformance failure] case X, rank 0, output expand_x: 1 of 7 wrong", (), "Conformance failure"),
            "drift": ("passed", "", (("drift", "implementation-defined"),), "Implementation-defined drift"),
            "waived": ("skipped", "XFAIL waived W1", (("waiver", "W1"),), "Waived (known kernel/doc difference)")}
    for name, (status, msg, labels, _) in want.items():
        _result(d, name, status, msg, labels=labels)
    cwd = Path.cwd()
    had_history = (cwd / "history").exists()
    index = report.generate_html(d, tmp_path / "html", history=None)
    assert had_history or not (cwd / "history").exists(), "history=None must not write a history anywhere"
    blob = re.search(r'd\("widgets/categories.json","([^"]+)"\)', index.read_text()).group(1)
    nodes = json.loads(base64.b64decode(blob))["nodes"]
    got, current = {}, None
    for n in nodes.values():  # category -> message -> test result, in that order
        if n.get("type") == "category":
            current = n["name"]
        elif n.get("type") == "tr":
            got[n["name"]] = current
    assert got == {k: v[3] for k, v in want.items()}


def test_hang_stack_dumps_are_attached_and_capped(monkeypatch):
    import allure

    from moe_cts.suite import records
    from moe_cts.world.outcome import WorldBroken

    seen = []
    monkeypatch.setattr(allure, "attach", lambda body, name=None, attachment_type=None, **kw: seen.append((name, body)))

    class Call:
        class excinfo:
            value = WorldBroken("hang", "deadline passed", stacks={0: "x" * 100_000, 1: "Thread 1 ..."})

    records._attach_failure(None, Call)
    assert seen and seen[0][0] == "stack dumps (hang)"
    assert len(seen[0][1]) < records.STACKS_CAP + 200 and "more characters cut" in seen[0][1]


@pytest.fixture(scope="module")
def mutant_run(tmp_path_factory):
    res = mutant_results(tmp_path_factory)
    return res.parent, [json.loads(f.read_text()) for f in res.glob("*-result.json")]


@pytest.mark.slow
def test_a_failing_case_carries_steps_mismatch_text_and_heatmap(mutant_run):
    d, results = mutant_run
    failed = [r for r in results if r["status"] == "failed" and "test_dispatch" in r["name"]]
    assert len(failed) == 1 and sum(r["status"] == "failed" for r in results) == 2
    steps = [s["name"] for s in failed[0]["steps"]]
    assert any(s.startswith("run on 4 ranks") for s in steps) and "compare dispatch outputs" in steps
    assert any(s.startswith("inputs + reference model") for s in steps)
    att = {a["name"]: a for a in failed[0]["attachments"]}
    assert "dispatch: mismatch summary" in att and "wrong rows per rank x local expert" in att
    png = d / "results" / att["wrong rows per rank x local expert"]["source"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    total = sum((d / "results" / a["source"]).stat().st_size for r in results for a in r.get("attachments", []))
    assert total < 500_000, f"attachments must stay small, got {total} bytes"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="the Allure 3 CLI needs node")
def test_single_file_report_and_history_across_runs(mutant_run, tmp_path):
    d, _ = mutant_run
    hist = tmp_path / "history" / "history.jsonl"
    (tmp_path / "html2" / "perf").mkdir(parents=True)  # a plot folder next to the report must not push it aside
    (tmp_path / "html2" / "perf" / "bandwidth.png").write_bytes(b"x")
    for i in (1, 2):
        index = report.generate_html(d / "results", tmp_path / f"html{i}", history=hist)
        assert index.exists() and index.stat().st_size > 100_000
        assert not (tmp_path / f"html{i}" / "data").exists()  # single file
        assert len(hist.read_text().splitlines()) == i  # one history point per run: trends show from run 2
    assert (tmp_path / "html2" / "perf" / "bandwidth.png").exists() and not (tmp_path / "html2" / "awesome").exists()
    summary = json.loads((tmp_path / "html2" / "summary.json").read_text())
    assert summary["stats"]["total"] == 3 and summary["stats"]["failed"] == 2
