"""The golden store: verify passes on the committed store and names case + file for every defect."""
import json
import shutil
import subprocess
import sys

import pytest

from moe_cts.oracle import golden


@pytest.fixture()
def store(tmp_path):
    root = tmp_path / "golden"
    shutil.copytree(golden.ROOT, root)
    return root


def test_committed_store_verifies():
    problems = golden.verify(golden.ROOT, echo=lambda *_: None)
    assert problems == [], "\n".join(problems)


def test_store_is_small_and_has_full_tensors():
    m = json.loads((golden.ROOT / golden.MANIFEST).read_text())
    assert sum(1 for e in m["cases"].values() if e["tensors"]) >= 5
    total = sum(f.stat().st_size for f in golden.ROOT.rglob("*") if f.is_file())
    assert total < 20 * 2**20, f"golden/ is {total} bytes, budget 20 MB"


def test_corrupt_manifest_is_one_line(store):
    (store / golden.MANIFEST).write_text("{not json")
    with pytest.raises(golden.GoldenError, match=r"corrupt golden manifest") as ei:
        golden.verify(store, echo=lambda *_: None)
    assert "\n" not in str(ei.value) and str(store) in str(ei.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(golden.GoldenError, match="missing"):
        golden.verify(tmp_path, echo=lambda *_: None)


def test_corrupt_tensor_file_names_case_and_file(store):
    m = json.loads((store / golden.MANIFEST).read_text())
    cid, entry = next((k, v) for k, v in m["cases"].items() if v["tensors"])
    (store / entry["tensors"]).write_bytes(b"\x00garbage")
    problems = golden.verify(store, echo=lambda *_: None)
    assert len(problems) == 1 and cid in problems[0] and entry["tensors"].split("/")[-1] in problems[0], problems


def test_changed_digest_and_stale_case(store):
    m = json.loads((store / golden.MANIFEST).read_text())
    cid = next(iter(m["cases"]))
    m["cases"][cid]["dispatch"][0]["expand_x"] = "0" * 32
    m["cases"]["A3-legal-no-such-case"] = m["cases"][cid]
    (store / golden.MANIFEST).write_text(json.dumps(m))
    problems = golden.verify(store, echo=lambda *_: None)
    assert any(cid in p and "rank 0 expand_x" in p for p in problems), problems
    assert any("A3-legal-no-such-case" in p and "stale" in p for p in problems), problems


def test_cli_exit_codes(store):
    ok = subprocess.run([sys.executable, "-m", "moe_cts.cli", "golden", "verify", "--root", str(store)],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    (store / golden.MANIFEST).write_text("[]")
    bad = subprocess.run([sys.executable, "-m", "moe_cts.cli", "golden", "verify", "--root", str(store)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
