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
