"""The verdict helpers on good and bad input (the array-api-tests meta_tests pattern): each must pass what
the doc allows, fail what it forbids, and say in its message what was expected, what came and where."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from moe_cts.cases import BASES, Case
from moe_cts.model import AclnnError, BindingError
from moe_cts.oracle.compare import Comparison
from moe_cts.spec import load_waivers
from moe_cts.suite import CaseFailure, expect_status, require_success, verdict
from moe_cts.suite.plugin import fixture_skip, selection_marks, verdict_marks
from moe_cts.world import RankOutcome
from moe_cts.world.fixtures import load_fixture

BASE = BASES["A3"]


def _illegal(op="dispatch", status=561002, binding=None, constraint="A3.h.range", product="A3"):
    params = BASES[product]
    return Case(id=f"{product}-illegal-x", params=params, tier="smoke", kind="illegal", feature=constraint, seed=1,
                expect_status=status, expect_constraint=constraint, expect_binding=binding, expect_op=op)


def _err(status, op="dispatch"):
    e = AclnnError(status, "text", constraint="row")
    e.op = op
    return e


def _ok(rank):
    return RankOutcome(rank, {"runs": []}, None)


# ------------------------------------------------------------------------------------------ expect_status
def test_expect_status_passes_when_every_rank_rejects_with_the_status():
    expect_status(_illegal(), [RankOutcome(r, None, _err(561002)) for r in range(4)])


def test_expect_status_names_the_rank_that_accepted():
    outs = [RankOutcome(0, None, _err(561002)), _ok(1)]
    with pytest.raises(CaseFailure) as ei:
        expect_status(_illegal(), outs)
    msg = str(ei.value)
    assert "rank 1: the call was ACCEPTED" in msg and "561002" in msg and "A3.h.range" in msg


def test_expect_status_names_a_wrong_status():
    with pytest.raises(CaseFailure) as ei:
        expect_status(_illegal(), [RankOutcome(0, None, _err(161002))])
    assert "rank 0: got aclnn status 161002" in str(ei.value)


def test_expect_status_refuses_the_right_status_from_the_wrong_call():
    # a combine row's case: dispatch rejecting it with the same status is not conformance
    with pytest.raises(CaseFailure) as ei:
        expect_status(_illegal(op="combine"), [RankOutcome(0, None, _err(561002, op="dispatch"))])
    assert "dispatch rejected the call" in str(ei.value) and "combine is the call that must reject it" in str(ei.value)
    expect_status(_illegal(op="combine"), [RankOutcome(0, None, _err(561002, op="combine"))])


def test_expect_status_binding_rejection():
    case = _illegal(binding="0 <= ep_rank_id < ep_world_size")
    expect_status(case, [RankOutcome(0, None, BindingError("ERR01001", "x"))])
    with pytest.raises(CaseFailure) as ei:
        expect_status(case, [RankOutcome(0, None, _err(561002))])
    assert "torch_npu binding" in str(ei.value) and "rank 0: got aclnn status 561002" in str(ei.value)


# ------------------------------------------------------------------------------------------ require_success
def test_require_success_returns_values_in_rank_order():
    assert require_success(_illegal(), [_ok(0), _ok(1)]) == [{"runs": []}, {"runs": []}]


def test_require_success_lists_the_ranks_that_raised():
    with pytest.raises(CaseFailure) as ei:
        require_success(_illegal(), [_ok(0), RankOutcome(1, None, _err(561002))])
    msg = str(ei.value)
    assert "rejected on 1 of 2 rank(s)" in msg and "rank 1: aclnn status 561002" in msg and "expected success" in msg


# ------------------------------------------------------------------------------------------ verdict
def test_verdict_fails_on_a_failure_and_keeps_its_report():
    cmp = Comparison("case-1")
    cmp.add("fail", 2, "expand_x", 1, 8, "row 3: expected 1.0, actual 2.0")
    with pytest.raises(CaseFailure) as ei:
        verdict(cmp, "dispatch")
    assert "case case-1, rank 2, output expand_x: 1 of 8 wrong" in str(ei.value) and "row 3" in str(ei.value)


def test_verdict_warns_on_drift_without_failing():
    cmp = Comparison("case-2")
    cmp.add("drift", 0, "assist_info_for_combine", 3, 12, "triples differ")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        verdict(cmp, "dispatch")
    assert any("implementation-defined drift" in str(w.message) and "assist_info_for_combine" in str(w.message)
               for w in got)


def test_verdict_of_an_empty_comparison_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verdict(Comparison("case-3"), "combine")


# ------------------------------------------------------------------------------------------ the plugin's marks
def _state(fixture="sim", unavailable=None, profile="v4-doc"):
    return SimpleNamespace(fixture=load_fixture(fixture), unavailable=unavailable, waivers=load_waivers(profile))


def _names(marks):
    return [m.name for m in marks]


def test_selection_marks_put_a_case_in_its_tier_and_every_larger_one():
    c = Case(id="c", params=BASE, tier="nightly", kind="legal", feature="base", seed=1)
    assert _names(selection_marks(c)) == ["nightly", "full", "a3", "legal"]


def test_fixture_skip_names_both_numbers():
    big = Case(id="c", params=BASE.replace(ep_world_size=32, moe_expert_num=32), tier="full", kind="legal",
               feature="base", seed=1)
    assert fixture_skip(big, _state("cuda-2")) == "case needs 32 ranks, fixture cuda-2 has 2"
    assert fixture_skip(big, _state("sim")) is None  # CPU worlds of any size run (loopback)
    a2 = Case(id="c", params=BASES["A2"], tier="smoke", kind="legal", feature="base", seed=1)
    assert "serves ['A3'], case is A2" in fixture_skip(a2, _state("a3-16"))
    assert fixture_skip(a2, _state(unavailable="npu backend unavailable: x")) == "npu backend unavailable: x"


def test_verdict_marks_waive_only_on_the_waivers_product():
    a2 = _illegal(constraint="any.globalBs.value", product="A2")
    a3 = _illegal(constraint="any.globalBs.value", product="A3")
    assert "xfail" in _names(verdict_marks(a2, _state())) and "waived" in _names(verdict_marks(a2, _state()))
    assert verdict_marks(a3, _state()) == []  # A2-global-bs-unchecked says nothing about A3


def test_verdict_marks_skip_what_the_fixture_cannot_run():
    marks = verdict_marks(_illegal(), _state(unavailable="no NPU"))
    assert _names(marks) == ["skip"] and marks[0].kwargs["reason"] == "no NPU"


def test_comparison_helpers_see_bit_differences():
    from moe_cts.oracle.compare import ulp_distance

    a = np.array([1.0, -0.0], np.float32)
    assert ulp_distance(a, a).max() == 0
    assert ulp_distance(a, np.nextafter(a, np.float32(2))).max() == 1
