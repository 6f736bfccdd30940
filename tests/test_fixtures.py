"""Fixture files: the shipped ones load; a malformed one gives ONE line naming file, key, expectation."""
from __future__ import annotations

import os
import textwrap

import pytest

from moe_cts.world.fixtures import Fixture, FixtureError, list_fixtures, load_fixture

ROOT = os.path.join(os.path.dirname(__file__), "..")
GOOD = """\
products: [A3]
backend: sim
device_type: cpu
devices: 4
"""


def test_shipped_fixtures_load():
    names = {p.stem for p in list_fixtures()}
    assert {"sim", "cuda-2", "a2-16", "a3-16"} <= names
    for p in list_fixtures():
        fx = load_fixture(p)
        assert isinstance(fx, Fixture) and fx.name == p.stem


def test_sim_is_the_default_and_serves_both_products():
    fx = load_fixture()
    assert fx.name == "sim" and fx.products == ("A2", "A3") and fx.backend == "sim"
    assert (fx.device_type, fx.devices, fx.dist_backend, fx.start_method) == ("cpu", 16, "gloo", "fork")
    assert fx.loopback_above == 16 and fx.hosts == ["localhost"] and fx.hccl_buffsize_mb == 200
    assert fx.deadlines.case_s > 0 and fx.deadlines.start_s > 0 and fx.spec_profile == "v4-doc"


def test_hardware_fixtures():
    a2 = load_fixture(os.path.join(ROOT, "fixtures", "a2-16.yaml"))
    assert a2.products == ("A2",) and a2.launcher == "torchrun" and a2.total_devices == 16
    assert a2.env["TASK_QUEUE_ENABLE"] == "0" and a2.dist_backend == "hccl"
    a3 = load_fixture("a3-16")
    assert a3.products == ("A3",) and a3.devices == 16 and a3.start_method == "spawn"
    cu = load_fixture("cuda-2")
    assert (cu.device_type, cu.devices, cu.dist_backend, cu.start_method) == ("cuda", 2, "nccl", "spawn")


def test_defaults(tmp_path):
    p = tmp_path / "mini.yaml"
    p.write_text(GOOD)
    fx = load_fixture(p)
    assert fx.name == "mini" and fx.deadlines.case_s == 60 and fx.env == {} and fx.hccl_buffsize_mb == 200
    assert fx.loopback_above == 4 and fx.launcher == "local"


@pytest.mark.parametrize("extra, key, expected", [
    ("deadlines: {case_s: abc}", "deadlines.case_s", "expected a positive number, got 'abc'"),
    ("deadlines: {case_s: -1}", "deadlines.case_s", "expected a positive number, got -1"),
    ("deadlines: {cases: 3}", "deadlines.cases", "got an unknown key"),
    ("colour: blue", "colour", "got an unknown key"),
    ("hosts: 3", "hosts", "expected a non-empty list of host names, got 3"),
    ("env: {HCCL_BUFFSIZE: [1]}", "env.HCCL_BUFFSIZE", "expected a string"),
    ("env: {HCCL_BUFFSIZE: 'big'}", "env.HCCL_BUFFSIZE", "expected a positive integer number of MB"),
    ("start_method: threads", "start_method", "expected one of 'fork', 'forkserver', 'spawn', got 'threads'"),
    ("dist_backend: nccl", "dist_backend", "expected one of 'gloo', got 'nccl'"),
    ("loopback_above: true", "loopback_above", "expected a positive integer, got True"),
    ("torchrun: {store_port: x}", "torchrun.store_port", "expected a positive integer"),
])
def test_malformed_one_line(tmp_path, extra, key, expected):
    p = tmp_path / "x.yaml"
    p.write_text(GOOD + extra + "\n")
    with pytest.raises(FixtureError) as ei:
        load_fixture(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: key '{key}': "), msg
    assert expected in msg, msg


@pytest.mark.parametrize("text, key, expected", [
    (GOOD.replace("devices: 4", "devices: four"), "devices", "expected a positive integer, got 'four'"),
    (GOOD.replace("products: [A3]", "products: [A4]"), "products[0]", "expected one of 'A2', 'A3', got 'A4'"),
    (GOOD.replace("backend: sim\n", ""), "backend", "the key is required"),
    (GOOD.replace("device_type: cpu", "device_type: cuda") + "start_method: fork\n", "start_method",
     "expected one of 'spawn', 'forkserver', got 'fork'"),
])
def test_wrong_values(tmp_path, text, key, expected):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    with pytest.raises(FixtureError, match=None) as ei:
        load_fixture(p)
    msg = str(ei.value)
    assert "\n" not in msg and f"key '{key}'" in msg and expected in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(FixtureError) as ei:
        load_fixture(tmp_path / "nope.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "nope.yaml") + ":") and "no such file" in msg


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        products: [A3
        backend: sim
        """))
    with pytest.raises(FixtureError) as ei:
        load_fixture(p)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{p}: expected valid YAML, got a parse error at line"), msg


def test_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(FixtureError, match="expected a mapping of fixture keys at top level, got list"):
        load_fixture(p)


def test_capacity():
    assert load_fixture("sim").capacity() is None  # loopback beyond 16
    assert load_fixture("cuda-2").capacity() == 2
    assert load_fixture("a2-16").capacity() == 16 and load_fixture("a3-16").capacity() == 16
