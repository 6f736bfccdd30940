"""The shared vocabulary of moe-cts: operator parameters, call descriptions, errors.

Every other module speaks these types. Parameter names are the torch_npu keyword names of
``npu_moe_distribute_dispatch_v2`` / ``npu_moe_distribute_combine_v2`` (docs/torch-npu-api.md),
so a case, a reference call and a real kernel call all use one spelling.

Rank layout (the doc's example, ``devicesEp[tp][ep] = ep*TP + tp``): a world has
``ep_world_size * max(tp_world_size, 1)`` ranks; global rank ``g`` has ``ep_rank = g // T`` and
``tp_rank = g % T`` with ``T = max(tp_world_size, 1)``. EP group ``t`` is ``[e*T + t for e]``; TP group
``e`` is ``[e*T + t for t]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

PRODUCTS = ("A2", "A3")

# aclnn statuses the doc promises (返回值 table)
ACLNN_ERR_PARAM_NULLPTR = 161001
ACLNN_ERR_PARAM_INVALID = 161002
ACLNN_ERR_INNER_TILING_ERROR = 561002
STATUS_NAMES = {
    ACLNN_ERR_PARAM_NULLPTR: "ACLNN_ERR_PARAM_NULLPTR",
    ACLNN_ERR_PARAM_INVALID: "ACLNN_ERR_PARAM_INVALID",
    ACLNN_ERR_INNER_TILING_ERROR: "ACLNN_ERR_INNER_TILING_ERROR",
}

DISPATCH_OUTPUTS = (
    "expand_x",
    "dynamic_scales",
    "assist_info_for_combine",
    "expert_token_nums",
    "ep_recv_counts",
    "tp_recv_counts",
    "expand_scales",
)
# Inputs every rank supplies to dispatch (and combine re-uses), by torch_npu name.
DISPATCH_INPUTS = ("x", "expert_ids", "scales", "x_active_mask", "expert_scales", "performance_info")

# the calls a spec row can apply to (CallDesc.op)
OPS = ("dispatch", "combine", "combine_add_rms_norm")
# combine inputs by torch_npu keyword (combine_add_rms_norm's expand_idx goes by assist_info_for_combine)
COMBINE_INPUTS = ("expand_x", "expert_ids", "assist_info_for_combine", "ep_send_counts", "expert_scales",
                  "tp_send_counts", "x_active_mask", "activation_scale", "weight_scale", "group_list",
                  "expand_scales", "shared_expert_x", "elastic_info", "ori_x", "const_expert_alpha_1",
                  "const_expert_alpha_2", "const_expert_v", "performance_info", "residual_x", "gamma")

DTYPES = ("bfloat16", "float16", "float32", "int8", "int32", "int64", "bool")
MAX_INT32 = 2**31 - 1


@dataclass(frozen=True)
class OpParams:
    """Everything that defines one dispatch (+ combine) call on every rank of a world.

    Scalar operator attributes keep their torch_npu keyword names and defaults. Tensor-shaping values
    (``bs``, ``h``, ``k``) and the presence/kind of optional tensors are explicit fields, because the
    spec's constraints are written over them.
    """

    product: str  # "A2" | "A3"
    ep_world_size: int
    moe_expert_num: int
    bs: int  # Bs of every EP rank; with bs_per_rank it is maxBs
    h: int
    k: int
    # operator attributes (torch_npu keyword names and defaults)
    tp_world_size: int = 0
    expert_shard_type: int = 0
    shared_expert_num: int = 1
    shared_expert_rank_num: int = 0
    quant_mode: int = 0
    global_bs: int = 0
    expert_token_nums_type: int = 1
    comm_alg: str = ""
    zero_expert_num: int = 0
    copy_expert_num: int = 0
    const_expert_num: int = 0
    # tensors: dtype of x; which optional tensors are passed and in which form
    x_dtype: str = "bfloat16"  # "bfloat16" | "float16"
    scales: bool = False  # smooth-quant scales passed to dispatch
    x_active_mask: str = "none"  # "none" | "1d" | "2d"
    expert_scales: bool = False  # expert_scales passed to *dispatch* (combine always gets them)
    performance_info: bool = False  # performance_info passed (selects DispatchV4 in torch_npu)
    # uneven Bs: one Bs per EP rank (len == ep_world_size, max == bs); None = every rank has bs
    bs_per_rank: tuple[int, ...] | None = None
    # combine side
    comm_quant_mode: int = 0  # 0 | 2
    combine_kind: str = "v4"  # "v4" (CombineV4) | "add_rms_norm" (CombineAddRmsNormV2, A3)
    shared_expert_x: bool = False  # combine gets shared_expert_x
    const_alpha: str = "scalar"  # "scalar": alpha (Q,) as the operator document; "vector": (Q,H) softmax form (not bit-exact)
    norm_eps: float = 1e-6

    # ---- derived helpers (pure; no spec knowledge beyond the rank layout) ----
    @property
    def tp(self) -> int:
        """Number of TP peers per EP rank (1 when there is no TP communication)."""
        return 2 if self.tp_world_size == 2 else 1

    @property
    def world_size(self) -> int:
        return self.ep_world_size * self.tp

    def ep_rank(self, g: int) -> int:
        return g // self.tp

    def tp_rank(self, g: int) -> int:
        return g % self.tp

    def bs_of(self, ep_rank: int) -> int:
        return self.bs if self.bs_per_rank is None else self.bs_per_rank[ep_rank]

    @property
    def special_expert_num(self) -> int:
        return self.zero_expert_num + self.copy_expert_num + self.const_expert_num

    def replace(self, **changes) -> "OpParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["bs_per_rank"] is not None:
            d["bs_per_rank"] = list(d["bs_per_rank"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "OpParams":
        d = dict(d)
        if d.get("bs_per_rank") is not None:
            d["bs_per_rank"] = tuple(d["bs_per_rank"])
        return cls(**d)


@dataclass(frozen=True)
class TensorDesc:
    """A tensor as the parameter checker sees it: dtype name and shape (no data)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CallDesc:
    """One rank's call as the first-stage (GetWorkspaceSize) checks see it.

    ``op`` is "dispatch", "combine" or "combine_add_rms_norm" (OPS). For combine calls ``attrs`` holds the
    combine keywords (comm_quant_mode instead of quant_mode ...) and ``tensors`` the combine inputs
    (expand_idx of combine_add_rms_norm under its combine_v2 name assist_info_for_combine).

    ``attrs`` holds every scalar argument by torch_npu name (group_ep, ep_world_size, ep_rank_id,
    moe_expert_num, group_tp, tp_world_size, tp_rank_id, expert_shard_type, shared_expert_num,
    shared_expert_rank_num, quant_mode, global_bs, expert_token_nums_type, comm_alg,
    zero_expert_num, copy_expert_num, const_expert_num). ``comm_alg`` may be None (nullptr).
    ``tensors`` maps every input and output name (DISPATCH_INPUTS + DISPATCH_OUTPUTS) to a
    TensorDesc, or None for a null pointer. ``env`` carries HCCL_BUFFSIZE (MB) and
    HCCL_INTRA_PCIE_ENABLE / HCCL_INTRA_ROCE_ENABLE where relevant. ``product`` is "A2" | "A3".
    """

    product: str
    attrs: Mapping[str, object]
    tensors: Mapping[str, TensorDesc | None]
    env: Mapping[str, object] = field(default_factory=dict)
    op: str = "dispatch"


class AclnnError(RuntimeError):
    """A kernel call rejected with an aclnn status (161001 / 161002 / 561002 ...).

    ``constraint`` names the spec row that fired when the backend knows it (sim does; real
    hardware does not), ``message`` is the backend's text (for npu: the RuntimeError text).
    """

    def __init__(self, status: int, message: str = "", constraint: str | None = None):
        self.status = int(status)
        self.message = message
        self.constraint = constraint
        super().__init__(f"aclnn status {status}" + (f" [{constraint}]" if constraint else "") + (f": {message}" if message else ""))


class BindingError(RuntimeError):
    """Rejected by the torch_npu Python binding itself (ERR01xxx), before any aclnn status exists."""

    def __init__(self, code: str, message: str = ""):
        self.code = code
        self.message = message
        super().__init__(f"binding rejected the call ({code}): {message}")
