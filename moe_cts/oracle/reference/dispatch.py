"""Dispatch golden model (kernel-behaviour.md §1-§3), vectorised over rows.

An EP group ``t`` (global ranks ``s*T + t``) is one independent all-to-all. For a destination EP rank
``d`` the received rows are

* MoE rank (d >= S): for local expert l, for source s (shared ranks included), for valid (b,k) of s
  with expertIds[b,k] == (d-S)*L + l, in increasing b  -> a stable sort of the valid entries by id;
* shared rank (d < S, shared expert j = d // rpse): for s with s % rpse == d % rpse, every active
  token of s in increasing order.

With TP=2 (A3) each rank's outputs are [own group's rows ; peer group's rows] (§1.3).
"""
from __future__ import annotations

import numpy as np

from moe_cts.oracle.reference.geometry import Geo, x_dtype
from moe_cts.oracle.reference.quant import dynamic_quant

F32 = np.float32


class Group:
    """What the sources of one EP group send: ids, valid entries, active tokens, x rows on demand."""

    def __init__(self, g: Geo, t: int, ids, mask, bs, get_x, scales, weights):
        self.g, self.t = g, t
        W, K = g.W, g.K
        B = ids.shape[1]
        self.ids = ids.astype(np.int64, copy=False)
        self.bs = np.asarray(bs, dtype=np.int64)
        in_range = np.arange(B)[None, :] < self.bs[:, None]
        if mask is None:
            act = in_range
            ent = np.broadcast_to(act[:, :, None], (W, B, K))
        elif mask.ndim == 2:  # 1-D mask per rank: the kernel only counts it (prefix semantics)
            cnt = np.sum(mask & in_range, axis=1)
            act = np.arange(B)[None, :] < cnt[:, None]
            ent = np.broadcast_to(act[:, :, None], (W, B, K))
        else:
            ent = mask & in_range[:, :, None]
            act = ent.any(axis=-1)
        if g.nsp > 0:  # special ids are never sent (but the token still goes to shared experts)
            ent = ent & (self.ids < g.M)
        self.ent, self.act = ent, act
        self.get_x = get_x  # (src ep ranks, tokens) -> rows in x dtype
        self.scales = scales  # None | (n, H) shared by all sources | list per source
        self.weights = weights  # None | (W, B, K) f32 expert_scales as sent (A2 expand_scales)
        self._sorted = None

    def sorted_entries(self):
        if self._sorted is None:
            s, b, k = np.nonzero(self.ent)
            e = self.ids[s, b, k]
            o = np.argsort(e, kind="stable")
            self._sorted = (s[o], b[o], k[o], e[o])
        return self._sorted

    def plan(self, d: int) -> dict:
        """Rows rank d receives in this group, in output order, and its counts."""
        g = self.g
        W = g.W
        if g.is_shared(d):
            j = d // g.rpse
            src_ok = (np.arange(W) % g.rpse) == (d % g.rpse)
            s, b = np.nonzero(self.act & src_ok[:, None])
            n = len(s)
            kk = np.full(n, g.K + j, np.int64)
            srow = np.full(n, j, np.int64)
            cnt = np.bincount(s, minlength=W)[:W]
            return dict(s=s, b=b, k=kk, kw=None, srow=srow, cum=np.cumsum(cnt), per_l=np.array([n]))
        L = g.L
        lo = (d - g.S) * L
        if self._sorted is None and W > 8:  # one destination of a big world: filter first
            sel = self.ent & (self.ids >= lo) & (self.ids < lo + L)
            s, b, k = np.nonzero(sel)
            e = self.ids[s, b, k]
            o = np.argsort(e, kind="stable")
            s, b, k, e = s[o], b[o], k[o], e[o]
        else:
            S_, B_, K_, E_ = self.sorted_entries()
            i0, i1 = np.searchsorted(E_, [lo, lo + L])
            s, b, k, e = S_[i0:i1], B_[i0:i1], K_[i0:i1], E_[i0:i1]
        l = e - lo
        cnt = np.bincount(l * W + s, minlength=L * W)[: L * W]
        srow = e + g.SE
        return dict(s=s, b=b, k=k, kw=k, srow=srow, cum=np.cumsum(cnt), per_l=cnt.reshape(L, W).sum(axis=1))

    def rows(self, pl: dict, quant: bool, out=None):
        """x rows (x dtype; written into ``out`` when given) or (int8 rows, scales) for a plan."""
        if not quant:
            return self.get_x(pl["s"], pl["b"], out), None
        x = self.get_x(pl["s"], pl["b"], None)
        xf = x.astype(F32)
        sc = self.scales
        if sc is not None:
            if isinstance(sc, list):
                sm = np.stack([sc[s][r] for s, r in zip(pl["s"], pl["srow"])]) if len(pl["s"]) else np.zeros((0, self.g.H), F32)
                np.multiply(xf, sm, out=xf)  # fp32 elementwise multiply, RNE
            else:  # rows come in runs of one smooth row (one local expert): scale each run in place
                sr = pl["srow"]
                cut = np.concatenate([[0], np.flatnonzero(np.diff(sr)) + 1, [len(sr)]])
                for a, b in zip(cut[:-1], cut[1:]):
                    np.multiply(xf[a:b], sc[sr[a]], out=xf[a:b])  # fp32 elementwise multiply, RNE
        return dynamic_quant(xf, inplace=True)

    def a2_slots(self, s: int) -> np.ndarray:
        """A2 assist_info of sender s: slot of each (b,k) among its earlier valid entries to the same expert."""
        K = self.g.K
        bs = int(self.bs[s])
        ent = self.ent[s, :bs]
        e = self.ids[s, :bs]
        flat = np.nonzero(ent.reshape(-1))[0]
        ev = e.reshape(-1)[flat]
        o = np.argsort(ev, kind="stable")
        es = ev[o]
        start = np.searchsorted(es, es, side="left")
        slot = np.empty(len(flat), np.int64)
        slot[o] = np.arange(len(flat)) - start
        out = np.zeros(bs * K, np.int32)
        out[flat] = slot
        return out


