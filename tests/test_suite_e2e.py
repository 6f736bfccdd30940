"""The conformance suite end to end on the sim fixture: passes on sim, fails loudly on a wrong kernel."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE = "A3-legal-base"


def _pytest(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "conformance", "-q", "--no-header", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_case_passes_on_sim_and_writes_allure_results(tmp_path):
    r = _pytest("-k", f"{CASE} and (test_dispatch or test_roundtrip)", "--alluredir", str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "2 passed" in r.stdout, r.stdout[-500:]
    env = (tmp_path / "environment.properties").read_text()
    for key in ("python=", "torch=", "fixture=sim", "backend=sim", "spec_profile=v4-doc"):
        assert key in env, f"environment.properties lacks {key!r}:\n{env}"
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*-result.json")]
    assert len(results) == 2
    for res in results:
        labels = {l["name"]: l["value"] for l in res["labels"]}
        assert labels.get("product") == "A3" and labels.get("tier") == "smoke", labels
        assert labels.get("operator", "").startswith("aclnnMoeDistributeDispatchV4"), labels
        params = {p["name"]: p["value"] for p in res["parameters"]}
        assert params.get("ep_world_size") == "4" and params.get("product") == "'A3'" and "seed" in params, params


def test_a_corrupting_backend_fails_with_a_named_mismatch_and_a_rerun_command():
    r = _pytest("-k", f"{CASE} and test_dispatch", "--backend", "moe_cts.mutants.examples:zero_first_row")
    assert r.returncode == 1, r.stdout[-3000:]
    out = r.stdout
    assert "conformance failure" in out and "output expand_x" in out, out[-3000:]
    assert "local expert" in out and "source" in out, out[-3000:]
    assert "rerun exactly this case" in out and "--backend moe_cts.mutants.examples:zero_first_row" in out, out[-3000:]


@pytest.mark.parametrize("args, expect", [
    (["--fixture", "fixtures/nope.yaml"], "nope.yaml"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--backend", "moe_cts.mutants.examples:missing"], "has no attribute 'missing'"),
])
def test_bad_options_are_one_line(args, expect):
    r = _pytest("--co", *args)
    assert r.returncode == 4, (r.returncode, r.stdout[-500:], r.stderr[-500:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "Traceback" not in r.stderr, r.stderr
