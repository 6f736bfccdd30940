"""The checker against the document: worked example, bounds from the row data, breakers, derived shapes, buffers."""
from __future__ import annotations

import dataclasses
import math
import time

import pytest

from moe_cts.model import CallDesc, OpParams, TensorDesc
from moe_cts.spec import (
    a_rows,
    hccl_buffsize_min_mb,
    load_profile,
    local_expert_num,
    normalised_shared_expert_num,
    output_descs,
    rpse,
)

PROF = load_profile("v4-doc")
OP_FIELDS = {f.name for f in dataclasses.fields(OpParams)}

# the doc's worked example (A3 调用示例): W=8, Bs=8, H=7168, K=3, SE=1, S=1, M=7, Z=C=Q=1, globalBs=Bs*W
DOC_EXAMPLE = OpParams(product="A3", ep_world_size=8, bs=8, h=7168, k=3, shared_expert_num=1, shared_expert_rank_num=1,
                       moe_expert_num=7, zero_expert_num=1, copy_expert_num=1, const_expert_num=1,
                       expert_token_nums_type=1, global_bs=64)
# legal bases, one per feature corner; each row is exercised from every base it applies to
BASES = {
    "A3-doc": DOC_EXAMPLE,
    "A3-tp-quant": OpParams(product="A3", ep_world_size=8, tp_world_size=2, bs=64, h=4096, k=2, moe_expert_num=8,
                            quant_mode=2, scales=True, x_active_mask="2d"),
    "A3-quant-mask": OpParams(product="A3", ep_world_size=4, bs=4, h=2048, k=4, moe_expert_num=8, quant_mode=2,
                              x_active_mask="1d", performance_info=True),
    "A3-v2": OpParams(product="A3", ep_world_size=4, bs=4, h=2048, k=4, moe_expert_num=8, comm_alg="fullmesh_v2"),
    "A2-fullmesh": OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=4, moe_expert_num=32, comm_alg="fullmesh",
                            x_active_mask="1d", expert_scales=True, zero_expert_num=1, quant_mode=2),
    "A2-fm32": OpParams(product="A2", ep_world_size=32, bs=8, h=1024, k=4, moe_expert_num=64, comm_alg=""),
    "A2-hierarchy": OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=4, moe_expert_num=32,
                             comm_alg="hierarchy", expert_scales=True),
}
# rows that cannot be violated alone (documented in docs/spec.md)
UNBREAKABLE: set = set()
# A2 has no TP and needs W >= 16 (so M >= 16 >= K): these "any" rows cannot fail alone there
UNBREAKABLE_ON = {"A2": {"any.groupTp.distinct", "any.tp.localExpertNum", "any.k.experts",
                          # A2 H is a multiple of 32 (so of 8); the reserved combine tensors are keywords only of
                          # combine_add_rms_norm, an A3 operator
                          "combine.commQuantMode.h", "combine.activationScale.null", "combine.weightScale.null",
                          "combine.groupList.null"},
                  "A3": set()}


def ids(vs, kind=None):
    return [v.constraint for v in vs if kind is None or v.kind == kind]


def applies(row, base):
    if base.product not in row.products:
        return False
    if row.comm_algs is None:
        return True
    from moe_cts.spec import effective_alg
    return effective_alg(base.product, base.comm_alg, {}) in row.comm_algs


@pytest.mark.parametrize("name", sorted(BASES))
def test_bases_are_legal(name):
    assert PROF.check_params(BASES[name]) == []


def test_doc_worked_example_is_legal_and_h8193_is_561002():
    assert PROF.check_params(DOC_EXAMPLE) == []
    vs = PROF.check_params(DOC_EXAMPLE.replace(h=8193))
    assert [(v.constraint, v.status, v.kind) for v in vs] == [("A3.h.range", 561002, "checked")]
    assert vs[0].message == "h=8193 not in [1024, 8192]"
    assert "8192" in vs[0].clause