def _same_scales(lst):
    first = lst[0]
    if first is None:
        return None
    for a in lst[1:]:
        if a is not first and not np.array_equal(a, first):
            return list(lst)
    return first


def group_from_inputs(g: Geo, inputs: list, t: int) -> Group:
    W, K, T = g.W, g.K, g.T
    srcs = [inputs[s * T + t] for s in range(W)]
    bs = np.array([len(d["x"]) for d in srcs], np.int64)
    B = int(bs.max()) if W else 0
    ids = np.zeros((W, B, K), np.int64)
    for s, d in enumerate(srcs):
        ids[s, : bs[s]] = d["expert_ids"]
    m0 = srcs[0]["x_active_mask"]
    mask = None
    if m0 is not None:
        mask = np.zeros((W, B) + m0.shape[1:], bool)
        for s, d in enumerate(srcs):
            mask[s, : bs[s]] = d["x_active_mask"][: bs[s]]
    xdt = x_dtype(g.p)
    xcat = np.concatenate([np.asarray(d["x"]) for d in srcs]) if W else np.zeros((0, g.H), xdt)
    off = np.concatenate([[0], np.cumsum(bs)[:-1]]).astype(np.int64)

    def get_x(s, b, out=None):
        return np.take(xcat, off[s] + b, axis=0, out=out, mode="clip")  # "raise" would buffer

    scales = _same_scales([d.get("scales") for d in srcs]) if g.p.scales else None
    weights = None
    if g.p.expert_scales and srcs[0].get("expert_scales") is not None:
        weights = np.zeros((W, B, K), F32)
        for s, d in enumerate(srcs):
            weights[s, : bs[s]] = d["expert_scales"]
    return Group(g, t, ids, mask, bs, get_x, scales, weights)


