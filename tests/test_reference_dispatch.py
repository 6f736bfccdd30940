"""Self-tests of the dispatch reference: hand-computed tiny cases, the doc's worked example, properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_cts.oracle import reference as R
from moe_cts.cases.inputs import decode_tag, decode_tag_quant, rank_inputs
from moe_cts.model import OpParams
from moe_cts.oracle.reference.quant import dynamic_quant

F32 = np.float32


def world(p, seed=1, routing="uniform", ids=None, masks=None):
    ins = [rank_inputs(p, seed, g, routing) for g in range(p.world_size)]
    for g, d in enumerate(ins):
        if ids is not None:
            d["expert_ids"] = np.asarray(ids[g], np.int32)
        if masks is not None:
            d["x_active_mask"] = None if masks[g] is None else np.asarray(masks[g], bool)
    return ins


def tags(o, n=None, quant=False):
    n = o["valid_rows"] if n is None else n
    if quant:
        return [decode_tag_quant(o["expand_x"][i], o["dynamic_scales"][i]) for i in range(n)]
    return [decode_tag(o["expand_x"][i]) for i in range(n)]


def triples(o):
    return [tuple(t) for t in o["assist_info_for_combine"][: o["valid_assist"]].reshape(-1, 3).tolist()]


# ------------------------------------------------------------------ hand-computed cases
def test_moe_order_counts_triples():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=4, bs=3, h=8, k=2, expert_token_nums_type=1)
    ids = [[[0, 3], [1, 0], [2, 1]], [[3, 2], [0, 1], [1, 3]]]
    out = R.dispatch(p, world(p, ids=ids))
    o = out[0]
    assert triples(o) == [(0, 0, 0), (0, 1, 1), (1, 1, 0), (0, 1, 0), (0, 2, 1), (1, 1, 1), (1, 2, 0)]
    assert tags(o) == [(0, 0), (0, 1), (1, 1), (0, 1), (0, 2), (1, 1), (1, 2)]
    assert o["ep_recv_counts"].tolist() == [2, 3, 5, 7]
    assert o["expert_token_nums"].tolist() == [3, 4]
    o = out[1]
    assert triples(o) == [(0, 2, 0), (1, 0, 1), (0, 0, 1), (1, 0, 0), (1, 2, 1)]
    assert o["ep_recv_counts"].tolist() == [1, 2, 3, 5]
    assert o["expert_token_nums"].tolist() == [2, 3]
    # torch_npu shapes: A = globalBs * min(L, K) = 6 * 2
    assert o["expand_x"].shape == (12, 8) and o["dynamic_scales"].shape == (12,)
    assert o["assist_info_for_combine"].shape == (12 * 128,) and o["tp_recv_counts"].shape == (0,)
    assert o["expand_scales"].shape == (0,) and o["ep_recv_counts"].shape == (4,)
    assert not o["expand_x"][5:].astype(F32).any()  # rows past the valid count zero-filled
    o0 = R.dispatch(p.replace(expert_token_nums_type=0), world(p, ids=ids))[0]
    assert o0["expert_token_nums"].tolist() == [3, 7]


def test_shared_ranks_rpse_and_2d_mask():
    p = OpParams(product="A3", ep_world_size=5, moe_expert_num=3, bs=2, h=8, k=1, shared_expert_num=1,
                 shared_expert_rank_num=2, x_active_mask="2d")
    ids = [[[s % 3], [(s + 1) % 3]] for s in range(5)]
    masks = [[[True], [True]] for _ in range(5)]
    masks[1] = [[False], [True]]  # token 0 of rank 1: all K false -> not sent, not even to shared experts
    out = R.dispatch(p, world(p, ids=ids, masks=masks), variant="kernel")
    assert tags(out[0]) == [(0, 0), (0, 1), (2, 0), (2, 1), (4, 0), (4, 1)]
    assert triples(out[0]) == [(0, 0, 1), (0, 1, 1), (2, 0, 1), (2, 1, 1), (4, 0, 1), (4, 1, 1)]
    assert tags(out[1]) == [(1, 1), (3, 0), (3, 1)]
    assert out[1]["ep_recv_counts"].tolist() == [0, 1, 1, 3, 3]
    assert out[1]["expert_token_nums"].tolist() == [3]
    assert out[0]["expand_x"].shape == (2 * 3, 8)  # kernel: maxBs * ceil(W / rpse)
    doc = R.dispatch(p, world(p, ids=ids, masks=masks), variant="doc")
    assert doc[1]["expand_x"].shape == (10 * 1 // 2, 8)  # doc: Bs * W * SE / S
    assert doc[0]["expand_x"].shape == (6, 8)  # ... grown to what rank 0 receives (3 sources)
    # MoE rank 2 (expert 0): (s, b) in source order, shared-expert ranks included as sources
    assert tags(out[2]) == [(0, 0), (2, 1), (3, 0)]
    assert out[2]["expand_x"].shape == (10, 8)


def test_one_d_mask_is_a_count():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=2, bs=3, h=8, k=1, x_active_mask="1d")
    ids = [[[0], [0], [0]], [[0], [0], [0]]]
    masks = [[True, False, True], [True, True, False]]  # rank 0 is illegal (not a prefix): kernel sums it
    o = R.dispatch(p, world(p, ids=ids, masks=masks))[0]
    assert tags(o) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_special_experts_not_sent():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=2, bs=2, h=8, k=3, zero_expert_num=1,
                 copy_expert_num=1, const_expert_num=1)
    ids = [[[2, 0, 4], [3, 1, 0]], [[1, 3, 2], [4, 2, 3]]]
    out = R.dispatch(p, world(p, ids=ids))
    assert triples(out[0]) == [(0, 0, 1), (0, 1, 2)]
    assert triples(out[1]) == [(0, 1, 1), (1, 0, 0)]
    assert out[1]["ep_recv_counts"].tolist() == [1, 2]


def test_tp2_merge():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=2, bs=1, h=8, k=1, tp_world_size=2)
    ids = [[[1]], [[0]], [[1]], [[1]]]  # global ranks: g = ep*2 + tp
    out = R.dispatch(p, world(p, ids=ids))
    exp = {
        0: ([(1, 0)], 0, [0, 0, 1, 1], [0, 1], 1),
        1: ([(1, 0)], 1, [1, 1, 0, 0], [0, 1], 1),
        2: ([(0, 0), (2, 0), (3, 0)], 2, [1, 2, 0, 1], [2, 1], 3),
        3: ([(3, 0), (0, 0), (2, 0)], 1, [0, 1, 1, 2], [2, 1], 3),
    }
    for g, (tg, n_own, ep, tp, etn) in exp.items():
        o = out[g]
        assert tags(o) == tg, g
        assert o["valid_assist"] == 3 * n_own
        assert o["ep_recv_counts"].tolist() == ep and o["tp_recv_counts"].tolist() == tp
        assert o["expert_token_nums"].tolist() == [etn]
        assert o["expand_x"].shape == (2 * 2, 8) and o["dynamic_scales"].shape == (4,)
    assert triples(out[2]) == [(0, 0, 0), (1, 0, 0)]  # EP ranks inside the EP group


def test_quant_math_by_hand():
    x = np.array([[2.5, 3.5, -2.5, 127.0, 0.5, 1.5]], F32)  # amax 127 -> ds = 1: ties to even
    q, s = dynamic_quant(x)
    assert q.tolist() == [[2, 4, -2, 127, 0, 2]] and s.tolist() == [1.0]
    # 1/ds, not amax/127: find an amax where the two differ by an ulp and check which one is produced
    for a in np.arange(1, 2000, dtype=F32) * F32(0.37):
        a = F32(a)
        if F32(1) / (F32(127) / a) != a / F32(127):
            break
    else:
        pytest.skip("no distinguishing amax")
    q, s = dynamic_quant(np.array([[a, -a / 2]], F32))
    assert s[0] == F32(1) / (F32(127) / a) and s[0] != a / F32(127)
    ds = F32(127) / a
    assert q.tolist() == [[127, int(np.rint(F32(-a / 2) * ds))]]
    assert dynamic_quant(np.zeros((1, 4), F32))[0].tolist() == [[0, 0, 0, 0]]


def test_quant_per_destination_smooth_rows():
    p = OpParams(product="A3", ep_world_size=3, moe_expert_num=2, bs=2, h=16, k=2, shared_expert_num=1,
                 shared_expert_rank_num=1, quant_mode=2, scales=True)
    ins = world(p, ids=[[[0, 1], [1, 0]]] * 3)
    out = R.dispatch(p, ins)
    sc = ins[0]["scales"]
    x0 = ins[0]["x"][0].astype(F32)
    for rank, row in ((0, 0), (1, 1), (2, 2)):  # shared expert j=0 -> row 0; MoE e -> row e + SE
        q, s = dynamic_quant((x0 * sc[row])[None])
        o = out[rank]
        i = [k for k, t in enumerate(tags(o, quant=True)) if t == (0, 0)][0]
        assert np.array_equal(o["expand_x"][i], q[0]) and o["dynamic_scales"][i] == s[0]


def test_a2_assist_slots_and_expand_scales():
    p = OpParams(product="A2", ep_world_size=2, moe_expert_num=2, bs=3, h=8, k=2, zero_expert_num=1,
                 expert_scales=True, shared_expert_num=0)
    ids = [[[0, 2], [2, 0], [0, 1]], [[0, 1], [1, 0], [0, 1]]]
    ins = world(p, ids=ids)
    out = R.dispatch(p, ins)
    assert out[0]["assist_info_for_combine"][:6].tolist() == [0, 0, 0, 1, 2, 0]
    assert out[0]["valid_assist"] == 6
    assert out[1]["assist_info_for_combine"][:6].tolist() == [0, 0, 1, 1, 2, 2]
    o = out[0]  # expert 0: (s0,b0,k0), (s0,b1,k1), (s0,b2,k0), (s1,b0,k0), (s1,b1,k1), (s1,b2,k0)
    w = [ins[0]["expert_scales"][0, 0], ins[0]["expert_scales"][1, 1], ins[0]["expert_scales"][2, 0],
         ins[1]["expert_scales"][0, 0], ins[1]["expert_scales"][1, 1], ins[1]["expert_scales"][2, 0]]
    assert o["expand_scales"][:6].tolist() == [float(v) for v in w]
    assert o["expand_scales"].shape == (6 * 1,)


def test_doc_worked_example():
    """The doc's example: 8 ranks, Bs=8, H=7168, K=3, 1 shared expert on rank 0, 7 MoE experts,
    one zero/copy/const expert each, expertIds[b] = [0, 1, 2] for every token, globalBs = 64."""
    p = OpParams(product="A3", ep_world_size=8, moe_expert_num=7, bs=8, h=7168, k=3, shared_expert_num=1,
                 shared_expert_rank_num=1, global_bs=64, zero_expert_num=1, copy_expert_num=1, const_expert_num=1,
                 expert_token_nums_type=1)
    ins = world(p, ids=[[[0, 1, 2]] * 8] * 8)
    out = R.dispatch(p, ins)
    allt = [(s, b) for s in range(8) for b in range(8)]
    assert tags(out[0]) == allt and triples(out[0]) == [(s, b, 3) for s, b in allt]
    assert out[0]["expand_x"].shape == (64, 7168) and out[0]["expert_token_nums"].tolist() == [64]
    for r in (1, 2, 3):
        assert tags(out[r]) == allt and triples(out[r]) == [(s, b, r - 1) for s, b in allt]
        assert out[r]["ep_recv_counts"].tolist() == [8 * (s + 1) for s in range(8)]
    for r in range(4, 8):
        assert out[r]["valid_rows"] == 0 and out[r]["expert_token_nums"].tolist() == [0]
        assert out[r]["expand_x"].shape == (64, 7168)
    assert np.array_equal(out[1]["expand_x"][:64], np.concatenate([d["x"] for d in ins]))


# ------------------------------------------------------------------ properties
@st.composite
def cases(draw):
    prod = draw(st.sampled_from(["A3", "A3", "A2"]))
    W = draw(st.integers(2, 5))
    tp = prod == "A3" and draw(st.booleans()) and draw(st.booleans())
    if prod == "A3":
        S = draw(st.integers(0, W - 1))
        SE = draw(st.sampled_from([0, 1])) if S == 0 else draw(st.sampled_from([d for d in (1, 2, 3, 4) if S % d == 0]))
    else:
        S, SE = 0, 0
    L = 1 if tp else draw(st.integers(1, 3))
    M = L * (W - S)
    Z, C = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    Q = draw(st.integers(0, 2)) if prod == "A3" else 0
    K = draw(st.integers(1, min(4, M + Z + C + Q)))
    bs = draw(st.integers(1, 5))
    uneven = draw(st.booleans()) and not tp
    bpr = tuple(draw(st.integers(1, bs)) for _ in range(W - 1)) + (bs,) if uneven else None
    qm = draw(st.sampled_from([0, 2]))
    p = OpParams(product=prod, ep_world_size=W, moe_expert_num=M, bs=bs, h=16, k=K, tp_world_size=2 if tp else 0,
                 shared_expert_num=SE, shared_expert_rank_num=S, quant_mode=qm,
                 scales=qm == 2 and draw(st.booleans()), x_active_mask=draw(st.sampled_from(["none", "1d", "2d"])),
                 global_bs=bs * W if (uneven or draw(st.booleans())) else 0, bs_per_rank=bpr,
                 expert_token_nums_type=draw(st.sampled_from([0, 1])), zero_expert_num=Z, copy_expert_num=C,
                 const_expert_num=Q, x_dtype=draw(st.sampled_from(["bfloat16", "float16"])),
                 expert_scales=prod == "A2" and draw(st.booleans()))
    return p, draw(st.integers(0, 2**20)), draw(st.sampled_from(["uniform", "hot_expert", "empty_ranks", "special_heavy", "shared_only"]))


def valid_entries(p, ins):
    """(g, b, e) of every entry that must reach a MoE expert, computed from the doc rules directly."""
    exp = []
    for g, d in enumerate(ins):
        ids, m = d["expert_ids"], d["x_active_mask"]
        bs = len(ids)
        for b in range(bs):
            for k in range(p.k):
                if m is None:
                    ok = True
                elif m.ndim == 1:
                    ok = b < int(m.sum())
                else:
                    ok = bool(m[b, k])
                if ok and ids[b, k] < p.moe_expert_num:
                    exp.append((g, b, int(ids[b, k])))
    return sorted(exp)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_dispatch_properties(case):
    p, seed, routing = case
    ins = [rank_inputs(p, seed, g, routing) for g in range(p.world_size)]
    out = R.dispatch(p, ins, variant="kernel")
    T = p.tp
    S = p.shared_expert_rank_num if p.product == "A3" else 0
    SE = 0 if S == 0 else p.shared_expert_num
    L = p.moe_expert_num // (p.ep_world_size - S)
    got = []
    quant = p.quant_mode == 2
    for g, o in enumerate(out):
        assert o == o  # noqa
        ref1 = R.dispatch_rank(p, seed, g, routing, variant="kernel")
        for key in o:
            assert np.array_equal(np.asarray(o[key]), np.asarray(ref1[key])), (g, key)
        d = p.ep_rank(g)
        n = o["valid_rows"]
        assert o["expand_x"].shape[0] >= n
        etn = o["expert_token_nums"].astype(np.int64)
        counts = etn if p.expert_token_nums_type == 1 else np.diff(np.concatenate([[0], etn]))
        assert counts.sum() == n and (counts >= 0).all()
        n_own = o["valid_assist"] // 3 if p.product == "A3" else n
        ln = 1 if d < S else L
        epc = o["ep_recv_counts"][: p.ep_world_size * ln]
        assert (np.diff(epc) >= 0).all() and (epc[-1] if len(epc) else 0) == n_own
        tg = tags(o, quant=quant)
        if quant:  # dequantised int8 within amax/254 of the (smooth-scaled) input
            for i, (sg, b) in enumerate(tg):
                xf = ins[sg]["x"][b].astype(F32)
                if p.scales:
                    row = (d // (S // SE)) if d < S else None
                    if row is None:
                        l = int(np.searchsorted(np.cumsum(counts), i, side="right"))
                        row = (d - S) * L + l + SE
                    xf = xf * ins[sg]["scales"][row]
                amax = np.abs(xf).max()
                deq = o["expand_x"][i].astype(F32) * o["dynamic_scales"][i]
                assert np.abs(deq - xf).max() <= amax / 254 * (1 + 1e-5)
        if d >= S:
            cum = np.cumsum(counts)
            for i, (sg, b) in enumerate(tg[:n_own]):  # TP: the peer half repeats the peer group
                l = int(np.searchsorted(cum, i, side="right"))
                got.append((sg, b, (d - S) * L + l))
                if p.product == "A3":
                    tri = o["assist_info_for_combine"][3 * i : 3 * i + 3].tolist()
                    assert tri[0] == p.ep_rank(sg) and tri[1] == b and ins[sg]["expert_ids"][b, tri[2]] == (d - S) * L + l
        else:  # shared rank: the active tokens of sources s with s % rpse == d % rpse
            rpse = S // SE
            t = g % T
            exp_sh = []
            for s in range(p.ep_world_size):
                if s % rpse != d % rpse:
                    continue
                m = ins[s * T + t]["x_active_mask"]
                bs = len(ins[s * T + t]["x"])
                act = np.ones(bs, bool) if m is None else (np.arange(bs) < m.sum() if m.ndim == 1 else m.any(-1))
                exp_sh += [(s * T + t, b) for b in range(bs) if act[b]]
            assert tg[:n_own] == exp_sh
    assert sorted(got) == valid_entries(p, ins)  # every valid (token, k) to a MoE expert lands exactly once