# parameter sets written from the document alone: (params, env, expected first checked row or None)
DOC_CASES = [
    (OpParams(product="A3", ep_world_size=769, bs=1, h=1024, k=1, moe_expert_num=769), None, "A3.epWorldSize.range"),
    (OpParams(product="A3", ep_world_size=768, bs=1, h=1024, k=1, moe_expert_num=768), None, None),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=7168, k=8, moe_expert_num=32, comm_alg="fullmesh"), None, None),
    (OpParams(product="A2", ep_world_size=8, bs=8, h=7168, k=8, moe_expert_num=32, comm_alg="fullmesh"), None,
     "A2.epWorldSize.enum.fullmesh"),
    (OpParams(product="A2", ep_world_size=128, bs=8, h=1024, k=8, moe_expert_num=256, comm_alg="hierarchy"), None,
     "A2.epWorldSize.enum.hierarchy"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=7168, k=8, moe_expert_num=400, comm_alg="fullmesh"), None,
     "A2.localExpertNum.max"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=7168, k=8, moe_expert_num=400, comm_alg="hierarchy"), None, None),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=7200, k=8, moe_expert_num=32, comm_alg="fullmesh"), None,
     "A2.h.range.fullmesh"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=10240, k=8, moe_expert_num=32, comm_alg="hierarchy"), None, None),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1000, k=8, moe_expert_num=32), None, "A2.h.align"),
    (OpParams(product="A2", ep_world_size=16, bs=257, h=1024, k=8, moe_expert_num=32), None, "A2.bs.range"),
    (OpParams(product="A3", ep_world_size=4, tp_world_size=2, bs=8, h=1024, k=2, moe_expert_num=8), None,
     "any.tp.localExpertNum"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=6, shared_expert_num=3,
              shared_expert_rank_num=2), None, "A3.sharedExpert.config"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, quant_mode=1), None,
     "any.quantMode.enum"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=17, moe_expert_num=32), None, "any.k.range"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=9, moe_expert_num=8), None, "any.k.experts"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, scales=True), None,
     "any.scales.quantMode"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=32, comm_alg="hierarchy",
              quant_mode=2, scales=True), None, "A2.scales.hierarchy"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=32, quant_mode=2, scales=True),
     {"HCCL_INTRA_PCIE_ENABLE": 1, "HCCL_INTRA_ROCE_ENABLE": 0}, "A2.scales.hierarchy"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, comm_alg="hierarchy"), None,
     "A3.commAlg.enum"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, comm_alg="fullmesh_v1"), None, None),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, global_bs=63), None,
     "any.globalBs.value"),
    (OpParams(product="A3", ep_world_size=8, bs=8, h=1024, k=2, moe_expert_num=8, x_active_mask="2d"), None, None),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=32, x_active_mask="2d"), None,
     "A2.xActiveMask.ndim"),
    # the doc's own A3 example passes expertScales although the A3 note says "pass null": precondition only
    (DOC_EXAMPLE.replace(expert_scales=True), None, None),
    # tp_world_size=2 makes torch-style callers pass group_tp="tp", which A2 rejects first
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=32, tp_world_size=2), None,
     "A2.groupTp.empty"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=16, tp_world_size=1), None,
     "A2.tpWorldSize.zero"),
    (OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=2, moe_expert_num=32, const_expert_num=1), None,
     "A2.constExpertNum.zero"),
    (OpParams(product="A3", ep_world_size=8, bs=512, h=8192, k=16, moe_expert_num=256), None,
     "A3.hcclBuffsize.fullmesh_v1"),
]


@pytest.mark.parametrize("params,env,first", DOC_CASES, ids=[c[2] or f"legal{i}" for i, c in enumerate(DOC_CASES)])
def test_checker_agrees_with_the_document(params, env, first):
    got = ids(PROF.check_params(params, env=env), "checked")
    if first is None:
        assert got == []
    else:
        assert got and got[0] == first, got


def _set_value(base, param, value):
    """(params, overrides) with `param` set to `value` (an OpParams field, or an attrs./tensors. path)."""
    if param in OP_FIELDS:
        return base.replace(**{param: value}), {}
    if param.startswith(("tensors.", "attrs.")):
        return base, {param: value}
    return base, {f"attrs.{param}": value}


def _range_cases():
    out = []
    for r in PROF.rows:
        if r.range and r.kind == "checked":
            for name, base in BASES.items():
                if applies(r, base) and PROF.boundary_values(r.id, base):
                    out.append((r.id, name))
                    break
    return out


RANGE_CASES = _range_cases()


def test_every_range_row_has_a_base():
    with_range = {r.id for r in PROF.rows if r.range and r.kind == "checked"}
    assert {c for c, _ in RANGE_CASES} == with_range


@pytest.mark.parametrize("cid,base_name", RANGE_CASES, ids=[c for c, _ in RANGE_CASES])
def test_range_rows_inside_pass_outside_fail(cid, base_name):
    """Driven by the row data: just inside each bound the row holds, just outside it is violated."""
    r, base = PROF.row(cid), BASES[base_name]
    bv = PROF.boundary_values(cid, base)
    lo, hi = bv[0][1], bv[1][1]
    step = int(r.range.get("step", 1))
    param = r.range["param"]
    for value in [v for _, v in bv]:
        p, ov = _set_value(base, param, value)
        assert cid not in ids(PROF.check_params(p, overrides=ov)), (param, value)
    for value in (lo - step, hi + step):
        p, ov = _set_value(base, param, value)
        vs = [v for v in PROF.check_params(p, overrides=ov) if v.constraint == cid]
        assert vs and vs[0].status == r.status and vs[0].kind == "checked", (param, value)
        assert f"{param}={value} not in [{lo}, {hi}]" == vs[0].message


