"""Deterministic, self-describing inputs for one rank (numpy + ml_dtypes only).

Every value is derived from ``(case seed, global rank, token, column)`` through a counter-based
SplitMix64 hash implemented here with uint64 numpy arithmetic, so results do not depend on numpy's
distribution methods and are stable across numpy versions. Any process can rebuild any rank's
inputs (or only some of its x rows: :func:`x_rows`) without communication.

Tags. Row ``t`` of rank ``g``'s x carries its origin in the first four columns as base-64 digits
(small integers, exact in bf16 and fp16)::

    x[t,0] = g // 64   x[t,1] = g % 64   x[t,2] = t // 64   x[t,3] = t % 64     (needs h >= 4)
    x[t,4] = +-[64, 100]   a per-row "amax marker" (h >= 5), so no row is all zero

Every |x| <= 100 and every smooth scale is in [0.5, 1.2] with the tag columns' scales exactly 1.0, so
|x * scale| <= 120 < 127: the int8 quantisation step ``1/ds = amax/127`` is < 1 and the tags survive
dynamic quantisation: ``rint(fp32(q) * dynamic_scale)`` gives the digit back (error <= 120/254 < 0.5).
Limits: ranks < 4096 and tokens < 4096; with h < 4 there are no tags (decode is meaningless).
Body values have magnitudes spread over [2^-6, 64) with random fp32 mantissas rounded to the x dtype,
so quantisation rounding (including half-way cases after scaling) is exercised.
"""
from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np

from moe_cts.model import OpParams

ROUTINGS = ("uniform", "hot_expert", "empty_ranks", "special_heavy", "shared_only")
# input recipes on top of uniform routing, applied by rank_inputs only (the per-rank reference form refuses them):
#  quant_ties  - every row's amax is exactly 127, so ds = 1 and y = x: body values n + 0.5 are exact rounding
#                ties, where half-to-even and half-away-from-zero differ (kernel-behaviour.md §3)
#  cancelling  - per token k0 = a copy expert with weight +1, k1 = a MoE expert with weight fp32(-1/c_e),
#                k2 = a MoE expert with weight 2**-30: the fp32 sum cancels, so accumulation order and
#                multiply-then-add vs fused multiply-add change the result by many ulps, not one (§4.2)
RECIPES = ("quant_ties", "cancelling")

TAG_BASE = 64
TAG_COLS = 4
MARKER_COL = 4
_POOL = 8192  # distinct row offsets into the value pool

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def x_np_dtype(params: OpParams):
    return ml_dtypes.bfloat16 if params.x_dtype == "bfloat16" else np.float16


def se_norm(params: OpParams) -> int:
    """Shared-expert count after tiling normalisation (S==0 -> no shared experts)."""
    return 0 if params.shared_expert_rank_num == 0 else params.shared_expert_num


