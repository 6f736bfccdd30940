"""Performance mode: the DeepXTrace analysis, the summary arithmetic, the plot, perf cases stay out of tier
runs, and (end to end on the sim) an injected slow rank is flagged as that rank."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moe_cts.report import perf as perf_report
from moe_cts.suite import perf

ROOT = Path(__file__).resolve().parents[1]


def test_diagnose_flags_a_slow_source_column():
    m = np.full((8, 8), 10.0)
    m[:, 5] = 700.0
    m[5, 5] = 10.0  # the slow rank does not wait for itself
    d = perf_report.diagnose(m)
    assert perf_report.slow_ranks(d) == [5] and not d["abnormal_rows"] and not d["abnormal_points"]


def test_diagnose_rows_points_and_suppression():
    m = np.ones((8, 8))
    m[2, :] = 50.0  # slow receiver
    m[6, 1] = 200.0  # one slow path
    m[2, 3] = 200.0  # inside the abnormal row: not reported as a point
    d = perf_report.diagnose(m)
    assert [r[0] for r in d["abnormal_rows"]] == [2]
    assert [(p[0], p[1]) for p in d["abnormal_points"]] == [(6, 1)]
    assert not d["abnormal_cols"]


def test_diagnose_quiet_on_uniform_or_empty():
    assert perf_report.diagnose(np.full((4, 4), 3.0)) == {"abnormal_cols": [], "abnormal_rows": [], "abnormal_points": []}
    assert perf_report.diagnose(np.zeros((4, 4)))["abnormal_cols"] == []


def test_summary_takes_slowest_rank_per_iteration_and_compares_with_the_bare_all_to_all(tmp_path):
    case = perf.perf_cases(product="A3")[0]
    vals = [{"timer": "host", "dispatch_s": [0.010, 0.020, 0.010], "combine_s": [0.01] * 3, "a2a_dispatch_s": [0.005] * 3,
             "a2a_combine_s": [0.01] * 3, "dispatch_bytes": 1000, "combine_bytes": 2000, "performance_info": None}
            for _ in range(case.params.world_size)]
    vals[1]["dispatch_s"] = [0.030, 0.010, 0.010]
    rec = perf_report.summarize(case, vals)
    assert rec["dispatch"]["latency_s"] == pytest.approx(0.020)  # per-iteration max: .03 .02 .01 -> median .02
    assert rec["dispatch"]["bytes"] == 1000 * case.params.world_size
    assert rec["dispatch"]["ratio"] == pytest.approx(0.005 / 0.020)
    assert rec["combine"]["ratio"] == pytest.approx(1.0)
    assert "diagnosis" not in rec
    rec["backend"] = "sim"
    png = perf_report.plot_bandwidth([rec], tmp_path / "bw.png")
    assert png and (tmp_path / "bw.png").read_bytes()[:4] == b"\x89PNG"
    assert "ratio" in perf_report.text(rec)


def test_perf_cases_are_legal_and_only_marked_perf():
    from moe_cts.cases import checked_violations

    cases = perf.perf_cases()
    assert len({c.params.h * c.params.bs for c in cases if c.product == "A3"}) >= 3  # a size sweep
    for c in cases:  # legal with the buffer the case itself sets (the large sweep sizes need more than 200 MB)
        env = {k: int(v) for k, v in c.env} or None
        v = checked_violations(c.params, profile=c.profile, env=env)
        assert not v, f"perf case {c.id} (env {c.env}) violates {[x.constraint for x in v]}"
    # only the perf marker: tier runs (-m smoke|nightly|full) never select these, and the moe-cts plugin does not
    # parametrise the module (no CASE_KIND), so it adds no tier marks either
    import importlib.util

    spec = importlib.util.spec_from_file_location("_perf_mod", ROOT / "conformance" / "test_perf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert not hasattr(mod, "CASE_KIND")
    for fn in (mod.test_bandwidth, mod.test_slow_rank_is_flagged):
        marks = {m.name for m in fn.pytestmark}
        assert marks == {"perf", "parametrize"}, marks
        for p in fn.pytestmark[[m.name for m in fn.pytestmark].index("parametrize")].args[1]:
            assert {m.name for m in p.marks} == {"perf"}


@pytest.mark.slow
def test_injected_slow_rank_is_flagged_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "moe_cts.cli", "perf", "-k", "slowrank", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = json.loads((tmp_path / "perf.json").read_text())
    assert len(recs) == 1
    rec = recs[0]
    assert rec["slow"]["rank"] == 5 and rec["slow_ranks"] == [5], rec.get("diagnosis")
    m = np.asarray(rec["perf_matrix"])
    assert m.shape == (rec["world_size"], rec["world_size"])
    assert rec["dispatch"]["latency_s"] >= rec["slow"]["delay_s"]
