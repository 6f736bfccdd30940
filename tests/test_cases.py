"""Case generation: legal cases break nothing, illegal ones break exactly their row, ids are stable."""
import os
import subprocess
import sys

import pytest

from moe_cts import cases
from moe_cts.cases import checked_violations

ALL = cases.generate()


def test_there_are_cases_of_every_kind_and_product():
    kinds = {(c.product, c.kind) for c in ALL}
    assert {("A2", "legal"), ("A2", "illegal"), ("A3", "legal"), ("A3", "illegal")} <= kinds, kinds
    assert cases.select(ALL, tier="smoke"), "the smoke tier must not be empty"


@pytest.mark.parametrize("case", [c for c in ALL if c.legal], ids=lambda c: c.id)
def test_legal_case_breaks_no_checked_row(case):
    v = checked_violations(case.params, case.overrides_dict() or None, case.profile)
    assert not v, f"legal case {case.id} violates {[x.constraint + ': ' + x.message for x in v]}"


@pytest.mark.parametrize("case", [c for c in ALL if c.kind == "illegal"], ids=lambda c: c.id)
def test_illegal_case_breaks_exactly_its_row(case):
    ov = dict(case.overrides)
    ov.update({f"env.{k}": int(v) if str(v).isdigit() else v for k, v in case.env})
    fired = sorted({v.constraint for v in checked_violations(case.params, ov, case.profile)})
    assert fired == [case.expect_constraint], (
        f"illegal case {case.id}: expected exactly [{case.expect_constraint}] to fire, got {fired}")
    row = next(r for r in __import__("moe_cts.spec", fromlist=["load_profile"]).load_profile(case.profile).rows
               if r.id == case.expect_constraint)
    assert case.expect_status == row.status, f"{case.id}: expects {case.expect_status}, row says {row.status}"


def test_tiers_nest():
    smoke = {c.id for c in cases.select(ALL, tier="smoke")}
    nightly = {c.id for c in cases.select(ALL, tier="nightly")}
    full = {c.id for c in cases.select(ALL, tier="full")}
    assert smoke <= nightly <= full and len(full) == len(ALL)


def test_ids_are_stable_across_processes_and_hash_seeds():
    code = "from moe_cts import cases; print('\\n'.join(c.id + ' ' + str(c.seed) for c in cases.generate()))"
    outs = []
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   timeout=120, check=True).stdout)
    assert outs[0] == outs[1], "case ids or seeds depend on the hash seed"
    assert outs[0].splitlines() == [f"{c.id} {c.seed}" for c in ALL], "ids differ between processes"


def test_every_checked_row_has_an_illegal_and_a_legal_case_or_a_stated_reason():
    missing = [(cid, legal, illegal) for cid, legal, illegal, note in cases.coverage(ALL) if not note and (legal == 0 or illegal == 0)]
    assert not missing, f"checked rows without cases (id, legal, illegal): {missing}"
