"""Output allocation and binding-level checks of the torch_npu MoE ops, re-derived from
../shared/spec/torch-npu-api.md §1b (meta functions) and kernel-behaviour.md §7 (Python-side checks).

Nothing here is copied from the torch_npu wheel; it is the doc's summary written out, so the stand-in
allocates outputs exactly as the real binding would (shape + dtype), independently of the sim backend.
"""
from __future__ import annotations

import math

import torch

# y_dtype enum (torch_npu's ScalarType map used by the meta function) -> (dtype, h divisor)
_Y_DTYPE = {
    1: (torch.int8, 1),
    5: (torch.float16, 1),
    15: (torch.bfloat16, 1),
    23: (torch.float8_e5m2, 1), 291: (torch.float8_e5m2, 1),
    24: (torch.float8_e4m3fn, 1), 292: (torch.float8_e4m3fn, 1),
    290: (torch.uint8, 1),  # hifloat8
    296: (torch.uint8, 2), 297: (torch.uint8, 2),  # fp4x2: two values per byte
}
SOC_BEFORE_950 = True  # A2 / A3: soc version < 260 (the ep_recv_counts quirk with expert_scales)


class BindingCheckFailed(Exception):
    """A check the binding makes before any aclnn call (RuntimeError ... ERR01001 on real torch_npu)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise BindingCheckFailed(msg)


def shared_config_ok(sen: int, srn: int) -> bool:
    return (sen == 1 and srn == 0) or (sen == 0 and srn == 0) or (sen > 0 and srn // sen > 0 and srn % sen == 0)


def common_checks(a: dict, x_dims: int | None = None) -> None:
    W, r = a["ep_world_size"], a["ep_rank_id"]
    ids = a["expert_ids"]
    if x_dims is not None:
        _check(x_dims == 2 and ids.dim() == 2,
               f"x and expert_ids should be 2D, but got x.dim()={x_dims}, expert_ids.dim()={ids.dim()}.")
    _check(0 <= r < W, f"ep_rank_id should be in [0, ep_world_size), but got ep_world_size={W}, ep_rank_id={r}.")
    srn, sen = a["shared_expert_rank_num"], a["shared_expert_num"]
    _check(0 <= srn < W, f"shared_expert_rank_num should be in [0, ep_world_size), but got "
                         f"ep_world_size={W}, shared_expert_rank_num={srn}.")
    _check(shared_config_ok(sen, srn), f"shared_expert_num={sen} and shared_expert_rank_num={srn} is not a valid "
                                       "shared expert configuration.")


def dispatch_checks(a: dict) -> None:
    common_checks(a, a["x"].dim())
    _check(a["expert_token_nums_type"] in (0, 1),
           f"expert_token_nums_type should be 0 or 1, but got {a['expert_token_nums_type']}.")


def combine_checks(a: dict) -> None:
    common_checks(a)
    _check(a["expand_x"].dtype in (torch.bfloat16, torch.float16, torch.int32),
           f"expand_x dtype should be bfloat16, float16 or int32, but got {a['expand_x'].dtype}.")
    _check(a["expert_ids"].dtype == torch.int32, f"expert_ids dtype should be int32, but got {a['expert_ids'].dtype}.")


def dispatch_outputs(a: dict) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """(shape, dtype) of the 7 outputs, in schema order (torch-npu-api.md §1b)."""
    x, ids = a["x"], a["expert_ids"]
    W, r, M = a["ep_world_size"], a["ep_rank_id"], a["moe_expert_num"]
    sen, srn = a["shared_expert_num"], a["shared_expert_rank_num"]
    tp = a["tp_world_size"]
    qm = a["quant_mode"]
    bs, h = x.shape
    k = ids.shape[1]
    gbs = a["global_bs"] or bs * W
    local, A = 1, 0
    if a["expert_shard_type"] == 0:
        a_shared = (gbs // W) * math.ceil(W / (srn // sen)) if (srn > 0 and sen > 0) else 0
        local_moe = M // (W - srn)
        a_moe = gbs * min(local_moe, k)
        if r < srn:
            A = a_shared
        else:
            local, A = local_moe, a_moe
        if a["elastic_info"] is not None:  # elastic: any rank may become either kind
            A = max(a_shared, a_moe)
            local = max(local_moe, 1)
    ep_recv = W * local * (2 if tp == 2 else 1)
    if a["expert_scales"] is not None and SOC_BEFORE_950:
        ep_recv = W * local + gbs * 2 * k * (W // 8)
    out_dt, hdiv = (x.dtype, 1) if qm == 0 else (torch.int8, 1)
    if a["y_dtype"] is not None:
        out_dt, hdiv = _Y_DTYPE.get(a["y_dtype"], (out_dt, 1))
    scales = a["scales"]
    if tp > 1:
        ds_shape = (A * tp,)
    elif qm == 0 and scales is not None:
        ds_shape = (A, scales.shape[1]) if x.dtype != torch.int32 else (A,)
    elif qm == 3:
        ds_shape = (A, math.ceil(h / 128))
    elif qm in (4, 5):
        ds_shape = (A, (math.ceil(h / 32) + 1) // 2 * 2)
    else:
        ds_shape = (A,)
    ds_dt = torch.float32
    if qm in (4, 5):
        ds_dt = torch.uint8
    elif qm == 0 and scales is not None and x.dtype not in (torch.bfloat16, torch.float16):
        ds_dt = scales.dtype
    return [
        ((max(A, A * tp), h // hdiv), out_dt),
        (ds_shape, ds_dt),
        ((max(bs * k, A * 128),), torch.int32),
        ((local,), torch.int64),
        ((ep_recv,), torch.int32),
        ((tp,), torch.int32),
        (((A,) if a["expert_scales"] is not None else (0,)), torch.float32),
    ]


def combine_output(a: dict) -> tuple[tuple[int, ...], torch.dtype]:
    return (a["expert_ids"].shape[0], a["expand_x"].shape[1]), a["expand_x"].dtype


def combine_add_rms_norm_outputs(a: dict) -> list[tuple[tuple[int, ...], torch.dtype]]:
    bs, h, dt = a["expert_ids"].shape[0], a["expand_x"].shape[1], a["expand_x"].dtype
    return [((bs, 1, h), dt), ((bs, 1, 1), torch.float32), ((bs, 1, h), dt)]


# ---- the GE IR dtype contract (REG_OP MoeDistributeDispatchV2 / CombineV2): an input outside it is
# rejected by the aclnn layer with 161002 ACLNN_ERR_PARAM_INVALID.
_F = torch.float32
_I32 = torch.int32
DISPATCH_INPUT_DTYPES = {
    "x": (torch.bfloat16, torch.float16), "expert_ids": (_I32,), "scales": (_F,), "x_active_mask": (torch.bool,),
    "expert_scales": (_F,), "elastic_info": (_I32,), "performance_info": (torch.int64,),
}
_BFI = (torch.bfloat16, torch.float16, _I32)
COMBINE_INPUT_DTYPES = {
    "expand_x": _BFI, "expert_ids": (_I32,), "assist_info_for_combine": (_I32,), "expand_idx": (_I32,),
    "ep_send_counts": (_I32,), "expert_scales": (_F,), "tp_send_counts": (_I32,), "x_active_mask": (torch.bool,),
    "activation_scale": (_F,), "weight_scale": (_F,), "group_list": (torch.int64,), "expand_scales": (_F,),
    "shared_expert_x": _BFI, "ori_x": _BFI, "const_expert_alpha_1": _BFI, "const_expert_alpha_2": _BFI,
    "const_expert_v": _BFI, "elastic_info": (_I32,), "performance_info": (torch.int64,),
    "residual_x": (torch.bfloat16, torch.float16), "gamma": (torch.bfloat16, torch.float16),
}


def dtype_violation(a: dict, table: dict) -> str | None:
    for name, allowed in table.items():
        t = a.get(name)
        if isinstance(t, torch.Tensor) and t.dtype not in allowed:
            return f"{name} dtype {t.dtype} is not one of {[str(d) for d in allowed]}"
    return None
