"""performance_info: shape (ep_world_size,) int64, non-negative, accumulates across calls, zeroing
works, absent when not passed; where the product's profile rejects it, expect that status."""
import dataclasses

import pytest

from moe_cts import suite
from moe_cts.cases import checked_violations

pytestmark = pytest.mark.perf_info  # select this concern with -m perf_info
CASE_KIND = "legal"
CASE_FILTER = lambda c: c.feature == "base"


def test_performance_info(case, cts):
    p = case.params.replace(performance_info=True)
    rejected = checked_violations(p, profile=case.profile)
    if rejected:
        # the profile says this product does not take performance_info: it must be rejected
        pcase = dataclasses.replace(case, id=case.id + "-perf", params=p, kind="illegal",
                                    expect_status=rejected[0].status, expect_constraint=rejected[0].constraint)
        suite.expect_status(pcase, suite.run_case(cts, pcase, combine=False))
        return
    outcomes = cts.pool.run(case.params.world_size, suite.JOB, {"case": case.to_dict(), "perf_probe": True},
                            layout=(case.params.ep_world_size, case.params.tp), product=case.product,
                            deadline_s=cts.deadline())
    values = suite.require_success(case, outcomes)
    W = case.params.ep_world_size
    for g, v in enumerate(values):
        where = f"case {case.id}, rank {g}, performance_info"
        assert v["dtype"] == "int64" and v["shape"] == [W], f"{where}: expected int64 ({W},), got {v['dtype']} {tuple(v['shape'])}"
        a1, a2, s1, z1, S = v["after_1"], v["after_2"], v["after_sentinel"], v["after_zero"], v["sentinel"]
        assert (a1 >= 0).all() and (a2 >= 0).all(), f"{where}: expected non-negative times, got {a1} then {a2}"
        assert (a2 >= a1).all() and a2.sum() > a1.sum(), (
            f"{where}: expected the second call to add to the first (accumulation), got {a1} then {a2}")
        assert (s1 >= S).all(), f"{where}: a call on a tensor holding {S} must add to it, got {s1}"
        assert (z1 < S).all() and (z1 >= 0).all(), (
            f"{where}: after the user zeroes it, a call must start from 0 (values below {S}), got {z1}")
        assert v["absent_outputs"] == 7, f"{where}: dispatch without performance_info returned {v['absent_outputs']} outputs, expected 7"