def test_enum_rows_accept_every_listed_value():
    for r in PROF.rows:
        if not (r.enum and r.kind == "checked"):
            continue
        base = next((b for b in BASES.values() if applies(r, b)), None)
        assert base is not None, r.id
        for param, value in PROF.boundary_values(r.id):
            p, ov = _set_value(base, param, value)
            try:
                vs = PROF.check_params(p, overrides=ov)
            except TypeError:
                continue
            assert r.id not in ids(vs), (r.id, value)


def _break_cases():
    out = []
    for r in PROF.rows:
        if r.kind == "checked" and r.id not in UNBREAKABLE:
            out.append(r.id)
    return out


@pytest.mark.parametrize("cid", _break_cases())
def test_break_case_violates_exactly_that_row(cid):
    r = PROF.row(cid)
    done = 0
    for base in BASES.values():
        if base.product not in r.products:
            continue
        got = PROF.break_case(base, cid)
        if got is None:
            continue
        p, ov = got
        vs = [v for v in PROF.check_params(p, overrides=ov) if v.kind == "checked"]
        assert [v.constraint for v in vs] == [cid]
        assert vs[0].status == r.status
        done += 1
    assert done >= 1, f"no base could break {cid}"


def test_break_case_refuses_preconditions_and_illegal_bases():
    assert PROF.break_case(DOC_EXAMPLE, "any.globalBs.exact") is None
    assert PROF.break_case(DOC_EXAMPLE.replace(h=8193), "A3.bs.range") is None
    assert PROF.break_case(DOC_EXAMPLE, "A2.bs.range") is None  # other product


def test_elastic_info_dtype_then_presence():
    vs = PROF.check_params(DOC_EXAMPLE, overrides={"tensors.elastic_info": {"dtype": "float32", "shape": [20]}})
    assert ids(vs) == ["any.elasticInfo.dtype"] and vs[0].status == 161002
    vs = PROF.check_params(DOC_EXAMPLE, overrides={"tensors.elastic_info": {"dtype": "int32", "shape": [20]}})
    assert ids(vs) == ["any.elasticInfo.null"] and vs[0].status == 561002


def test_precondition_is_never_a_checked_violation():
    vs = PROF.check_params(DOC_EXAMPLE.replace(expert_scales=True))
    assert [(v.constraint, v.kind, v.status) for v in vs] == [("A3.expertScales.null", "precondition", None)]
    p = DOC_EXAMPLE.replace(global_bs=128)  # a multiple of W above Bs*W: rank-legal, world-illegal
    vs = PROF.check_params(p)
    assert [(v.constraint, v.kind, v.status) for v in vs] == [("any.globalBs.exact", "precondition", None)]
    uneven = OpParams(product="A3", ep_world_size=4, bs=8, h=1024, k=2, moe_expert_num=8, bs_per_rank=(8, 4, 8, 2))
    assert [(v.constraint, v.kind) for v in PROF.check_params(uneven)] == [("any.globalBs.exact", "precondition")]
    assert PROF.check_params(uneven.replace(global_bs=32)) == []


def test_call_desc_layout_and_overrides():
    p = BASES["A3-tp-quant"]
    c = PROF.call_desc(p, 5)
    assert isinstance(c, CallDesc) and c.product == "A3"
    assert c.attrs["ep_rank_id"] == 2 and c.attrs["tp_rank_id"] == 1
    assert c.attrs["group_ep"] == "ep" and c.attrs["group_tp"] == "tp"
    assert c.env == {"HCCL_BUFFSIZE": 200}
    assert c.tensors["x"] == TensorDesc("bfloat16", (64, 4096))
    assert c.tensors["scales"] == TensorDesc("float32", (8, 4096))  # SE normalised to 0
    assert c.tensors["x_active_mask"] == TensorDesc("bool", (64, 2))
    assert c.tensors["expert_scales"] is None and c.tensors["performance_info"] is None
    assert set(c.tensors) >= {"x", "expert_ids", "scales", "x_active_mask", "expert_scales", "performance_info",
                              "expand_x", "dynamic_scales", "assist_info_for_combine", "expert_token_nums",
                              "ep_recv_counts", "tp_recv_counts", "expand_scales"}
    c = PROF.call_desc(DOC_EXAMPLE, 0, env={"HCCL_BUFFSIZE": 50},
                       overrides={"tensors.x.dtype": "float32", "tensors.expert_ids.shape": [8, 3, 1],
                                  "tensors.scales": None, "attrs.group_ep": "", "attrs.comm_alg": None,
                                  "env.HCCL_BUFFSIZE": 123})
    assert c.tensors["x"].dtype == "float32" and c.tensors["expert_ids"].shape == (8, 3, 1)
    assert c.attrs["group_ep"] == "" and c.attrs["comm_alg"] is None and c.env["HCCL_BUFFSIZE"] == 123
    vs = PROF.check(c)
    assert ids(vs)[:2] == ["any.groupEp.empty", "any.x.dtype"]
    assert PROF.call_desc(DOC_EXAMPLE, 0).attrs["group_tp"] == ""


