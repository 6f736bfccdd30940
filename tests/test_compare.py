"""compare.py: the policy table decides fail vs drift, and reports name where and what."""
import ml_dtypes
import numpy as np
import pytest

from moe_cts.oracle.compare import Tolerance, compare_combine, compare_dispatch, ulp_distance
from moe_cts.model import OpParams

P = OpParams(product="A3", ep_world_size=2, moe_expert_num=4, bs=3, h=4, k=2, expert_token_nums_type=1)


def _tag(row):
    return int(row[0]), int(row[1])


def _ref(rows=5):
    x = np.zeros((8, 4), ml_dtypes.bfloat16)
    for i in range(rows):
        x[i] = [i % 2, i, 1.5 + i, -2.0]  # column 0/1 are the (rank, token) tags
    return {
        "expand_x": x, "dynamic_scales": np.zeros(8, np.float32),
        "assist_info_for_combine": np.arange(3 * 8, dtype=np.int32),
        "expert_token_nums": np.array([3, 2], np.int64), "ep_recv_counts": np.array([1, 3, 4, 5], np.int32),
        "tp_recv_counts": np.zeros(0, np.int32), "expand_scales": np.zeros(0, np.float32), "valid_rows": rows,
    }


def _copy(d):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def test_identical_outputs_give_no_findings():
    ref = _ref()
    cmp = compare_dispatch("c1", P, 0, ref, _copy(ref), tags=_tag)
    assert cmp.findings == [], cmp.report()


def test_rows_past_valid_count_are_never_compared():
    ref = _ref()
    got = _copy(ref)
    got["expand_x"][6] = 99  # row 6 >= valid_rows: undefined
    assert compare_dispatch("c1", P, 0, ref, got, tags=_tag).findings == []


def test_reordered_rows_inside_an_expert_are_drift_not_failure():
    ref = _ref()
    got = _copy(ref)
    got["expand_x"][[0, 1]] = got["expand_x"][[1, 0]]
    cmp = compare_dispatch("c1", P, 0, ref, got, tags=_tag)
    assert not cmp.failures, cmp.report()
    assert [f.output for f in cmp.drifts] == ["expand_x(row order)"], cmp.report()


def test_row_moved_to_another_expert_is_a_failure_naming_expert_and_source():
    ref = _ref()
    got = _copy(ref)
    got["expand_x"][[2, 3]] = got["expand_x"][[3, 2]]  # rows 2 (expert 0) and 3 (expert 1) swap groups
    cmp = compare_dispatch("case-x", P, 1, ref, got, tags=_tag)
    assert len(cmp.failures) == 1, cmp.report()
    text = cmp.report("fail")
    assert "case case-x, rank 1, output expand_x" in text
    assert "local expert 0" in text and "(rank 0, token 2)" in text, text


def test_corrupted_value_is_a_failure_with_the_column():
    ref = _ref()
    got = _copy(ref)
    got["expand_x"][4, 3] = 7.0
    text = compare_dispatch("c", P, 0, ref, got, tags=_tag).report("fail")
    assert "column 3" in text and "expected" in text and "actual" in text, text


def test_expert_token_nums_is_normative():
    ref = _ref()
    got = _copy(ref)
    got["expert_token_nums"] = np.array([3, 3], np.int64)
    cmp = compare_dispatch("c", P, 0, ref, got, tags=_tag)
    assert any(f.output == "expert_token_nums" and f.severity == "fail" for f in cmp.findings), cmp.report()


def test_aux_outputs_are_drift():
    ref = _ref()
    got = _copy(ref)
    got["ep_recv_counts"] = np.array([1, 2, 4, 5], np.int32)
    got["assist_info_for_combine"][0] = 77
    cmp = compare_dispatch("c", P, 0, ref, got, tags=_tag)
    assert not cmp.failures
    assert {f.output for f in cmp.drifts} == {"ep_recv_counts", "assist_info_for_combine"}


def test_dynamic_scales_travel_with_rows_and_hw_tolerance_is_opt_in():
    q = P.replace(quant_mode=2)
    ref = _ref()
    ref["expand_x"] = (np.arange(32).reshape(8, 4) % 100).astype(np.int8)
    ref["dynamic_scales"] = np.linspace(0.1, 0.8, 8).astype(np.float32)
    got = _copy(ref)
    got["expand_x"][1, 2] += 1
    assert compare_dispatch("c", q, 0, ref, got).failures
    tol = Tolerance(int8_steps=1, scale_rel=1e-6)
    cmp = compare_dispatch("c", q, 0, ref, got, tolerance=tol)
    assert not cmp.failures and cmp.drifts and "tolerance: int8 +-1" in cmp.report()
    got2 = _copy(ref)
    got2["dynamic_scales"][0] = np.nextafter(got2["dynamic_scales"][0], np.float32(1))
    assert compare_dispatch("c", q, 0, ref, got2).failures, "a 1-ulp scale difference must fail when exact"


def test_ulp_distance_across_zero_and_signs():
    a = np.array([1.0, -1.0, 0.0, 1.0], ml_dtypes.bfloat16)
    b = np.array([1.0, -1.0, -0.0, -0.0], ml_dtypes.bfloat16)
    b.view(np.uint16)[0] += 1  # the next bf16 above 1.0
    d = ulp_distance(a, b)
    assert list(d) == [1, 0, 0, 16256], "1 vs -0 is as far as 1 is from +0 (0x3f80 steps)"


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_combine_one_ulp_passes_two_fail(dtype):
    x = np.array([[1.0, 2.0], [3.0, -4.0]], dtype)
    ref = {"x": x, "active": np.array([True, True])}
    one = x.copy()
    one.view(np.uint16)[0, 1] += 1
    assert not compare_combine("c", P, 0, ref, {"x": one}).failures
    two = x.copy()
    two.view(np.uint16)[1, 0] += 2
    f = compare_combine("c", P, 3, ref, {"x": two}).failures
    assert len(f) == 1 and "token 1" in f[0].detail and f[0].rank == 3


def test_combine_inactive_tokens_are_undefined():
    x = np.array([[1.0, 2.0], [3.0, -4.0]], ml_dtypes.bfloat16)
    got = x.copy()
    got[1] = 100
    assert not compare_combine("c", P, 0, {"x": x, "active": np.array([True, False])}, {"x": got}).failures


def test_a_rank_that_receives_nothing_compares_cleanly():
    ref = _ref(rows=0)
    ref["expert_token_nums"] = np.array([0, 0], np.int64)
    assert compare_dispatch("c", P, 0, ref, _copy(ref), tags=_tag).findings == []
    got = _copy(ref)
    got["expert_token_nums"] = np.array([0, 1], np.int64)
    assert compare_dispatch("c", P, 0, ref, got, tags=_tag).failures
