"""The v4-doc rows as data: ids stable, every row well-formed, check order, profiles that extend, waivers."""
from __future__ import annotations

import textwrap

import pytest

from moe_cts.model import ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_INVALID, ACLNN_ERR_PARAM_NULLPTR, OpParams
from moe_cts.spec import Constraint, load_profile, load_waivers

# Row ids are referenced by waivers, golden data, case ids and reports: changing one is a deliberate act.
STABLE_IDS = (
    'any.x.null',
    'any.expertIds.null',
    'any.expandXOut.null',
    'any.dynamicScalesOut.null',
    'any.assistInfoForCombineOut.null',
    'any.expertTokenNumsOut.null',
    'any.epRecvCountsOut.null',
    'any.tpRecvCountsOut.null',
    'any.groupEp.empty',
    'any.groupEp.maxlen',
    'A3.groupTp.maxlen',
    'any.x.dtype',
    'any.expertIds.dtype',
    'any.scales.dtype',
    'any.xActiveMask.dtype',
    'any.expertScales.dtype',
    'any.elasticInfo.dtype',
    'any.performanceInfo.dtype',
    'any.expandXOut.dtype',
    'any.dynamicScalesOut.dtype',
    'any.assistInfoForCombineOut.dtype',
    'any.expertTokenNumsOut.dtype',
    'any.epRecvCountsOut.dtype',
    'any.tpRecvCountsOut.dtype',
    'any.expandScalesOut.dtype',
    'A3.commAlg.enum',
    'A2.commAlg.enum',
    'A3.epWorldSize.range',
    'A2.epWorldSize.enum.fullmesh',
    'A2.epWorldSize.enum.hierarchy',
    'any.epRankId.range',
    'A2.moeExpertNum.range',
    'A3.moeExpertNum.range',
    'A2.groupTp.empty',
    'A2.tpWorldSize.zero',
    'A2.tpRankId.zero',
    'A2.expertShardType.zero',
    'A2.sharedExpertNum.zero',
    'A2.sharedExpertRankNum.zero',
    'A3.tpWorldSize.range',
    'A3.tpRankId.range',
    'A3.tpRankId.noTp',
    'A3.groupTp.empty',
    'any.groupTp.distinct',
    'A3.expertShardType.zero',
    'A3.sharedExpertNum.range',
    'A3.sharedExpertRankNum.range',
    'A3.sharedExpert.config',
    'any.moeExpertNum.divisible',
    'A2.localExpertNum.max',
    'A3.localExpertNum.world',
    'any.tp.localExpertNum',
    'any.quantMode.enum',
    'any.globalBs.value',
    'any.expertTokenNumsType.enum',
    'A2.zeroExpertNum.range',
    'A2.copyExpertNum.range',
    'A2.constExpertNum.zero',
    'A3.zeroExpertNum.range',
    'A3.copyExpertNum.range',
    'A3.constExpertNum.range',
    'any.specialExpertNum.sum',
    'any.elasticInfo.null',
    'any.x.ndim',
    'any.expertIds.ndim',
    'A2.bs.range',
    'A3.bs.range',
    'A2.h.range.fullmesh',
    'A2.h.range.hierarchy',
    'A2.h.align',
    'A3.h.range',
    'any.k.range',
    'any.k.experts',
    'any.expertIds.bs',
    'any.scales.quantMode',
    'A2.scales.hierarchy',
    'any.scales.shape',
    'A2.xActiveMask.ndim',
    'A3.xActiveMask.ndim',
    'any.xActiveMask.shape',
    'A2.expertScales.shape',
    'A3.expertScales.null',
    'any.performanceInfo.shape',
    'any.expandXOut.shape',
    'any.expandXOut.dtypeMatch',
    'any.dynamicScalesOut.shape',
    'any.assistInfoForCombineOut.shape',
    'any.expertTokenNumsOut.shape',
    'A3.epRecvCountsOut.shape',
    'A2.epRecvCountsOut.shape',
    'A3.tpRecvCountsOut.shape',
    'A2.expandScalesOut.shape',
    'A2.hcclBuffsize.fullmesh',
    'A2.hcclBuffsize.hierarchy',
    'A3.hcclBuffsize.fullmesh_v1',
    'A3.hcclBuffsize.fullmesh_v2',
    'A3.hcclBuffsize.tp',
    'any.globalBs.exact',
    'any.xActiveMask.prefix1d',
    'any.xActiveMask.unevenBsAllValid',
    'any.expertIds.values',
    'A3.expandScalesOut.unsupported',
    'A2.serverNum.enum',
    'A2.h.driverVersion',
    'any.consistency.allRanks',
    'any.rankIds.unique',
    'any.pairing.combine',
    'any.domain.exclusive',
    'A3.domain.superNode',
    # combine (CombineV4 / CombineAddRmsNormV2)
    'combine.expandX.null',
    'combine.expertIds.null',
    'combine.assistInfoForCombine.null',
    'combine.epSendCounts.null',
    'combine.expertScales.null',
    'combineAddRmsNorm.residualX.null',
    'combineAddRmsNorm.gamma.null',
    'combine.groupEp.empty',
    'combine.groupEp.maxlen',
    'combine.groupTp.maxlen',
    'combine.commQuantMode.enum',
    'combine.commQuantMode.tp',
    'combine.commQuantMode.h',
    'combine.activationScale.null',
    'combine.weightScale.null',
    'combine.groupList.null',
    'combine.sharedExpertX.shape',
    'combine.oriX.shape',
    'combine.oriX.required',
    'combine.constExpert.required',
    'combine.constExpert.dim0',
    'combine.constExpertV.dim1',
)

