"""Bit-exact numpy models of the kernels' quantisers (kernel-behaviour.md §3, §4.5)."""
from __future__ import annotations

import numpy as np

F32 = np.float32


def dynamic_quant(xf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch dynamic per-token quant (quantMode 2) of fp32 rows ``xf`` (already smooth-scaled).

    amax = max|x|; ds = 127f/amax (fp32 division); y = x*ds (fp32); q = RNE(y), clamped before the
    int8 cast; scale out = 1f/ds (not amax/127). An all-zero row gives ds=inf, y=NaN: its int8 output is
    not documented; we return q=0 and scale 0 (1/inf).
    """
    xf = np.asarray(xf, dtype=F32)
    amax = np.max(np.abs(xf), axis=-1) if xf.shape[-1] else np.zeros(xf.shape[:-1], F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ds = (F32(127.0) / amax).astype(F32)
        y = xf * ds[..., None]
        q = np.rint(y)
        q = np.where(np.isnan(q), F32(0), q)
        q = np.clip(q, -128, 127).astype(np.int8)
        scale = (F32(1.0) / ds).astype(F32)
    return q, scale


def comm_quant_roundtrip(r: np.ndarray, xdt) -> np.ndarray:
    """commQuantMode 2 return path: quantise in groups of 8 along H and dequantise (§4.5).

    s = max|x_g| * (1/127f); s_st = RNE(s) in x dtype; q = int8(RINT(x / s)) (division by the unrounded s);
    v = RNE_x(fp32(q) * fp32(s_st)). A zero group (s == 0) gives 0/0: modelled as q = 0.
    A trailing partial group (H % 8 != 0) is treated as zero-padded.
    """
    r = np.asarray(r)
    n, h = r.shape
    g = -(-h // 8)
    xf = np.zeros((n, g * 8), F32)
    xf[:, :h] = r.astype(F32)
    xg = xf.reshape(n, g, 8)
    s = (np.max(np.abs(xg), axis=-1) * F32(1.0 / 127.0)).astype(F32)
    s_st = s.astype(xdt).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint(xg / s[..., None])
    q = np.where(np.isnan(q), F32(0), np.clip(q, -128, 127))
    v = (q.astype(F32) * s_st[..., None]).astype(F32).astype(xdt)
    return v.reshape(n, g * 8)[:, :h]
