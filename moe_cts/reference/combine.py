"""Combine golden model (kernel-behaviour.md §4.2-§4.6).

For each active token b of rank g, in fp32:
    acc = 0
    for k in 0..K-1 (valid entries only):  acc = acc + fp32(term_k) * w[b,k]   (Muls, then Add: two roundings)
        term = returned row (MoE id) | 0 (zero expert: skipped) | oriX (copy) | CONST (const)
    for j in 0..SE-1: acc = acc + fp32(shared row j)                          (unweighted)
    acc = acc + fp32(sharedExpertX[b])                                         (unweighted, if given)
    xOut = RNE(acc) in x dtype      (AddRmsNorm: t = acc + fp32(residual) first)
The returned row of an expert rank is its expert output at the row the token occupied; TP=2 adds the
peer's copy first (bf16: RNE_bf16(fp32+fp32); fp16: native half add = RNE of the exact sum);
commQuantMode 2 passes it through the int8 group-of-8 round trip.
"""
from __future__ import annotations

import numpy as np

from moe_cts.reference.geometry import Geo, x_dtype
from moe_cts.reference.quant import comm_quant_roundtrip

F32 = np.float32


def _tp_reduce(own: np.ndarray, peer: np.ndarray, xdt) -> np.ndarray:
    if np.dtype(xdt) == np.float16:
        return (own.astype(np.float64) + peer.astype(np.float64)).astype(np.float16)
    return (peer.astype(F32) + own.astype(F32)).astype(F32).astype(xdt)


def returned_rows(g: Geo, groups: dict, plans: dict, expert_out: list) -> dict:
    """Per EP group t: (concatenated returned rows of every destination, offsets per destination)."""
    xdt = x_dtype(g.p)
    res = {}
    for t in groups:
        chunks, offs, o = [], [], 0
        for d in range(g.W):
            n = len(plans[(t, d)]["s"])
            gr = d * g.T + t
            eo = np.asarray(expert_out[gr])
            own = eo[:n].astype(xdt, copy=False)
            if g.merge and n:
                n_peer_own = len(plans[(1 - t, d)]["s"])
                peer = np.asarray(expert_out[d * g.T + (1 - t)])[n_peer_own : n_peer_own + n].astype(xdt, copy=False)
                own = _tp_reduce(own, peer, xdt)
            if g.p.comm_quant_mode == 2 and n:
                own = comm_quant_roundtrip(own, xdt)
            chunks.append(own)
            offs.append(o)
            o += n
        cat = np.concatenate(chunks) if chunks else np.zeros((0, g.H), xdt)
        res[t] = (cat, np.array(offs, np.int64))
    return res


