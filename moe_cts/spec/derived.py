"""Derived quantities of the dispatch spec: localExpertNum, A, output shapes, HCCL_BUFFSIZE minimum.

Pure functions over :class:`moe_cts.model.OpParams`. Where the doc and the kernel disagree the function
takes a ``variant`` (see docs/spec.md, "Decisions"); the default is the one the checker uses.
"""
from __future__ import annotations

import math

from moe_cts.binding import dispatch_outputs_of
from moe_cts.model import OpParams, TensorDesc

MiB = 1024 * 1024


def normalised_shared_expert_num(params: OpParams) -> int:
    """sharedExpertNum as tiling sees it: S==0 and SE==1 (the torch default) means SE=0."""
    if params.shared_expert_rank_num == 0 and params.shared_expert_num == 1:
        return 0
    return params.shared_expert_num


def rpse(params: OpParams) -> int | None:
    """Ranks per shared expert, S/SE (None when there are no shared experts or the config is invalid)."""
    se = normalised_shared_expert_num(params)
    s = params.shared_expert_rank_num
    if s <= 0 or se <= 0:
        return None
    return s // se or None


def is_shared_rank(params: OpParams, ep_rank: int) -> bool:
    return ep_rank < params.shared_expert_rank_num


def moe_local_expert_num(params: OpParams) -> int | None:
    """localExpertNum of a MoE-expert rank: moeExpertNum / (epWorldSize - sharedExpertRankNum) ("/" is integer division)."""
    n = params.ep_world_size - params.shared_expert_rank_num
    return params.moe_expert_num // n if n > 0 else None


def local_expert_num(params: OpParams, ep_rank: int) -> int:
    """localExpertNum: 1 on a shared-expert rank, M/(W-S) on a MoE-expert rank."""
    if is_shared_rank(params, ep_rank):
        return 1
    lm = moe_local_expert_num(params)
    if lm is None:
        raise ValueError("localExpertNum undefined: ep_world_size - shared_expert_rank_num <= 0")
    return lm


def max_bs(params: OpParams) -> int:
    """maxBs = globalBs / W if globalBs else Bs (the max over ranks)."""
    if params.global_bs:
        return params.global_bs // params.ep_world_size
    return params.bs


def global_bs_real(params: OpParams, ep_rank: int | None = None) -> int:
    """globalBs as the kernel uses it: torch_npu replaces 0 by this rank's bs * W."""
    if params.global_bs:
        return params.global_bs
    bs = params.bs if ep_rank is None else params.bs_of(ep_rank)
    return bs * params.ep_world_size


def a_rows(params: OpParams, ep_rank: int, variant: str = "kernel") -> int:
    """A: the most tokens this rank can receive.

    MoE rank (doc == kernel): globalBs * min(L, K), with globalBs = Bs*W when 0.
    Shared rank: variant "doc": Bs * W * SE / S (integer division, Bs = this rank's Bs);
    variant "kernel" (tiling CheckTensorShape and torch_npu): maxBs * ceil(W / rpse).
    """
    if variant not in ("doc", "kernel"):
        raise ValueError(f"variant must be 'doc' or 'kernel', got {variant!r}")
    W = params.ep_world_size
    if is_shared_rank(params, ep_rank):
        se = normalised_shared_expert_num(params)
        s = params.shared_expert_rank_num
        if variant == "doc":
            return params.bs_of(ep_rank) * W * se // s
        r = rpse(params)
        if r is None:
            raise ValueError("A undefined on a shared rank: invalid shared expert configuration")
        return (global_bs_real(params, ep_rank) // W) * math.ceil(W / r)
    lm = local_expert_num(params, ep_rank)
    return global_bs_real(params, ep_rank) * min(lm, params.k)


def server_num(params: OpParams) -> int:
    """serverNum on A2: 8 NPUs per server."""
    return max(params.ep_world_size // 8, 1)


def output_descs(params: OpParams, rank: int) -> dict[str, TensorDesc]:
    """The 7 dispatch outputs of global rank ``rank`` as torch_npu allocates them (moe_cts.binding)."""
    return {name: TensorDesc(dt, tuple(shape)) for name, (shape, dt) in dispatch_outputs_of(params, rank).items()}


def input_descs(params: OpParams, rank: int) -> dict[str, TensorDesc | None]:
    """The dispatch inputs of global rank ``rank`` with their documented dtype/shape (None = not passed)."""
    e = params.ep_rank(rank)
    bs, h, k = params.bs_of(e), params.h, params.k
    se = normalised_shared_expert_num(params)
    mask = None
    if params.x_active_mask == "1d":
        mask = TensorDesc("bool", (bs,))
    elif params.x_active_mask == "2d":
        mask = TensorDesc("bool", (bs, k))
    return {
        "x": TensorDesc(params.x_dtype, (bs, h)),
        "expert_ids": TensorDesc("int32", (bs, k)),
        "scales": TensorDesc("float32", (se + params.moe_expert_num, h)) if params.scales else None,
        "x_active_mask": mask,
        "expert_scales": TensorDesc("float32", (bs, k)) if params.expert_scales else None,
        "performance_info": TensorDesc("int64", (params.ep_world_size,)) if params.performance_info else None,
    }


def combine_op(params: OpParams) -> str:
    """Which combine call a case makes: "combine" (CombineV4) or "combine_add_rms_norm" (CombineAddRmsNormV2)."""
    return "combine_add_rms_norm" if params.combine_kind == "add_rms_norm" else "combine"


def combine_input_descs(params: OpParams, rank: int) -> dict[str, TensorDesc | None]:
    """The combine inputs of global rank ``rank`` as the suite passes them: the expert output in place of
    dispatch's expand_x, dispatch's assist_info / ep_recv_counts / tp_recv_counts / expand_scales passed on
    unchanged (the doc's pairing rule), the optional tensors the case asks for (None = not passed)."""
    e = params.ep_rank(rank)
    bs, h, k = params.bs_of(e), params.h, params.k
    outs = output_descs(params, rank)
    xd, Q = params.x_dtype, params.const_expert_num
    ins = input_descs(params, rank)
    alpha = (Q, h) if params.const_alpha == "vector" else (Q,)
    d: dict[str, TensorDesc | None] = {
        "expand_x": TensorDesc(xd, outs["expand_x"].shape),
        "expert_ids": ins["expert_ids"],
        "assist_info_for_combine": outs["assist_info_for_combine"],
        "ep_send_counts": outs["ep_recv_counts"],
        "expert_scales": TensorDesc("float32", (bs, k)),
        "tp_send_counts": outs["tp_recv_counts"],
        "x_active_mask": ins["x_active_mask"],
        "activation_scale": None, "weight_scale": None, "group_list": None,
        "expand_scales": outs["expand_scales"] if params.expert_scales else None,
        "shared_expert_x": TensorDesc(xd, (bs, h)) if params.shared_expert_x else None,
        "elastic_info": None,
        "ori_x": TensorDesc(xd, (bs, h)) if (params.copy_expert_num > 0 or Q > 0) else None,
        "const_expert_alpha_1": TensorDesc(xd, alpha) if Q > 0 else None,
        "const_expert_alpha_2": TensorDesc(xd, alpha) if Q > 0 else None,
        "const_expert_v": TensorDesc(xd, (Q, h)) if Q > 0 else None,
        "performance_info": None,
    }
    if params.combine_kind == "add_rms_norm":
        d["residual_x"] = TensorDesc(xd, (bs, 1, h))
        d["gamma"] = TensorDesc(xd, (h,))
    return d
