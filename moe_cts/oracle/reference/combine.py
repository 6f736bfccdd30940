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

from moe_cts.oracle.reference.geometry import Geo, x_dtype
from moe_cts.oracle.reference.quant import comm_quant_roundtrip

F32 = np.float32


def _tp_reduce(own: np.ndarray, peer: np.ndarray, xdt) -> np.ndarray:
    if np.dtype(xdt) == np.float16:
        return (own.astype(np.float64) + peer.astype(np.float64)).astype(np.float16)
    return (peer.astype(F32) + own.astype(F32)).astype(F32).astype(xdt)


def returned_rows(g: Geo, groups: dict, plans: dict, expert_out: list) -> dict:
    """(t, d) -> the rows destination EP rank d of group t returns (x dtype), after TP reduce / comm quant."""
    xdt = x_dtype(g.p)
    res = {}
    for t in groups:
        for d in range(g.W):
            n = len(plans[(t, d)]["s"])
            eo = np.asarray(expert_out[d * g.T + t])
            own = eo[:n].astype(xdt, copy=False)
            if g.merge and n:
                n_peer_own = len(plans[(1 - t, d)]["s"])
                peer = np.asarray(expert_out[d * g.T + (1 - t)])[n_peer_own : n_peer_own + n].astype(xdt, copy=False)
                own = _tp_reduce(own, peer, xdt)
            if g.p.comm_quant_mode == 2 and n:
                own = comm_quant_roundtrip(own, xdt)
            res[(t, d)] = own
    return res


def positions(g: Geo, grp, plans: dict):
    """Where each entry's returned row is: (moe_dest, moe_idx)[s,b,k] and (sh_dest, sh_idx)[s,b,j]; -1: none."""
    W, K = g.W, g.K
    B = grp.ids.shape[1]
    SE = max(g.SE, 1)
    md = np.full((W, B, K), -1, np.int64)
    mi = np.full((W, B, K), -1, np.int64)
    sd = np.full((W, B, SE), -1, np.int64)
    si = np.full((W, B, SE), -1, np.int64)
    for d in range(W):
        pl = plans[(grp.t, d)]
        n = len(pl["s"])
        if not n:
            continue
        idx = np.arange(n)
        if g.is_shared(d):
            j = d // g.rpse
            sd[pl["s"], pl["b"], j] = d
            si[pl["s"], pl["b"], j] = idx
        else:
            md[pl["s"], pl["b"], pl["k"]] = d
            mi[pl["s"], pl["b"], pl["k"]] = idx
    return md, mi, sd, si


def _const_term(p, inp, c_idx: np.ndarray, xf: np.ndarray) -> np.ndarray:
    """CONST(c, x) in fp32 for rows xf with const-expert index c_idx."""
    a1 = np.asarray(inp["const_expert_alpha_1"])
    a2 = np.asarray(inp["const_expert_alpha_2"])
    v = np.asarray(inp["const_expert_v"]).astype(F32)[c_idx]
    if a1.ndim == 1:  # the operator document / old kernel: scalar alphas (Q,)
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


def token_outputs(g: Geo, grp, s: int, inp: dict, ret: dict, pos, bufs: dict) -> dict:
    """Combine result of the token owner = EP rank s of group grp."""
    p = g.p
    xdt = x_dtype(p)
    M, Z, C = g.M, p.zero_expert_num, p.copy_expert_num
    md, mi, sd, si = pos
    t = grp.t
    bs = int(grp.bs[s])
    H, K = g.H, g.K
    act = grp.act[s, :bs]
    ids = grp.ids[s, :bs]
    if p.x_active_mask == "2d":
        m = np.asarray(inp["x_active_mask"], bool)[:bs] & act[:, None]
    else:
        m = np.broadcast_to(act[:, None], ids.shape)
    w = np.asarray(inp["expert_scales"], F32)[:bs]
    # term3[b,k] = fp32 of the k-th term of token b (only where contrib[b,k])
    key = (bs, K, H)
    if bufs.get("key") != key:
        bufs.clear()
        bufs.update(key=key, term3=np.empty((bs, K, H), F32), acc=np.empty((bs, H), F32), tmp=np.empty((bs, H), F32))
    term3, acc, tmp = bufs["term3"], bufs["acc"], bufs["tmp"]
    mdest = md[s, :bs]
    if g.nsp == 0:
        contrib = m
        moe = m
    else:
        moe = m & (ids < M)
        copy = m & (ids >= M + Z) & (ids < M + Z + C)
        const = m & (ids >= M + Z + C) & (ids < M + g.nsp)
        contrib = moe | copy | const
        if copy.any() or const.any():
            orif = np.asarray(inp["ori_x"]).astype(F32)
            bb, kk = np.nonzero(copy)
            term3[bb, kk] = orif[bb]
            bb, kk = np.nonzero(const)
            if len(bb):
                term3[bb, kk] = _const_term(p, inp, ids[bb, kk] - (M + Z + C), orif[bb])
    dests = np.unique(mdest[moe])
    for d in dests:
        bb, kk = np.nonzero(moe & (mdest == d))
        term3[bb, kk] = ret[(t, int(d))][mi[s, bb, kk]]
    acc[...] = 0
    for k in range(K):
        wk = w[:, k : k + 1]
        c = contrib[:, k]
        if c.all():
            np.multiply(term3[:, k, :], wk, out=tmp)  # Muls: one fp32 rounding
            np.add(acc, tmp, out=acc)  # Add: a second rounding (not an FMA)
        elif c.any():
            # entries that contribute nothing hold stale buffer values: never compute on them
            np.multiply(term3[:, k, :], wk, out=tmp, where=c[:, None])
            np.add(acc, tmp, out=acc, where=c[:, None])
    a_idx = np.nonzero(act)[0]
    for j in range(g.SE):
        dj = sd[s, a_idx, j]
        for d in np.unique(dj):
            sel = a_idx[dj == d]
            tmp[sel] = ret[(t, int(d))][si[s, sel, j]]
        np.add(acc, tmp, out=acc, where=act[:, None])
    if inp.get("shared_expert_x") is not None:
        tmp[...] = np.asarray(inp["shared_expert_x"]).reshape(bs, H)
        np.add(acc, tmp, out=acc, where=act[:, None])
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
