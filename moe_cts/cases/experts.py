"""The deterministic "expert function" of round-trip tests (numpy only).

Shared by the runner (applied to a backend's dispatch outputs) and the reference. Row r of rank
``rank``'s expand_x belongs to local expert l (found from expert_token_nums); its output is
``RNE_x(fp32(row) * c)`` with, for global MoE expert e, ``c = 1 + (e+1)/64`` and, for shared expert
j, ``c = 0.5 - (j+1)/64`` (all exact in fp32). int8 rows (quant_mode 2) are dequantised first:
``fp32(int8) * scale`` (fp32 multiply). Rows past valid_rows are 0.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from moe_cts.model import OpParams

F32 = np.float32


def moe_constant(e) -> np.ndarray:
    return (F32(1.0) + (np.asarray(e, F32) + F32(1.0)) / F32(64.0)).astype(F32)


def shared_constant(j) -> np.ndarray:
    return (F32(0.5) - (np.asarray(j, F32) + F32(1.0)) / F32(64.0)).astype(F32)


def _roles(params: OpParams):
    if params.product == "A2":
        return 0, 0
    S = params.shared_expert_rank_num
    SE = 0 if S == 0 else params.shared_expert_num
    return S, SE


def apply_experts(params: OpParams, rank: int, expand_x, dynamic_scales, expert_token_nums, valid_rows) -> np.ndarray:
    xdt = ml_dtypes.bfloat16 if params.x_dtype == "bfloat16" else np.float16
    ex = np.asarray(expand_x)
    rows, h = ex.shape[0], (ex.shape[1] if ex.ndim == 2 else params.h)
    out = np.zeros((rows, h), xdt)
    n = int(min(max(int(valid_rows), 0), rows))
    if n == 0:
        return out
    xf = ex[:n].astype(F32)
    if params.quant_mode == 2:
        np.multiply(xf, np.asarray(dynamic_scales, F32)[:n, None], out=xf)
    d = params.ep_rank(rank)
    S, SE = _roles(params)
    if d < S:
        c = np.full(n, shared_constant(d // (S // SE)), F32)
    else:
        W = params.ep_world_size
        L = params.moe_expert_num // (W - S)
        etn = np.asarray(expert_token_nums, np.int64).reshape(-1)[:L]
        cum = etn if params.expert_token_nums_type == 0 else np.cumsum(etn)
        l = np.searchsorted(cum, np.arange(n), side="right")
        l = np.minimum(l, L - 1)
        c = moe_constant((d - S) * L + l)
    np.multiply(xf, c[:, None], out=xf)  # fp32 multiply, RNE
    out[:n] = xf  # RNE to the x dtype
    return out