PROF = load_profile("v4-doc")


def test_ids_are_stable_and_unique():
    ids = tuple(r.id for r in PROF.rows)
    assert len(set(ids)) == len(ids)
    assert ids == STABLE_IDS


def test_every_row_is_well_formed():
    for r in PROF.rows:
        assert isinstance(r, Constraint)
        assert r.clause.strip(), r.id
        assert r.products and set(r.products) <= {"A2", "A3"}, r.id
        assert r.id.split(".")[0] in ("any", "A2", "A3", "combine", "combineAddRmsNorm"), r.id
        if r.id.startswith("combine"):
            assert "dispatch" not in r.ops and r.source, f"{r.id}: a combine row names its calls and its source"
        else:
            assert r.ops == ("dispatch",), r.id
        if r.id.startswith("combineAddRmsNorm."):
            assert r.ops == ("combine_add_rms_norm",), r.id
        if r.id.startswith("A2."):
            assert r.products == ("A2",), r.id
        if r.id.startswith("A3."):
            assert r.products == ("A3",), r.id
        assert r.kind in ("checked", "precondition"), r.id
        assert r.version == "v4-doc"
        assert isinstance(r.params, tuple) and r.params, r.id
        if r.kind == "checked":
            assert r.status in (ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_PARAM_INVALID, ACLNN_ERR_INNER_TILING_ERROR), r.id
            assert r.checkable, r.id
            assert r.breaker or r.range or r.enum or r.buffer, f"{r.id}: checked rows need a way to break them"
        else:
            assert r.status is None, r.id


def test_rows_are_in_kernel_check_order():
    order = {ACLNN_ERR_PARAM_NULLPTR: 0, ACLNN_ERR_PARAM_INVALID: 1, ACLNN_ERR_INNER_TILING_ERROR: 2}
    for op in ("dispatch", "combine", "combine_add_rms_norm"):  # per call: op_api checks, then tiling
        seq = [order[r.status] for r in PROF.rows if r.kind == "checked" and op in r.ops]
        assert seq == sorted(seq), op
    ids = [r.id for r in PROF.rows]
    # buffer rows after every shape row of dispatch
    assert max(i for i, r in enumerate(PROF.rows) if r.id.endswith(".shape") and "dispatch" in r.ops) < min(
        i for i, r in enumerate(PROF.rows) if r.buffer)
    # preconditions may sit next to related rows: they never decide the first (kernel) error
    assert ids.index("any.x.null") == 0


def test_coverage_of_the_doc_sections():
    ids = {r.id for r in PROF.rows}
    for must in ("A3.epWorldSize.range", "A2.epWorldSize.enum.fullmesh", "A3.h.range", "A2.bs.range", "A3.bs.range",
                 "any.k.range", "any.k.experts", "A3.localExpertNum.world", "A2.hcclBuffsize.fullmesh",
                 "A2.hcclBuffsize.hierarchy", "A3.hcclBuffsize.fullmesh_v1", "A3.hcclBuffsize.fullmesh_v2",
                 "A3.hcclBuffsize.tp", "any.consistency.allRanks", "any.specialExpertNum.sum", "any.xActiveMask.prefix1d",
                 "A2.serverNum.enum"):
        assert must in ids
    counts = {}
    for r in PROF.rows:
        for p in r.products:
            counts[(p, r.kind)] = counts.get((p, r.kind), 0) + 1
    assert counts[("A2", "checked")] >= 60 and counts[("A3", "checked")] >= 60


