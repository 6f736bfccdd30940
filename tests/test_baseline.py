"""Baselines and qualification: file validation, the per-case diff, and the end-to-end promise (a baseline
of the sim qualified against a mutant backend names exactly the mutant's failures)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_cts.report import baseline

ROOT = Path(__file__).resolve().parents[1]
NODES = ["conformance/test_a.py::t[c1]", "conformance/test_a.py::t[c2]", "conformance/test_b.py::t[c1]"]


def _doc(**cases):
    recs = {n: {"status": "passed", "message": "", "digests": {"dispatch": [{"expand_x": "a", "ep_recv_counts": "b"}],
                                                                "combine": [{"combine.x": "c"}], "status": [0]},
                "timings": {"dispatch_s": 0.02, "combine_s": 0.02}} for n in NODES}
    for n, upd in cases.items():
        recs[NODES[int(n[1:])]].update(upd)
    return baseline.new({"profile": "v4-doc", "fixture": "sim", "backend": "sim", "markexpr": "smoke", "keyword": "",
                         "nodeids": NODES}, recs, {"torch": "2.13.0", "cann": "absent"})


def test_identical_runs_have_no_findings():
    d = baseline.diff(_doc(), _doc())
    assert not d["regression"]
    assert all(not d[k] for k in ("new_failures", "fixed", "impl_defined_changes", "normative_changes", "slower", "faster"))


def test_new_failure_fixed_and_digest_changes_are_told_apart():
    base = _doc(n1={"status": "failed", "message": "old"})
    cand = _doc(n0={"status": "failed", "message": "[conformance failure] case c1 ..."})
    cand["cases"][NODES[2]]["digests"]["dispatch"][0]["ep_recv_counts"] = "changed"
    cand["cases"][NODES[2]]["digests"]["combine"][0]["combine.x"] = "changed"
    d = baseline.diff(base, cand)
    assert [e["test"] for e in d["new_failures"]] == [NODES[0]]
    assert [e["test"] for e in d["fixed"]] == [NODES[1]]
    assert d["impl_defined_changes"] == [{"test": NODES[2], "output": "ep_recv_counts", "ranks": [0]}]
    assert d["normative_changes"] == [{"test": NODES[2], "output": "combine.x", "ranks": [0]}]
    assert d["regression"]
    md = baseline.markdown(d)
    assert "REGRESSION" in md and "## new failures" in md and "## fixed" in md and "ep_recv_counts" in md


def test_digest_drift_alone_is_not_a_regression():
    cand = _doc()
    cand["cases"][NODES[0]]["digests"]["dispatch"][0]["ep_recv_counts"] = "other"
    d = baseline.diff(_doc(), cand)
    assert len(d["impl_defined_changes"]) == 1 and not d["regression"]


def test_speed_uses_the_perf_ratio_when_both_runs_have_it_else_time_above_a_floor():
    perf = {"dispatch": {"ratio": 0.8}, "combine": {"ratio": 0.8}}
    slow = {"dispatch": {"ratio": 0.2}, "combine": {"ratio": 0.8}}
    d = baseline.diff(_doc(n0={"perf": perf}), _doc(n0={"perf": slow}), speed_threshold=0.5)
    assert [s["test"] for s in d["slower"]] == [NODES[0]] and d["slower"][0]["metric"].startswith("dispatch")
    assert d["regression"]
    # plain timings: 3x slower counts, but not below the floor
    d = baseline.diff(_doc(), _doc(n1={"timings": {"dispatch_s": 0.06, "combine_s": 0.06}}), speed_threshold=0.5)
    assert [s["test"] for s in d["slower"]] == [NODES[1]] and not d["regression"]  # reported, not gating
    d = baseline.diff(_doc(), _doc(n1={"timings": {"dispatch_s": 0.06, "combine_s": 0.06}}), gate_timings=True)
    assert d["regression"]
    d = baseline.diff(_doc(), _doc(n1={"timings": {"dispatch_s": 0.06, "combine_s": 0.06}}), min_time_s=1.0)
    assert not d["slower"]


def test_load_refuses_other_formats_and_versions_in_one_line(tmp_path):
    p = tmp_path / "b.json"
    for content, words in ((json.dumps({"x": 1}), "not a moe-cts baseline"), ("{", "not a JSON"),
                           (json.dumps({**_doc(), "version": 99}), "version 99")):
        p.write_text(content)
        with pytest.raises(baseline.BaselineError) as e:
            baseline.load(p)
        assert words in str(e.value) and "\n" not in str(e.value)
    baseline.save(_doc(), p)
    assert baseline.load(p)["cases"].keys() == set(NODES)


def test_other_case_list_or_profile_is_refused_in_one_line():
    base = _doc()
    baseline.check_compatible(base, profile="v4-doc", nodeids=list(reversed(NODES)))  # order does not matter
    for kw, words in ((dict(profile="v5", nodeids=NODES), "spec profile 'v4-doc'"),
                      (dict(profile="v4-doc", nodeids=NODES[:2]), "another case list")):
        with pytest.raises(baseline.BaselineError) as e:
            baseline.check_compatible(base, **kw)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_row_order_inside_an_expert_group_is_an_implementation_defined_digest():
    import numpy as np

    from moe_cts.cases import BASES, Case
    from moe_cts.suite.records import digests_of
    from moe_cts.world.outcome import RankOutcome

    case = Case(id="t", params=BASES["A3"], tier="smoke", kind="legal", feature="base", seed=1)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)

    def outcome(rows):
        d = {"expand_x": rows, "dynamic_scales": np.zeros(10, np.float32), "assist_info_for_combine": np.arange(30),
             "expert_token_nums": np.array([3, 2]), "ep_recv_counts": np.arange(8), "tp_recv_counts": np.zeros(0),
             "expand_scales": None}
        return RankOutcome(0, {"runs": [{"dispatch": d}], "combine": {"x": np.ones(3)}})

    a = digests_of(case, [outcome(x)])["dispatch"][0]
    b = digests_of(case, [outcome(x[[2, 1, 0, 4, 3, 5, 6, 7, 8, 9]])])["dispatch"][0]  # reversed inside groups
    c = digests_of(case, [outcome(x[[3, 1, 2, 0, 4, 5, 6, 7, 8, 9]])])["dispatch"][0]  # a row moved to another group
    assert a["expand_x"] == b["expand_x"] and a["expand_x.order"] != b["expand_x.order"]
    assert a["expand_x"] != c["expand_x"]
    base, cand = _doc(), _doc()
    base["cases"][NODES[0]]["digests"]["dispatch"] = [a]
    cand["cases"][NODES[0]]["digests"]["dispatch"] = [b]
    d = baseline.diff(base, cand)
    assert [x["output"] for x in d["impl_defined_changes"]] == ["expand_x.order"] and not d["normative_changes"]


def test_environment_fingerprint_names_the_stack():
    from moe_cts.suite.environment import fingerprint

    env = fingerprint()
    for key in ("torch", "torch_npu", "cann", "driver", "firmware", "soc"):
        assert key in env


# ------------------------------------------------------------------------------------------ end to end
SEL = "A3-legal-base and (dispatch or roundtrip or determinism)"


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "moe_cts.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_qualify_against_a_mutant_names_exactly_its_failures(tmp_path):
    b = tmp_path / "base.json"
    r = _cli("baseline", "capture", "--out", str(b), "-k", SEL, "--quiet")
    assert r.returncode == 0, r.stderr + r.stdout
    doc = baseline.load(b)
    assert len(doc["cases"]) == 3 and doc["environment"]["fixture"] == "sim"
    ok = {n for n, c in doc["cases"].items() if c["status"] == "passed"}
    if len(ok) != 3:
        pytest.skip(f"the sim does not pass the base case on this checkout: {doc['cases']}")
    assert all(c.get("digests") for c in doc["cases"].values())
    # mutant (expand_x row 0 zeroed): dispatch and round trip fail, determinism still passes
    js = tmp_path / "diff.json"
    md = tmp_path / "diff.md"
    r = _cli("qualify", "--baseline", str(b), "--backend", "moe_cts.mutants.examples:zero_first_row", "--quiet",
             "--json", str(js), "--md", str(md))
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(js.read_text())
    new = sorted(e["test"] for e in d["new_failures"])
    assert new == sorted(n for n in ok if "determinism" not in n), new
    assert all("[conformance failure]" in e["message"] for e in d["new_failures"])
    assert not d["fixed"] and "## new failures" in md.read_text()
    # another case list: refused before anything runs, one line, exit 2
    r = _cli("qualify", "--baseline", str(b), "-k", "A3-legal-base and dispatch", "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "moe-cts qualify" in ln] + \
            [ln for ln in r.stdout.splitlines() if "moe-cts qualify" in ln]
    assert lines and "another case list" in lines[0], r.stdout + r.stderr