def positions(g: Geo, grp, plans: dict, offs: np.ndarray):
    """moe_pos[s,b,k] and shared_pos[s,b,j]: index into the group's concatenated returned rows (-1: none)."""
    W, K = g.W, g.K
    B = grp.ids.shape[1]
    moe = np.full((W, B, K), -1, np.int64)
    sh = np.full((W, B, max(g.SE, 1)), -1, np.int64)
    for d in range(W):
        pl = plans[(grp.t, d)]
        n = len(pl["s"])
        if not n:
            continue
        idx = offs[d] + np.arange(n)
        if g.is_shared(d):
            sh[pl["s"], pl["b"], d // g.rpse] = idx
        else:
            moe[pl["s"], pl["b"], pl["k"]] = idx
    return moe, sh


def _const_term(p, inp, c_idx: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """CONST(c, x) in fp32 for rows xf with const-expert index c_idx."""
    a1 = np.asarray(inp["const_expert_alpha_1"])
    a2 = np.asarray(inp["const_expert_alpha_2"])
    v = np.asarray(inp["const_expert_v"]).astype(F32)[c_idx]
    if a1.ndim == 1:  # seed doc / old kernel: scalar alphas (Q,)
        s1 = a1.astype(F32)[c_idx][:, None]
        s2 = a2.astype(F32)[c_idx][:, None]
        return ((s1 * xf).astype(F32) + (s2 * v).astype(F32)).astype(F32)
    # newer (Q,H) softmax form: NOT bit-exact (hardware Sum order / Exp precision unknown)
    A1 = a1.astype(F32)[c_idx]
    A2 = a2.astype(F32)[c_idx]
    l1 = np.sum((A1 * xf).astype(F32).astype(np.float64), axis=-1).astype(F32)
    l2 = np.sum((A2 * xf).astype(F32).astype(np.float64), axis=-1).astype(F32)
    m = np.maximum(l1, l2)
    e1 = np.exp((l1 - m).astype(F32)).astype(F32)
    e2 = np.exp((l2 - m).astype(F32)).astype(F32)
    den = (e1 + e2).astype(F32)
    w1 = (e1 / den).astype(F32)[:, None]
    w2 = (e2 / den).astype(F32)[:, None]
    return ((w1 * xf).astype(F32) + (w2 * v).astype(F32)).astype(F32)


def token_outputs(g: Geo, grp, s: int, inp: dict, ret: np.ndarray, moe_pos, sh_pos) -> dict:
    """Combine result of the token owner = EP rank s of group grp."""
    p = g.p
    xdt = x_dtype(p)
    M, Z, C = g.M, p.zero_expert_num, p.copy_expert_num
    bs = int(grp.bs[s])
    H = g.H
    act = grp.act[s, :bs]
    ent = grp.ent[s, :bs]
    ids = grp.ids[s, :bs]
    # entries that count in combine: the dispatch-valid ones plus special ids under the mask
    if p.x_active_mask == "2d":
        m = np.asarray(inp["x_active_mask"], bool)[:bs]
    else:
        m = np.broadcast_to(act[:, None], ids.shape)
    w = np.asarray(inp["expert_scales"], F32)[:bs]
    acc = np.zeros((bs, H), F32)
    orif = np.asarray(inp["ori_x"]).astype(F32) if inp.get("ori_x") is not None else None
    for k in range(g.K):
        e = ids[:, k]
        wk = w[:, k][:, None]
        if g.nsp == 0:
            sel = np.nonzero(m[:, k] & act)[0]
            term = ret[moe_pos[s, sel, k]].astype(F32) if len(sel) else np.zeros((0, H), F32)
        else:
            sel_moe = m[:, k] & act & (e < M)
            sel_copy = m[:, k] & act & (e >= M + Z) & (e < M + Z + C)
            sel_const = m[:, k] & act & (e >= M + Z + C) & (e < M + g.nsp)
            sel = np.nonzero(sel_moe | sel_copy | sel_const)[0]
            term = np.zeros((len(sel), H), F32)
            im = sel_moe[sel]
            term[im] = ret[moe_pos[s, sel[im], k]].astype(F32)
            ic = sel_copy[sel]
            if ic.any():
                term[ic] = orif[sel[ic]]
            iq = sel_const[sel]
            if iq.any():
                term[iq] = _const_term(p, inp, e[sel[iq]] - (M + Z + C), orif[sel[iq]])
        if len(sel):
            acc[sel] = (acc[sel] + (term * wk[sel]).astype(F32)).astype(F32)
    a_idx = np.nonzero(act)[0]
    for j in range(g.SE):
        acc[a_idx] = (acc[a_idx] + ret[sh_pos[s, a_idx, j]].astype(F32)).astype(F32)
    if inp.get("shared_expert_x") is not None:
        sx = np.asarray(inp["shared_expert_x"]).reshape(bs, H).astype(F32)
        acc[a_idx] = (acc[a_idx] + sx[a_idx]).astype(F32)
    out = {"active": act.copy()}
    if p.combine_kind == "add_rms_norm":
        tt = (acc + np.asarray(inp["residual_x"]).reshape(bs, H).astype(F32)).astype(F32)
        sq = (tt * tt).astype(F32)
        sq = (sq * F32(1.0 / H)).astype(F32)
        ms = np.sum(sq.astype(np.float64), axis=-1).astype(F32)  # hardware ReduceSum order unknown
        rstd = (F32(1.0) / np.sqrt((ms + F32(p.norm_eps)).astype(F32))).astype(F32)
        xo = tt.astype(xdt)
        yn = (tt * rstd[:, None]).astype(F32).astype(xdt).astype(F32)
        y = (yn * np.asarray(inp["gamma"]).astype(F32)[None, :]).astype(F32).astype(xdt)
        for a in (xo, y):
            a[~act] = 0
        rstd = np.where(act, rstd, F32(0))
        out.update(x=xo.reshape(bs, 1, H), y=y.reshape(bs, 1, H), rstd=rstd.reshape(bs, 1, 1).astype(F32))
    else:
        xo = acc.astype(xdt)
        xo[~act] = 0
        out["x"] = xo
    return out