def test_a3_comm_alg_null_is_legal():
    assert PROF.check_params(DOC_EXAMPLE, overrides={"attrs.comm_alg": None}) == []


def test_derived_quantities():
    p = DOC_EXAMPLE
    assert local_expert_num(p, 0) == 1 and local_expert_num(p, 3) == 1
    assert a_rows(p, 0) == 64 and a_rows(p, 0, "doc") == 64 and a_rows(p, 5) == 64
    assert normalised_shared_expert_num(p) == 1 and rpse(p) == 1
    q = OpParams(product="A3", ep_world_size=8, bs=4, h=1024, k=2, moe_expert_num=10, shared_expert_rank_num=3)
    assert normalised_shared_expert_num(q) == 1 and rpse(q) == 3
    assert a_rows(q, 0, "doc") == 4 * 8 // 3 and a_rows(q, 0, "kernel") == 4 * math.ceil(8 / 3)
    assert local_expert_num(q, 3) == 2 and a_rows(q, 3) == 32 * 2
    r = OpParams(product="A2", ep_world_size=16, bs=8, h=1024, k=4, moe_expert_num=32)
    assert normalised_shared_expert_num(r) == 0 and rpse(r) is None


def _shapes(d):
    return [(v.shape, v.dtype) for v in d.values()]


def test_output_descs_match_torch_npu_meta():
    # torch-npu-api.md 1b, measured with the real meta functions: bs=8, h=7168, k=8, E=16, W=4
    base = OpParams(product="A3", ep_world_size=4, bs=8, h=7168, k=8, moe_expert_num=16)
    assert _shapes(output_descs(base, 0)) == [((128, 7168), "bfloat16"), ((128,), "float32"), ((16384,), "int32"),
                                             ((4,), "int64"), ((16,), "int32"), ((0,), "int32"), ((0,), "float32")]
    assert output_descs(base.replace(quant_mode=2), 0)["expand_x"] == TensorDesc("int8", (128, 7168))
    sh = base.replace(shared_expert_rank_num=1, expert_scales=True)
    assert [s for s, _ in _shapes(output_descs(sh, 0))] == [(32, 7168), (32,), (4096,), (1,), (4,), (0,), (32,)]
    tp = base.replace(tp_world_size=2, moe_expert_num=4)
    d = output_descs(tp, 1)
    assert d["expand_x"].shape == (64, 7168) and d["dynamic_scales"].shape == (64,)
    assert d["ep_recv_counts"].shape == (8,) and d["tp_recv_counts"].shape == (2,)


def test_hccl_buffsize_minimum_per_product_and_alg():
    MiB = 1024 * 1024
    a2 = OpParams(product="A2", ep_world_size=16, bs=8, h=7168, k=8, moe_expert_num=32, comm_alg="fullmesh")
    need = 2 * (8 * 16 * min(2, 8) * 7168 * 2 + 2 * MiB)
    assert hccl_buffsize_min_mb(a2) == math.ceil(need / MiB)
    hi = a2.replace(comm_alg="hierarchy")
    need = 32 * 8 * (7168 * 2 + 4 * 8 * 4) + 104 * MiB
    assert hccl_buffsize_min_mb(hi) == math.ceil(need / MiB)
    a3 = OpParams(product="A3", ep_world_size=8, bs=64, h=4096, k=2, moe_expert_num=8, tp_world_size=2)
    tok_d = (math.ceil((8192 + 64) / 512)) * 512
    need = 2 * (1 * 64 * 8 * tok_d + 2 * 64 * 8192)
    assert hccl_buffsize_min_mb(a3, "ep") == math.ceil(need / MiB)
    a = 64 * 8
    need_tp = (a * math.ceil((8192 + 44) / 512) * 512 + a * 8192) * 2
    assert hccl_buffsize_min_mb(a3, "tp") == math.ceil(need_tp / MiB)
    assert hccl_buffsize_min_mb(a3.replace(tp_world_size=0), "tp") == 0
    v2 = a3.replace(tp_world_size=0, comm_alg="fullmesh_v2")
    tok_d2 = math.ceil((8192 + 64) / 480) * 512
    assert hccl_buffsize_min_mb(v2) == math.ceil(2 * (64 * 8 * tok_d2 + 2 * 64 * 8192) / MiB)
    # globalBs sets maxBs
    g = OpParams(product="A3", ep_world_size=8, bs=8, h=4096, k=2, moe_expert_num=8, global_bs=8 * 64)
    assert hccl_buffsize_min_mb(g) == hccl_buffsize_min_mb(g.replace(bs=64, global_bs=0))


