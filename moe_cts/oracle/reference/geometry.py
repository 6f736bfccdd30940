"""Shape and role facts of one world, after the kernels' normalisations (kernel-behaviour.md §1, §6, §7)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe_cts.model import OpParams

VARIANTS = ("doc", "kernel")


@dataclass(frozen=True)
class Geo:
    p: OpParams
    variant: str
    W: int  # EP world size
    T: int  # TP peers per EP rank in the rank layout (model.tp)
    merge: bool  # A3 TP=2: outputs merged [own ; peer]
    S: int  # shared-expert ranks (0 on A2)
    SE: int  # shared experts after normalisation (0 on A2, 0 when S == 0)
    M: int
    L: int  # local experts of a MoE rank
    rpse: int  # ranks per shared expert
    K: int
    H: int
    nsp: int  # Z + C + Q

    def is_shared(self, d: int) -> bool:
        return d < self.S

    def local_num(self, d: int) -> int:
        return 1 if self.is_shared(d) else self.L

    def global_bs_real(self, d: int) -> int:
        return self.p.global_bs or self.p.bs_of(d) * self.W

    def A(self, d: int) -> int:
        gbs = self.global_bs_real(d)
        if self.is_shared(d):
            if self.variant == "doc":  # doc: A = Bs * epWorldSize * sharedExpertNum / sharedExpertRankNum
                # ... which cannot hold what rank d receives when rpse does not divide W: grow it to fit
                nsrc = len(range(d % self.rpse, self.W, self.rpse))
                return max(gbs * self.SE // self.S, (gbs // self.W) * nsrc)
            return (gbs // self.W) * (-(-self.W // self.rpse))  # tiling/torch_npu: maxBs * ceil(W / rpse)
        return gbs * min(self.L, self.K)

    def shapes(self, d: int) -> dict:
        """torch_npu allocation shapes of the 7 dispatch outputs of an EP rank d (torch-npu-api.md §1b)."""
        p, A = self.p, self.A(d)
        tpw = p.tp_world_size
        ln = self.local_num(d)
        bs = p.bs_of(d)
        if p.expert_scales:
            ep_n = self.W * ln + self.global_bs_real(d) * 2 * self.K * (self.W // 8)
        else:
            ep_n = self.W * ln * (2 if tpw == 2 else 1)
        return {
            "expand_x": (max(A, A * tpw), self.H),
            "dynamic_scales": (A * tpw,) if tpw > 1 else (A,),
            "assist_info_for_combine": (max(bs * self.K, A * 128),),
            "expert_token_nums": (ln,),
            "ep_recv_counts": (ep_n,),
            "tp_recv_counts": (tpw,),
            "expand_scales": (A,) if p.expert_scales else (0,),
        }


def geo(params: OpParams, variant: str = "doc") -> Geo:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    p = params
    W = p.ep_world_size
    if p.product == "A2":  # tp/expertShardType/S forced to 0 (kernel-behaviour §6.2)
        S, SE, merge = 0, 0, False
    else:
        S = p.shared_expert_rank_num
        SE = 0 if S == 0 else p.shared_expert_num  # tiling: S==0 and SE==1 -> SE=0
        merge = p.tp == 2
    M = p.moe_expert_num
    L = M // (W - S) if W > S else 0
    rpse = S // SE if SE else 0
    return Geo(p, variant, W, p.tp, merge, S, SE, M, L, rpse, p.k, p.h, p.special_expert_num)


def x_dtype(params: OpParams):
    import ml_dtypes

    return ml_dtypes.bfloat16 if params.x_dtype == "bfloat16" else np.float16
