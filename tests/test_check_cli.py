"""`moe-cts check`: exit 0 legal, 1 illegal, 2 unusable input with one line on stderr."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moe_cts.cli import main

DOC_EXAMPLE = ["--product", "A3", "--set", "ep_world_size=8", "--set", "bs=8", "--set", "h=7168", "--set", "k=3",
               "--set", "shared_expert_num=1", "--set", "shared_expert_rank_num=1", "--set", "moe_expert_num=7",
               "--set", "zero_expert_num=1", "--set", "copy_expert_num=1", "--set", "const_expert_num=1",
               "--set", "expert_token_nums_type=1"]


def run(argv, capsys):
    try:
        rc = main(["check", *argv])
    except SystemExit as e:  # argparse-level errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_doc_example_is_legal(capsys):
    rc, out, err = run(DOC_EXAMPLE, capsys)
    assert rc == 0, out + err
    assert "LEGAL" in out and "ILLEGAL" not in out
    assert "expand_x" in out and "HCCL_BUFFSIZE minimum: ep 3 MB" in out


def test_h8193_is_illegal_with_id_clause_status(capsys):
    rc, out, err = run(DOC_EXAMPLE + ["--set", "h=8193"], capsys)
    assert rc == 1
    assert "A3.h.range" in out and "561002" in out and "取值范围[1024, 8192]" in out
    assert "h=8193 not in [1024, 8192]" in out


def test_json_output(capsys):
    rc, out, _ = run(DOC_EXAMPLE + ["--set", "h=8193", "--json"], capsys)
    assert rc == 1
    r = json.loads(out)
    assert r["legal"] is False and r["kernel_status"] == 561002 and r["kernel_constraint"] == "A3.h.range"
    assert r["violations"][0]["constraint"] == "A3.h.range" and r["violations"][0]["status"] == 561002
    assert r["hccl_buffsize_min_mb"]["ep"] >= 1
    kinds = {k["kind"] for k in r["rank_kinds"]}
    assert kinds == {"shared-expert", "moe-expert"}
    assert r["rank_kinds"][0]["outputs"]["expand_x"]["shape"] == [64, 8193]


def test_yaml_and_json_files(tmp_path, capsys):
    y = tmp_path / "job.yaml"
    y.write_text("product: A2\nep_world_size: 16\nmoe_expert_num: 32\nbs: 8\nh: 7168\nk: 8\ncomm_alg: fullmesh\n"
                 "env: {HCCL_BUFFSIZE: 10}\n", encoding="utf-8")
    rc, out, _ = run([str(y)], capsys)
    assert rc == 1 and "A2.hcclBuffsize.fullmesh" in out
    rc, out, _ = run([str(y), "--set", "env.HCCL_BUFFSIZE=11"], capsys)
    assert rc == 0, out
    j = tmp_path / "job.json"
    j.write_text(json.dumps({"product": "A3", "ep_world_size": 8, "moe_expert_num": 8, "bs": 8, "h": 1024, "k": 2,
                             "tensors": {"x": {"dtype": "float32"}, "scales": None}}), encoding="utf-8")
    rc, out, _ = run([str(j), "--json"], capsys)
    r = json.loads(out)
    assert rc == 1 and r["violations"][0]["constraint"] == "any.x.dtype" and r["kernel_status"] == 161002


def test_tensor_overrides_and_null_comm_alg(capsys):
    rc, out, _ = run(DOC_EXAMPLE + ["--set", "attrs.comm_alg=null"], capsys)
    assert rc == 0, out
    rc, out, _ = run(DOC_EXAMPLE + ["--set", "tensors.expert_ids.shape=[8, 3, 1]", "--json"], capsys)
    assert rc == 1 and json.loads(out)["kernel_constraint"] == "any.expertIds.ndim"
    rc, out, _ = run(DOC_EXAMPLE + ["--set", "tensors.x=null", "--json"], capsys)
    assert rc == 1 and json.loads(out)["kernel_status"] == 161001


def test_precondition_only_is_illegal_but_no_kernel_status(capsys):
    rc, out, _ = run(DOC_EXAMPLE + ["--set", "global_bs=128", "--json"], capsys)
    r = json.loads(out)
    assert rc == 1 and r["kernel_status"] is None
    assert [v["kind"] for v in r["violations"]] == ["precondition"]


BAD = [
    (["--set", "ep_world_size=8"], "missing required value"),
    (DOC_EXAMPLE + ["--set", "foo=1"], "unknown key 'foo'"),
    (DOC_EXAMPLE + ["--set", "h=8k"], "h='8k': expected an integer"),
    (DOC_EXAMPLE + ["--set", "h=8.5"], "expected an integer"),
    (DOC_EXAMPLE + ["--set", "h=true"], "expected an integer"),
    (DOC_EXAMPLE + ["--product", "A5"], "unknown product 'A5'"),
    (DOC_EXAMPLE + ["--set", "x_active_mask=3d"], "x_active_mask='3d'"),
    (DOC_EXAMPLE + ["--set", "env.HCCL_BUFFSIZE=big"], "env.HCCL_BUFFSIZE"),
    (DOC_EXAMPLE + ["--set", "env.FOO=1"], "unknown env key"),
    (DOC_EXAMPLE + ["--set", "tensors.x.dtype=float128"], "tensors.x.dtype"),
    (DOC_EXAMPLE + ["--set", "tensors.x.shape=[8, -1]"], "tensors.x.shape"),
    (DOC_EXAMPLE + ["--set", "bs_per_rank=[8, 8]"], "bs_per_rank has 2 values"),
    (DOC_EXAMPLE + ["--set", "nokey"], "expected KEY=VALUE"),
    (DOC_EXAMPLE + ["--profile", "v0-nope"], "unknown spec profile"),
    (["/nonexistent/job.yaml"], "cannot read"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[b[1] for b in BAD])
def test_unusable_input_exits_2_with_one_line(argv, needle, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_bad_yaml_file(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("product: [A3\n", encoding="utf-8")
    rc, _, err = run([str(f)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    f.write_text("- 1\n- 2\n", encoding="utf-8")
    rc, _, err = run([str(f)], capsys)
    assert rc == 2 and "mapping" in err


def test_real_process_no_traceback():
    r = subprocess.run([sys.executable, "-m", "moe_cts.cli", "check", "--product", "A3", "--set", "bs=x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