@pytest.mark.parametrize("name", ["A3-doc", "A3-tp-quant", "A2-fullmesh", "A2-hierarchy", "A3-v2"])
def test_buffer_at_minimum_is_legal_one_below_is_not(name):
    p = BASES[name]
    need = max(hccl_buffsize_min_mb(p, "ep"), hccl_buffsize_min_mb(p, "tp"))
    assert PROF.check_params(p, env={"HCCL_BUFFSIZE": need}) == []
    vs = PROF.check_params(p, env={"HCCL_BUFFSIZE": need - 1})
    assert vs and all(".hcclBuffsize." in v.constraint for v in vs)


def test_checker_is_fast():
    p = BASES["A3-tp-quant"]
    t = time.perf_counter()
    for _ in range(500):
        PROF.check_params(p)
    assert (time.perf_counter() - t) / 500 < 0.005


def test_first_error_is_what_the_kernel_returns():
    c = PROF.call_desc(DOC_EXAMPLE.replace(h=8193), 3, overrides={"tensors.x.dtype": "float32"})
    assert PROF.first_error(c).constraint == "any.x.dtype" and PROF.first_error(c).status == 161002
    assert PROF.first_error(PROF.call_desc(DOC_EXAMPLE.replace(global_bs=128), 0)) is None


SMALL_BASES = [  # minimal bases like the case generator's: each row should still be breakable from one of them
    OpParams(product="A3", ep_world_size=4, moe_expert_num=8, bs=4, h=1024, k=3),
    OpParams(product="A2", ep_world_size=16, moe_expert_num=16, bs=2, h=256, k=2, comm_alg="fullmesh", expert_scales=True),
]


@pytest.mark.parametrize("product", ["A2", "A3"])
def test_break_case_from_minimal_bases(product):
    base = next(b for b in SMALL_BASES if b.product == product)
    missing = []
    for r in PROF.rows:
        if r.kind != "checked" or product not in r.products or r.id in UNBREAKABLE | UNBREAKABLE_ON[product]:
            continue
        got = PROF.break_case(base, r.id)
        if got is None:
            missing.append(r.id)
            continue
        assert ids(PROF.check_params(got[0], overrides=got[1]), "checked") == [r.id]
    assert missing == []


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_ints = st.integers(min_value=-2, max_value=2100)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(product=st.sampled_from(["A2", "A3"]), W=st.integers(0, 800), M=_ints, bs=st.integers(-1, 600),
       h=st.integers(-1, 11000), k=st.integers(-1, 20), tp=st.integers(-1, 3), S=st.integers(-1, 10),
       SE=st.integers(-1, 6), qm=st.integers(-1, 3), gbs=st.integers(-1, 5000),
       alg=st.sampled_from(["", "fullmesh", "hierarchy", "fullmesh_v1", "fullmesh_v2", "x"]),
       mask=st.sampled_from(["none", "1d", "2d"]), flags=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_checker_never_raises(product, W, M, bs, h, k, tp, S, SE, qm, gbs, alg, mask, flags):
    p = OpParams(product=product, ep_world_size=W, moe_expert_num=M, bs=bs, h=h, k=k, tp_world_size=tp,
                 shared_expert_rank_num=S, shared_expert_num=SE, quant_mode=qm, global_bs=gbs, comm_alg=alg,
                 x_active_mask=mask, scales=flags[0], expert_scales=flags[1], performance_info=flags[2])
    vs = PROF.check_params(p)
    assert all(v.kind in ("checked", "precondition") for v in vs)
    assert all((v.status is None) == (v.kind == "precondition") for v in vs)
    if W >= 1:  # what `moe-cts check` prints must never raise either (W < 1 is rejected as unusable input)
        from moe_cts.cli.check import evaluate, render

        render(evaluate(PROF, p, {}, {}))