def group_from_seed(g: Geo, seed: int, t: int, routing: str) -> Group:
    from moe_cts.cases import inputs as I

    p = g.p
    W, T = g.W, g.T
    granks = np.arange(W) * T + t
    ids = I.expert_ids_batch(p, seed, granks, routing)
    mask = I.mask_batch(p, seed, granks)
    bs = np.array([p.bs_of(s) for s in range(W)], np.int64)

    def get_x(s, b, out=None):
        return I.x_rows(p, seed, np.asarray(s) * T + t, b, out=out)

    scales = I.scales_tensor(p, seed) if p.scales else None
    weights = I.expert_scales_batch(p, seed, granks) if p.expert_scales else None
    return Group(g, t, ids, mask, bs, get_x, scales, weights)


def rank_outputs(g: Geo, groups: dict, grank: int, plans: dict | None = None) -> dict:
    """The 7 outputs (+ valid_rows, valid_assist) of global rank ``grank``."""
    p = g.p
    d, t = grank // g.T, grank % g.T
    own_g = groups[t]
    pl_own = plans[(t, d)] if plans is not None and (t, d) in plans else own_g.plan(d)
    parts = [(own_g, pl_own)]
    if g.merge:
        peer_g = groups[1 - t]
        pl_peer = plans[(1 - t, d)] if plans is not None and (1 - t, d) in plans else peer_g.plan(d)
        parts.append((peer_g, pl_peer))
    shp = g.shapes(d)
    quant = p.quant_mode == 2
    xdt = np.int8 if p.quant_mode != 0 else x_dtype(p)
    out = {
        "expand_x": np.zeros(shp["expand_x"], xdt),
        "dynamic_scales": np.zeros(shp["dynamic_scales"], F32),
        "assist_info_for_combine": np.zeros(shp["assist_info_for_combine"], np.int32),
        "expert_token_nums": np.zeros(shp["expert_token_nums"], np.int64),
        "ep_recv_counts": np.zeros(shp["ep_recv_counts"], np.int32),
        "tp_recv_counts": np.zeros(shp["tp_recv_counts"], np.int32),
        "expand_scales": np.zeros(shp["expand_scales"], F32),
    }
    pos = 0
    totals = []
    for grp, pl in parts:
        n = len(pl["s"])
        if n:
            if quant:
                rows, sc = grp.rows(pl, quant)
                out["expand_x"][pos : pos + n] = rows
                out["dynamic_scales"][pos : pos + n] = sc
            else:
                grp.rows(pl, quant, out=out["expand_x"][pos : pos + n])
            if g.p.product == "A2" and grp.weights is not None and pl["kw"] is not None and shp["expand_scales"][0]:
                out["expand_scales"][pos : pos + n] = grp.weights[pl["s"], pl["b"], pl["kw"]]
        pos += n
        totals.append(n)
    n_own = totals[0]
    ln = g.local_num(d)
    if p.product == "A2":
        slots = own_g.a2_slots(d)
        out["assist_info_for_combine"][: len(slots)] = slots
        valid_assist = len(slots)
    else:
        tri = np.stack([pl_own["s"], pl_own["b"], pl_own["k"]], axis=1).reshape(-1)
        out["assist_info_for_combine"][: len(tri)] = tri
        valid_assist = len(tri)
    per_l = pl_own["per_l"].astype(np.int64).copy()
    out["ep_recv_counts"][: g.W * ln] = pl_own["cum"]
    if g.merge:
        per_l[0] += totals[1]
        out["ep_recv_counts"][g.W * ln : 2 * g.W * ln] = parts[1][1]["cum"]
        out["tp_recv_counts"][t] = n_own
        out["tp_recv_counts"][1 - t] = totals[1]
    out["expert_token_nums"][:] = np.cumsum(per_l) if p.expert_token_nums_type == 0 else per_l
    out["valid_rows"] = int(pos)
    out["valid_assist"] = int(valid_assist)
    return out
