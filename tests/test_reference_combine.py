"""Self-tests of the combine reference and the expert function: per-token formulas written out here."""
from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_cts.oracle import reference as R
from moe_cts.cases.experts import apply_experts, moe_constant, shared_constant
from moe_cts.cases.inputs import rank_inputs
from moe_cts.model import OpParams
from moe_cts.oracle.reference.quant import comm_quant_roundtrip

F32 = np.float32


def xdt(p):
    return ml_dtypes.bfloat16 if p.x_dtype == "bfloat16" else np.float16


def active_and_entries(p, d):
    ids, m = d["expert_ids"], d["x_active_mask"]
    bs = len(ids)
    if m is None:
        return np.ones(bs, bool), np.ones(ids.shape, bool)
    if m.ndim == 1:
        act = np.arange(bs) < int(m.sum())
        return act, np.repeat(act[:, None], p.k, 1)
    return m.any(-1), m.astype(bool)


def expected_token(p, d, b, moe_term, shared_term, S, SE):
    """acc in fp32 exactly as kernel-behaviour §4.2, one token, written as a plain loop."""
    M, Z, C, Q = p.moe_expert_num, p.zero_expert_num, p.copy_expert_num, p.const_expert_num
    _, ent = active_and_entries(p, d)
    x = d["x"][b].astype(F32)
    acc = np.zeros(p.h, F32)
    for k in range(p.k):
        if not ent[b, k]:
            continue
        e = int(d["expert_ids"][b, k])
        w = F32(d["expert_scales"][b, k])
        if e < M:
            term = moe_term(e)
        elif e < M + Z:
            continue
        elif e < M + Z + C:
            term = d["ori_x"][b].astype(F32)
        else:
            c = e - (M + Z + C)
            a1 = F32(d["const_expert_alpha_1"][c])
            a2 = F32(d["const_expert_alpha_2"][c])
            term = (a1 * x).astype(F32) + (a2 * d["const_expert_v"][c].astype(F32)).astype(F32)
        prod = (term * w).astype(F32)
        acc = (acc + prod).astype(F32)
    for j in range(SE):
        acc = (acc + shared_term(j)).astype(F32)
    if d.get("shared_expert_x") is not None:
        acc = (acc + d["shared_expert_x"][b].astype(F32)).astype(F32)
    return acc


def roles(p):
    S = p.shared_expert_rank_num if p.product == "A3" else 0
    return S, (0 if S == 0 else p.shared_expert_num)


def run_roundtrip(p, seed, routing="uniform", experts=True):
    ins = [rank_inputs(p, seed, g, routing) for g in range(p.world_size)]
    out = R.dispatch(p, ins)
    if experts:
        eo = [apply_experts(p, g, o["expand_x"], o["dynamic_scales"], o["expert_token_nums"], o["valid_rows"])
              for g, o in enumerate(out)]
    else:
        eo = [o["expand_x"] for o in out]
    return ins, out, R.combine(p, ins, eo)


def test_hand_case_special_experts_shared_and_mask():
    p = OpParams(product="A3", ep_world_size=3, moe_expert_num=2, bs=4, h=16, k=3, shared_expert_num=1,
                 shared_expert_rank_num=1, zero_expert_num=1, copy_expert_num=1, const_expert_num=1,
                 x_active_mask="2d", shared_expert_x=True)
    ins = [rank_inputs(p, 3, g) for g in range(3)]
    ins[0]["expert_ids"] = np.array([[0, 2, 3], [4, 1, 0], [3, 4, 2], [1, 0, 4]], np.int32)
    ins[0]["x_active_mask"] = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 1, 1]], bool)
    out = R.dispatch(p, ins)
    eo = [o["expand_x"] for o in out]  # identity experts
    res = R.combine(p, ins, eo)[0]
    assert res["active"].tolist() == [True, True, False, True]
    d = ins[0]
    x = d["x"].astype(F32)
    w = d["expert_scales"]
    cst = lambda b: (F32(d["const_expert_alpha_1"][0]) * x[b]).astype(F32) + (
        F32(d["const_expert_alpha_2"][0]) * d["const_expert_v"][0].astype(F32)).astype(F32)
    sx = d["shared_expert_x"].astype(F32)
    f = lambda a, t, ww: (a + (t * F32(ww)).astype(F32)).astype(F32)
    z = np.zeros(16, F32)
    e0 = f(f(z, x[0], w[0, 0]), x[0], w[0, 2])  # ids 0 (MoE), 2 (zero: skipped), 3 (copy)
    e1 = f(f(z, cst(1), w[1, 0]), x[1], w[1, 2])  # 4 (const), [masked], 0 (MoE)
    e3 = f(f(z, x[3], w[3, 1]), cst(3), w[3, 2])  # [masked], 0 (MoE), 4 (const)
    for b, acc in ((0, e0), (1, e1), (3, e3)):
        acc = ((acc + x[b]).astype(F32) + sx[b]).astype(F32)  # shared expert row, then shared_expert_x
        assert np.array_equal(res["x"][b].astype(F32), acc.astype(ml_dtypes.bfloat16).astype(F32)), b
    assert res["x"].shape == (4, 16) and res["x"].dtype == ml_dtypes.bfloat16