# ---------------------------------------------------------------- bits
def _mix(z: np.ndarray) -> np.ndarray:
    z = np.array(z, dtype=np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _key(seed: int, stream: str, *extra: int) -> np.uint64:
    h = hashlib.blake2b(f"moe-cts/{int(seed)}/{stream}/{'/'.join(map(str, extra))}".encode(), digest_size=8)
    return np.uint64(int.from_bytes(h.digest(), "little"))


def _bits(key, ctr) -> np.ndarray:
    """uint64 hash of (key, counter); key and ctr broadcast."""
    ctr = np.asarray(ctr, dtype=np.uint64)
    key = np.asarray(key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(key + (ctr + np.uint64(1)) * _GOLDEN)


def _below(bits: np.ndarray, n) -> np.ndarray:
    """Integer in [0, n) from 64 random bits (multiply-shift; n < 2^32)."""
    n = np.asarray(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return ((bits >> np.uint64(32)) * n >> np.uint64(32)).astype(np.int64)


def _unit(bits: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) with 24 random bits (exact)."""
    return ((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def _rank_keys(seed: int, stream: str, ranks) -> np.ndarray:
    base = _key(seed, stream)
    return _mix(np.asarray(ranks, dtype=np.uint64) ^ base)


# ---------------------------------------------------------------- values
_pool_cache: dict = {}


def _pool(seed: int, h: int, dtype, stream: str) -> np.ndarray:
    ck = (seed, h, np.dtype(dtype).name, stream)
    p = _pool_cache.get(ck)
    if p is None:
        n = _POOL + h
        b = _bits(_key(seed, stream), np.arange(n, dtype=np.uint64))
        mant = np.float32(1.0) + _unit(b)  # [1, 2)
        e = _below(b ^ (b << np.uint64(17)), 12)  # 0..11
        expo = np.exp2(e.astype(np.float32) - np.float32(6))  # 2^-6 .. 2^5
        sign = np.where((b >> np.uint64(7)) & np.uint64(1), np.float32(-1), np.float32(1))
        p = (sign * mant * expo).astype(np.float32).astype(dtype)
        if len(_pool_cache) > 16:
            _pool_cache.clear()
        _pool_cache[ck] = p
    return p


def _pool_rows(seed: int, h: int, dtype, stream: str, row_bits: np.ndarray, out=None) -> np.ndarray:
    pool = _pool(seed, h, dtype, stream)
    off = _below(row_bits, _POOL)
    win = np.lib.stride_tricks.sliding_window_view(pool, h)
    if out is not None and off.ndim == 1:
        return np.take(win, off, axis=0, out=out, mode="clip")  # "raise" would buffer
    return win[off]


def x_rows(params: OpParams, seed: int, rank, tokens, out=None) -> np.ndarray:
    """x rows of global rank(s) ``rank`` at ``tokens`` (broadcast 1-D arrays), tags included.

    ``out``: optional C-contiguous (n, h) array of the x dtype to write into.
    """
    dt = x_np_dtype(params)
    h = params.h
    rank = np.asarray(rank, dtype=np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    rank, tokens = np.broadcast_arrays(rank, tokens)
    rb = _bits(_rank_keys(seed, "x", rank), tokens.astype(np.uint64))
    out = _pool_rows(seed, h, dt, "xpool", rb, out=out if rb.ndim == 1 else None)  # a gather: a copy
    out = np.ascontiguousarray(out)
    if h >= TAG_COLS:
        tags = np.stack([rank // TAG_BASE, rank % TAG_BASE, tokens // TAG_BASE, tokens % TAG_BASE], axis=-1)
        out[..., :TAG_COLS] = tags.astype(np.float32).astype(dt)
    if h > MARKER_COL:
        mb = _mix(rb ^ np.uint64(0x5A5A))
        m = np.float32(64) + np.float32(36) * _unit(mb)
        m = np.where(mb & np.uint64(1), -m, m)
        out[..., MARKER_COL] = m.astype(np.float32).astype(dt)
    return out


def decode_tag(row: np.ndarray) -> tuple[int, int]:
    """(src_rank, token) from a dispatched row in x dtype (or any float row holding the digits).

    ValueError for a row that is no payload row of this module (column TAG_COLS always holds a
    magnitude in [64, 100]; digits are in [0, TAG_BASE)): a zeroed or foreign row must not be read
    as "rank 0, token 0"."""
    row = np.asarray(row, dtype=np.float32)
    if row.shape[-1] > TAG_COLS and not 63.5 <= abs(float(row[TAG_COLS])) <= 127.5:
        raise ValueError(f"not a payload row: column {TAG_COLS} is {float(row[TAG_COLS])}, expected +-[64, 127]")
    d = np.rint(row[:TAG_COLS]).astype(np.int64)
    if (d < 0).any() or (d >= TAG_BASE).any():
        raise ValueError(f"not a payload row: tag digits {d.tolist()} outside [0, {TAG_BASE})")
    return int(d[0] * TAG_BASE + d[1]), int(d[2] * TAG_BASE + d[3])


def decode_tag_quant(int8_row: np.ndarray, scale) -> tuple[int, int]:
    """(src_rank, token) from an int8 row and its dynamic scale (quant_mode 2).

    Exact for inputs from this module (|x*smooth| <= 120, tag-column smooth scales 1.0).
    """
    v = np.asarray(int8_row[:TAG_COLS]).astype(np.float32) * np.float32(scale)
    return decode_tag(v)


# ---------------------------------------------------------------- routing
def _distinct_kfirst(bt: np.ndarray, n_pool: int) -> np.ndarray:
    """(K, n) random bits -> (K, n) indices in [0, n_pool), distinct along axis 0, in draw order.

    n_pool >= 4K: independent draws, a repeated value is redrawn from re-hashed bits until none is left.
    Otherwise: exact sequential selection (draw j in [0, n_pool-j), skip the values already taken).
    """
    K = bt.shape[0]
    if n_pool >= 4 * K:
        c = _below(bt, n_pool)
        rnd = 0
        while True:
            redo = np.zeros(c.shape, dtype=bool)
            for j in range(1, K):
                cj, rj = c[j], redo[j]
                for i in range(j):
                    rj |= c[i] == cj
            if not redo.any():
                return c
            rnd += 1
            j, r = np.nonzero(redo)
            with np.errstate(over="ignore"):
                c[j, r] = _below(_mix(bt[j, r] + np.uint64(rnd) * _M1), n_pool)
    out = np.empty(bt.shape, dtype=np.int64)
    srt = np.empty((0, bt.shape[1]), dtype=np.int64)
    for j in range(K):
        c = _below(bt[j], n_pool - j)
        for i in range(j):
            c = c + (srt[i] <= c)
        out[j] = c
        srt = np.sort(out[: j + 1], axis=0)
    return out


def _distinct(bits: np.ndarray, n_pool: int) -> np.ndarray:
    """Per row, K distinct indices in [0, n_pool) (K = bits.shape[-1] <= n_pool), in draw order."""
    shp = bits.shape
    bt = np.ascontiguousarray(bits.reshape(-1, shp[-1]).T)
    return np.ascontiguousarray(_distinct_kfirst(bt, n_pool).T).reshape(shp)


def _moe_pool_empty(params: OpParams) -> np.ndarray:
    """MoE experts of every other MoE rank (the rest receive nothing), enough for K."""
    S = params.shared_expert_rank_num if params.product == "A3" else 0
    nm = params.ep_world_size - S
    L = max(params.moe_expert_num // max(nm, 1), 1)
    ranks = list(range(0, nm, 2)) + list(range(1, nm, 2))
    take = max(1, (nm + 1) // 2)
    while take * L < params.k and take < nm:
        take += 1
    experts = [r * L + l for r in sorted(ranks[:take]) for l in range(L)]
    experts = [e for e in experts if e < params.moe_expert_num]
    pool = np.array(experts, dtype=np.int64)
    if len(pool) < params.k:  # top up with special experts
        M = params.moe_expert_num
        extra = np.arange(M, M + params.special_expert_num, dtype=np.int64)
        pool = np.concatenate([pool, extra[: params.k - len(pool)]])
    return pool


def expert_ids_batch(params: OpParams, seed: int, ranks, routing: str = "uniform") -> np.ndarray:
    """expert_ids of several global ranks at once: (len(ranks), maxBs, K) int32, rows past bs_of(rank) unspecified.

    Row t of rank g depends only on (seed, g, t, routing, M, Z, C, Q, K, W, S): identical to rank_inputs.
    """
    if routing in RECIPES:
        raise ValueError(f"input recipe {routing!r} is applied by rank_inputs only: build every rank with "
                         f"rank_inputs and use reference.dispatch(params, inputs)")
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; known: {ROUTINGS + RECIPES}")
    ranks = np.asarray(ranks, dtype=np.int64)
    B, K, M = params.bs, params.k, params.moe_expert_num
    nsp = params.special_expert_num
    N = M + nsp
    R = len(ranks)
    keys = _rank_keys(seed, "ids/" + routing, ranks)[None, :, None]
    tok = np.arange(B, dtype=np.uint64)[None, None, :]
    jj = np.arange(K + 2, dtype=np.uint64)[:, None, None]
    bits_t = _bits(keys, tok * np.uint64(K + 2) + jj)  # (K+2, R, B): counter of (token, j) as before
    if routing == "shared_only" and nsp < K:
        routing = "special_heavy"
    if routing == "special_heavy" and nsp == 0:
        routing = "uniform"
    if routing == "uniform" or (routing == "hot_expert" and N - 1 < K):
        ids = _distinct_kfirst(bits_t[:K].reshape(K, R * B), N)
        return ids.T.astype(np.int32).reshape(R, B, K)
    bits = np.moveaxis(bits_t, 0, -1)  # (R, B, K+2) view
    b_a, b_x = bits[..., :K], bits[..., K:]
    b_b = (b_a << np.uint64(32)) | (b_a >> np.uint64(32))  # the other 32 bits
    if routing == "hot_expert":
        hot = int(_below(_bits(_key(seed, "hot"), 0), M))
        ids = _distinct(b_a, N - 1)
        ids = ids + (ids >= hot)  # skip the hot id
        put = _below(b_x[..., 0], 4) != 0  # 3/4 of the tokens use the hot expert
        pos = _below(b_x[..., 1], K)
        onehot = (np.arange(K)[None, None, :] == pos[..., None]) & put[..., None]
        ids = np.where(onehot, hot, ids)
    elif routing == "empty_ranks":
        pool = _moe_pool_empty(params)
        ids = pool[_distinct(b_a, len(pool))]
    elif routing == "shared_only":
        ids = M + _distinct(b_a, nsp)
    else:  # special_heavy
        hi = min(K, nsp)
        lo = min(max(K - M, (K + 1) // 2), hi)
        ns = lo + _below(b_x[..., 0], hi - lo + 1)  # (R, B) specials per token
        sp = M + _distinct(b_a[..., :hi], nsp)
        nm = K - lo
        moe = _distinct(b_b[..., :nm], M) if nm > 0 else np.zeros(b_a.shape[:-1] + (0,), np.int64)
        j = np.arange(K)[None, None, :]
        spj = np.take_along_axis(sp, np.minimum(j, hi - 1) + 0 * sp[..., :1], axis=-1) if hi > 0 else None
        mj_idx = np.clip(j - ns[..., None], 0, max(nm - 1, 0))
        mj = np.take_along_axis(moe, mj_idx + 0 * ns[..., None], axis=-1) if nm > 0 else 0
        ids = np.where(j < ns[..., None], spj, mj)
        perm = np.argsort(b_b >> np.uint64(1), axis=-1, kind="stable")  # shuffle positions
        ids = np.take_along_axis(ids, perm, axis=-1)
    return ids.astype(np.int32)


def mask_batch(params: OpParams, seed: int, ranks) -> np.ndarray | None:
    """x_active_mask of several global ranks: None, (R, maxBs) or (R, maxBs, K) bool."""
    kind = params.x_active_mask
    if kind == "none":
        return None
    ranks = np.asarray(ranks, dtype=np.int64)
    B, K = params.bs, params.k
    uneven = params.bs_per_rank is not None
    if kind == "1d":
        out = np.ones((len(ranks), B), dtype=bool)
        if uneven:
            return out  # doc: with uneven Bs every token must be active
        bb = _bits(_rank_keys(seed, "mask1d", ranks), 0)
        sel = _below(bb, 8)
        cnt = _below(bb ^ np.uint64(0xABCDEF), B + 1)
        cnt = np.where(sel == 0, 0, np.where(sel == 1, B, cnt))
        return np.arange(B)[None, :] < cnt[:, None]
    if kind == "2d":
        if uneven:
            return np.ones((len(ranks), B, K), dtype=bool)
        keys = _rank_keys(seed, "mask2d", ranks)[:, None, None]
        ctr = np.arange(B, dtype=np.uint64)[None, :, None] * np.uint64(K + 1) + np.arange(K + 1, dtype=np.uint64)[None, None, :]
        bits = _bits(keys, ctr)
        ent = _below(bits[..., :K], 4) != 0
        dead = _below(bits[..., K], 4) == 0
        return ent & ~dead[..., None]
    raise ValueError(f"unknown x_active_mask kind {kind!r}")


# ---------------------------------------------------------------- whole rank
def scales_tensor(params: OpParams, seed: int) -> np.ndarray:
    """Smooth scales (SE_norm + M, H) float32, the same on every rank; tag columns exactly 1.0.

    (Hashing every element costs ~0.1 s at M=1024, H=7168; a pooled variant would be faster but would
    change values the golden store has frozen.)
    """
    n = se_norm(params) + params.moe_expert_num
    h = params.h
    b = _bits(_key(seed, "scales"), np.arange(n * h, dtype=np.uint64)).reshape(n, h)
    s = (np.float32(0.5) + np.float32(0.7) * _unit(b)).astype(np.float32)
    s[:, : min(TAG_COLS, h)] = 1.0
    return s


def expert_scales_batch(params: OpParams, seed: int, ranks) -> np.ndarray:
    """expert_scales of several global ranks: (R, maxBs, K) float32 (rows past bs_of(rank) unspecified)."""
    K = params.k
    keys = _rank_keys(seed, "wts", np.asarray(ranks, dtype=np.int64))[:, None]
    wb = _bits(keys, np.arange(params.bs * K, dtype=np.uint64)[None, :]).reshape(-1, params.bs, K)
    return (np.float32(0.05) + np.float32(0.9) * _unit(wb)).astype(np.float32)


def _aux_rows(params, seed, stream, rank, n) -> np.ndarray:
    dt = x_np_dtype(params)
    rb = _bits(_rank_keys(seed, stream, [rank])[0], np.arange(n, dtype=np.uint64))
    return np.ascontiguousarray(_pool_rows(seed, params.h, dt, stream + "pool", rb))


def rank_inputs(params: OpParams, seed: int, rank: int, routing: str = "uniform") -> dict:
    """Every input global rank ``rank`` passes to dispatch and combine (see module doc)."""
    ep = params.ep_rank(rank)
    bs = params.bs_of(ep)
    dt = x_np_dtype(params)
    h = params.h
    recipe = routing if routing in RECIPES else None
    if recipe:
        routing = "uniform"
    out: dict = {}
    out["x"] = x_rows(params, seed, rank, np.arange(bs))
    out["expert_ids"] = np.ascontiguousarray(expert_ids_batch(params, seed, [rank], routing)[0, :bs])
    out["scales"] = scales_tensor(params, seed) if params.scales else None
    m = mask_batch(params, seed, [rank])
    out["x_active_mask"] = None if m is None else np.ascontiguousarray(m[0, :bs])
    out["expert_scales"] = np.ascontiguousarray(expert_scales_batch(params, seed, [rank])[0, :bs])
    out["shared_expert_x"] = _aux_rows(params, seed, "sx", rank, bs) if params.shared_expert_x else None
    Q = params.const_expert_num
    need_ori = params.copy_expert_num > 0 or Q > 0
    out["ori_x"] = out["x"] if need_ori else None
    if Q > 0:
        ab = _bits(_key(seed, "alpha"), np.arange(2 * Q * h, dtype=np.uint64))
        a = (np.float32(2) * _unit(ab) - np.float32(1)).astype(np.float32)
        if params.const_alpha == "vector":
            a = (a * np.float32(2.0**-6)).reshape(2, Q, h)
            out["const_expert_alpha_1"] = a[0].astype(dt)
            out["const_expert_alpha_2"] = a[1].astype(dt)
        else:
            out["const_expert_alpha_1"] = a[:Q].astype(dt)
            out["const_expert_alpha_2"] = a[Q : 2 * Q].astype(dt)
        vb = _bits(_key(seed, "constv"), np.arange(Q, dtype=np.uint64))
        out["const_expert_v"] = np.ascontiguousarray(_pool_rows(seed, h, dt, "vpool", vb))
    else:
        out["const_expert_alpha_1"] = out["const_expert_alpha_2"] = out["const_expert_v"] = None
    if params.combine_kind == "add_rms_norm":
        out["residual_x"] = _aux_rows(params, seed, "res", rank, bs).reshape(bs, 1, h)
        gb = _bits(_key(seed, "gamma"), np.arange(h, dtype=np.uint64))
        out["gamma"] = (np.float32(0.5) + _unit(gb)).astype(dt)
    else:
        out["residual_x"] = out["gamma"] = None
    if recipe:
        _apply_recipe(params, recipe, out)
    return out


_TIES = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 4.5, -6.5, 10.5, 0.5, 3.5, -1.5, 12.5], np.float32)


def _apply_recipe(params: OpParams, recipe: str, out: dict) -> None:
    x = out["x"]
    dt = x.dtype
    bs = x.shape[0]
    if recipe == "quant_ties":
        if params.h <= MARKER_COL + 1:
            raise ValueError(f"recipe quant_ties needs h > {MARKER_COL + 1}, got {params.h}")
        sign = np.where(x[:, MARKER_COL].astype(np.float32) < 0, np.float32(-1), np.float32(1))
        x[:, MARKER_COL] = (np.float32(127) * sign).astype(dt)  # the row's amax: every other |x| <= 100
        n = min(len(_TIES), params.h - MARKER_COL - 1)
        rows = np.stack([np.roll(_TIES, t)[:n] for t in range(bs)]) if bs else np.zeros((0, n), np.float32)
        x[:, MARKER_COL + 1: MARKER_COL + 1 + n] = rows.astype(dt)
        return
    if recipe == "cancelling":
        M, K = params.moe_expert_num, params.k
        if params.copy_expert_num < 1 or K != 3 or M < 2:
            raise ValueError(f"recipe cancelling needs copy_expert_num >= 1, k == 3 and moe_expert_num >= 2, got "
                             f"copy_expert_num={params.copy_expert_num}, k={K}, moe_expert_num={M}")
        from moe_cts.cases.experts import moe_constant

        copy_id = M + params.zero_expert_num
        tok = np.arange(bs)
        e1, e2 = tok % M, (tok + 1) % M
        out["expert_ids"] = np.ascontiguousarray(np.stack([np.full(bs, copy_id), e1, e2], axis=1).astype(np.int32))
        w1 = (np.float32(-1) / moe_constant(e1)).astype(np.float32)
        out["expert_scales"] = np.ascontiguousarray(
            np.stack([np.ones(bs, np.float32), w1, np.full(bs, np.float32(2.0**-30))], axis=1).astype(np.float32))
        return
    raise ValueError(f"unknown input recipe {recipe!r}")
