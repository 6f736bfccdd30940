"""Bit-exact numpy models of the kernels' quantisers (kernel-behaviour.md §3, §4.5)."""
from __future__ import annotations

import numpy as np

F32 = np.float32


def dynamic_quant(xf: np.ndarray, *, inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch dynamic per-token quant (quantMode 2) of fp32 rows ``xf`` (already smooth-scaled).

    amax = max|x|; ds = 127f/amax (fp32 division); y = x*ds (fp32); q = RNE(y), clamped before the
    int8 cast; scale out = 1f/ds (not amax/127). An all-zero row gives ds=inf, y=NaN: its int8 output is
    not documented; we return q=0 and scale 0 (1/inf). ``inplace`` lets xf be overwritten.
    """
    xf = np.asarray(xf, dtype=F32)
    if not inplace:
        xf = xf.copy()
    if xf.shape[-1] == 0 or xf.size == 0:
        return np.zeros(xf.shape, np.int8), np.zeros(xf.shape[:-1], F32)
    amax = np.maximum(np.max(xf, axis=-1), -np.min(xf, axis=-1)).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ds = (F32(127.0) / amax).astype(F32)
        np.multiply(xf, ds[..., None], out=xf)
        np.rint(xf, out=xf)
        bad = ~np.isfinite(ds) | ~np.isfinite(amax)
        if bad.any():
            xf[bad] = np.where(np.isnan(xf[bad]), F32(0), xf[bad])
        np.clip(xf, -128, 127, out=xf)
        q = xf.astype(np.int8)
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