@st.composite
def cases(draw):
    prod = draw(st.sampled_from(["A3", "A3", "A2"]))
    W = draw(st.integers(2, 4))
    tp = prod == "A3" and draw(st.booleans()) and draw(st.booleans())
    if prod == "A3":
        S = draw(st.integers(0, W - 1))
        SE = draw(st.sampled_from([0, 1])) if S == 0 else draw(st.sampled_from([d for d in (1, 2) if S % d == 0]))
    else:
        S, SE = 0, 0
    L = 1 if tp else draw(st.integers(1, 2))
    M = L * (W - S)
    Z, C = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    Q = draw(st.integers(0, 1)) if prod == "A3" else 0
    K = draw(st.integers(1, min(4, M + Z + C + Q)))
    qm = draw(st.sampled_from([0, 2]))
    return OpParams(product=prod, ep_world_size=W, moe_expert_num=M, bs=draw(st.integers(1, 4)), h=16, k=K,
                    tp_world_size=2 if tp else 0, shared_expert_num=SE, shared_expert_rank_num=S, quant_mode=qm,
                    scales=qm == 2 and draw(st.booleans()),
                    x_active_mask=draw(st.sampled_from(["none", "1d", "2d"])),
                    expert_token_nums_type=draw(st.sampled_from([0, 1])), zero_expert_num=Z, copy_expert_num=C,
                    const_expert_num=Q, x_dtype=draw(st.sampled_from(["bfloat16", "float16"])),
                    shared_expert_x=draw(st.booleans())), draw(st.integers(0, 2**20))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_roundtrip_with_expert_function_bit_exact(case):
    """combine(experts(dispatch(x))) == the §4.2 formula with term = RNE(x_dispatched * c_e), per token."""
    p, seed = case
    if p.quant_mode == 2:  # the int8 payload is what the experts see: compare against the dequantised path
        p = p.replace(scales=False)
    ins, out, res = run_roundtrip(p, seed)
    S, SE = roles(p)
    dt = xdt(p)
    two = F32(2) if p.tp == 2 and p.product == "A3" else F32(1)  # TP: both peers return the same row, summed
    for g, d in enumerate(ins):
        act, _ = active_and_entries(p, d)
        assert res[g]["active"].tolist() == act.tolist()
        for b in np.nonzero(act)[0]:
            xin = d["x"][b].astype(F32)
            if p.quant_mode == 2:
                from moe_cts.oracle.reference.quant import dynamic_quant
                q, s = dynamic_quant(xin[None])
                xin = (q[0].astype(F32) * s[0]).astype(F32)

            def moe_term(e, xin=xin):
                return ((xin * moe_constant(e)).astype(F32).astype(dt).astype(F32) * two).astype(dt).astype(F32)

            def shared_term(j, xin=xin):
                return ((xin * shared_constant(j)).astype(F32).astype(dt).astype(F32) * two).astype(dt).astype(F32)

            acc = expected_token(p, d, b, moe_term, shared_term, S, SE)
            assert np.array_equal(res[g]["x"][b].astype(F32), acc.astype(dt).astype(F32)), (g, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_identity_roundtrip_close_to_weighted_sum(case):
    """Identity experts: combine(dispatch(x)) == sum_k w*x (+ shared rows, shared_expert_x) to bf16 rounding."""
    p, seed = case
    p = p.replace(quant_mode=0, scales=False, zero_expert_num=0, copy_expert_num=0, const_expert_num=0,
                  k=min(p.k, p.moe_expert_num))
    ins, out, res = run_roundtrip(p, seed, experts=False)
    S, SE = roles(p)
    tp = 2.0 if p.tp == 2 and p.product == "A3" else 1.0
    for g, d in enumerate(ins):
        act, ent = active_and_entries(p, d)
        x = d["x"].astype(np.float64)
        w = d["expert_scales"].astype(np.float64)
        for b in np.nonzero(act)[0]:
            exact = tp * (w[b] * ent[b]).sum() * x[b] + tp * SE * x[b]
            mag = tp * (w[b] * ent[b]).sum() * np.abs(x[b]) + tp * SE * np.abs(x[b])
            if d["shared_expert_x"] is not None:
                exact = exact + d["shared_expert_x"][b].astype(np.float64)
                mag = mag + np.abs(d["shared_expert_x"][b].astype(np.float64))
            got = res[g]["x"][b].astype(np.float64)
            eps = 2.0**-8 if p.x_dtype == "bfloat16" else 2.0**-11
            assert (np.abs(got - exact) <= eps * mag + 2.0**-20 * (p.k + SE + 1) * mag + 1e-30).all(), (g, b)


def test_apply_experts_layout():
    p = OpParams(product="A3", ep_world_size=3, moe_expert_num=4, bs=4, h=8, k=2, shared_expert_num=1,
                 shared_expert_rank_num=1, expert_token_nums_type=0)
    ins, out, _ = run_roundtrip(p, 2)
    for g in (1, 2):
        o = out[g]
        eo = apply_experts(p, g, o["expand_x"], o["dynamic_scales"], o["expert_token_nums"], o["valid_rows"])
        cum = o["expert_token_nums"]
        for i in range(o["valid_rows"]):
            l = int(np.searchsorted(cum, i, side="right"))
            e = (g - 1) * 2 + l
            exp = (o["expand_x"][i].astype(F32) * moe_constant(e)).astype(ml_dtypes.bfloat16)
            assert np.array_equal(eo[i].astype(F32), exp.astype(F32))
        assert not eo[o["valid_rows"]:].astype(F32).any()
    o = out[0]
    eo = apply_experts(p, 0, o["expand_x"], o["dynamic_scales"], o["expert_token_nums"], o["valid_rows"])
    n = o["valid_rows"]
    assert np.array_equal(eo[:n].astype(F32), (o["expand_x"][:n].astype(F32) * shared_constant(0)).astype(ml_dtypes.bfloat16).astype(F32))


def test_comm_quant_roundtrip_bounds_and_path():
    rng = np.random.default_rng(0)
    for dt in (ml_dtypes.bfloat16, np.float16):
        r = (rng.standard_normal((5, 20)) * 10).astype(F32).astype(dt)
        v = comm_quant_roundtrip(r, dt)
        assert v.dtype == np.dtype(dt) and v.shape == r.shape
        rf = r.astype(F32)
        for i in range(5):
            for g0 in range(0, 20, 8):
                grp = rf[i, g0:g0 + 8]
                s = np.abs(grp).max() / 127
                assert np.abs(v[i, g0:g0 + 8].astype(F32) - grp).max() <= s * 0.51 + np.abs(grp).max() * 2.0**-7
    r = np.array([[127, 1, 2, 3, 4, 5, 6, -63.5]], F32).astype(ml_dtypes.bfloat16)
    assert comm_quant_roundtrip(r, ml_dtypes.bfloat16).astype(F32).tolist() == [[127, 1, 2, 3, 4, 5, 6, -64]]
    p = OpParams(product="A3", ep_world_size=3, moe_expert_num=3, bs=3, h=16, k=2, comm_quant_mode=2)
    ins, out, res = run_roundtrip(p, 4, experts=False)
    p0 = p.replace(comm_quant_mode=0)
    res0 = R.combine(p0, ins, [o["expand_x"] for o in R.dispatch(p0, ins)])
    diff = max(np.abs(a["x"].astype(F32) - b["x"].astype(F32)).max() for a, b in zip(res, res0))
    assert 0 < diff < 2  # |x| <= 100: int8 groups lose a little


def test_add_rms_norm_and_tp_reduce():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=2, bs=3, h=32, k=2, tp_world_size=2,
                 combine_kind="add_rms_norm", norm_eps=1e-6)
    ins, out, res = run_roundtrip(p, 6, experts=False)
    for g, d in enumerate(ins):
        r = res[g]
        assert r["x"].shape == (3, 1, 32) and r["y"].shape == (3, 1, 32) and r["rstd"].shape == (3, 1, 1)
        x = d["x"].astype(np.float64)
        t = 2 * d["expert_scales"].astype(np.float64).sum(1)[:, None] * x + d["residual_x"].reshape(3, 32).astype(np.float64)
        assert np.allclose(r["x"].reshape(3, 32).astype(F32), t, rtol=2**-7, atol=1e-3)
        rstd = 1 / np.sqrt((t.astype(F32).astype(np.float64) ** 2).mean(1) + 1e-6)
        assert np.allclose(r["rstd"].reshape(3), rstd, rtol=1e-5)
        y = t * rstd[:, None] * d["gamma"].astype(np.float64)
        assert np.allclose(r["y"].reshape(3, 32).astype(F32), y, rtol=2**-6, atol=1e-2)


def test_const_vector_form_runs():
    p = OpParams(product="A3", ep_world_size=2, moe_expert_num=2, bs=4, h=16, k=2, const_expert_num=2,
                 const_alpha="vector", x_dtype="float16")
    ins, out, res = run_roundtrip(p, 1, routing="shared_only")
    for g, d in enumerate(ins):
        x = d["x"].astype(np.float64)
        for b in range(4):
            exp = 0.0
            for k in range(2):
                c = int(d["expert_ids"][b, k]) - 2
                l1 = (d["const_expert_alpha_1"][c].astype(np.float64) * x[b]).sum()
                l2 = (d["const_expert_alpha_2"][c].astype(np.float64) * x[b]).sum()
                m = max(l1, l2)
                a1, a2 = np.exp(l1 - m), np.exp(l2 - m)
                a1, a2 = a1 / (a1 + a2), a2 / (a1 + a2)
                exp = exp + (a1 * x[b] + a2 * d["const_expert_v"][c].astype(np.float64)) * float(d["expert_scales"][b, k])
            assert np.allclose(res[g]["x"][b].astype(np.float64), exp, rtol=2**-9, atol=1e-2)