def test_contradictions_carry_their_decision():
    for cid in ("A3.commAlg.enum", "any.expandXOut.shape", "A3.hcclBuffsize.fullmesh_v1", "any.groupEp.maxlen",
                "A2.commAlg.enum", "any.performanceInfo.shape", "A2.sharedExpertNum.zero", "A2.epRecvCountsOut.shape"):
        assert PROF.row(cid).decision and len(PROF.row(cid).decision) > 40, cid


def test_row_lookup_and_cache():
    assert load_profile("v4-doc") is PROF
    assert PROF.name == "v4-doc"
    assert PROF.row("A3.h.range").range == {"var": "H", "param": "h", "min": 1024, "max": 8192}
    with pytest.raises(KeyError):
        PROF.row("A3.nope")


def test_unknown_profile_is_one_clear_line():
    with pytest.raises(ValueError) as e:
        load_profile("v9-nope")
    assert "\n" not in str(e.value) and "v9-nope" in str(e.value) and "v4-doc" in str(e.value)


def test_profile_that_extends(tmp_path):
    child = tmp_path / "v5-example.yaml"
    child.write_text(textwrap.dedent("""
        profile: v5-example
        extends: v4-doc
        remove: [A2.localExpertNum.max]
        rows:
        - id: A3.h.range
          patch: true
          clause: "H | A3: 取值范围[1024, 16384]。"
          range: {var: H, param: h, min: 1024, max: 16384}
        - id: A3.bs.even
          before: A3.h.range
          clause: "Bs | made-up: Bs 必须为偶数"
          products: [A3]
          status: 561002
          params: [bs]
          expr: bs % 2 == 0
          msg: "bs={bs} is odd"
          breaker: [{set: {bs: 7}}]
    """), encoding="utf-8")
    p = load_profile(str(child))
    assert p.name == "v5-example" and p.chain == ("v5-example", "v4-doc")
    ids = [r.id for r in p.rows]
    assert "A2.localExpertNum.max" not in ids
    assert ids.index("A3.bs.even") == ids.index("A3.h.range") - 1
    assert p.row("A3.h.range").version == "v5-example"
    assert p.row("A3.h.range").status == 561002  # patched: untouched fields inherited
    assert p.row("A3.bs.range").version == "v4-doc"
    base = OpParams(product="A3", ep_world_size=8, moe_expert_num=8, bs=8, h=8193, k=2)
    assert [v.constraint for v in PROF.check_params(base)] == ["A3.h.range"]
    assert p.check_params(base) == []
    assert [v.constraint for v in p.check_params(base.replace(bs=7))] == ["A3.bs.even"]
    assert p.break_case(base, "A3.bs.even")[0].bs == 7
    a2 = OpParams(product="A2", ep_world_size=16, moe_expert_num=16 * 25, bs=8, h=1024, k=2, comm_alg="fullmesh")
    assert "A2.localExpertNum.max" in [v.constraint for v in PROF.check_params(a2)]
    assert "A2.localExpertNum.max" not in [v.constraint for v in p.check_params(a2)]
    assert {w.constraint for w in load_waivers(str(child))} <= set(ids)


def test_waivers_are_data_and_name_real_rows():
    ws = load_waivers("v4-doc")
    assert len(ws) >= 10
    assert len({w.id for w in ws}) == len(ws)
    for w in ws:
        PROF.row(w.constraint)
        assert w.kernel_behaviour and w.source
    names = {w.constraint for w in ws}
    for cid in ("A2.tpWorldSize.zero", "A2.sharedExpertRankNum.zero", "A2.epWorldSize.enum.fullmesh", "A3.hcclBuffsize.fullmesh_v1"):
        assert cid in names


def test_doc_page_lists_waivers_and_decisions():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text(encoding="utf-8")
    for w in load_waivers("v4-doc"):
        assert f"`{w.id}`" in page, w.id
    for r in PROF.rows:
        if r.decision:
            assert f"**{r.id}**" in page, r.id
