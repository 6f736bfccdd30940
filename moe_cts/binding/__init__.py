"""torch_npu's surface of the MoE distribute ops, once: what the binding accepts, checks and allocates.

Every layer that needs to know what torch_npu does asks here: the npu backend (which arguments go
positionally), sim (output allocation, the binding's own checks, the y_dtype map), the case generator
(which broken parameters the binding rejects before the kernel sees them, which ones no torch_npu call
can express), the spec's call descriptions (the scalar keywords of one rank's call) and the torch_npu
stand-in of the self-tests (schemas, allocation, checks).

Sources (docs/torch-npu-api.md says more):

* schemas: ``torch_npu_schemas.yaml`` (Ascend/op-plugin ``op_plugin/config/op_plugin_functions.yaml``);
* allocation: the meta functions of Ascend/op-plugin ``op_plugin/python/meta/_meta_registrations.py``
  (``npu_moe_distribute_dispatch_v2_meta``, ``npu_moe_distribute_combine_v2_meta``), re-derived, not copied;
* the Python-side checks raised as ``RuntimeError ... ERR01001``: the same meta functions and
  ``op_plugin/ops/opapi/MoeDistributeDispatchV2KernelOpApi.cpp`` / ``MoeDistributeCombineKernelV2OpApi.cpp``;
* dtype contract of the op definitions (what the aclnn layer rejects with 161002): the ``REG_OP`` entries
  ``MoeDistributeDispatchV2`` / ``MoeDistributeCombineV2`` (torchair ``auto_generated_ge_raw_ops.py``).

Everything here is torch-free: dtypes are names ("bfloat16", "int8", ...), shapes are tuples.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Mapping

from moe_cts.model import DISPATCH_OUTPUTS, OpParams

DISPATCH_OP = "npu_moe_distribute_dispatch_v2"
COMBINE_OP = "npu_moe_distribute_combine_v2"
COMBINE_ADD_RMS_NORM_OP = "npu_moe_distribute_combine_add_rms_norm"
OPS = (DISPATCH_OP, COMBINE_OP, COMBINE_ADD_RMS_NORM_OP)
# the aclnn kernel each op calls on a current CANN (the highest version present)
ACLNN_API = {
    DISPATCH_OP: "aclnnMoeDistributeDispatchV4",
    COMBINE_OP: "aclnnMoeDistributeCombineV4",
    COMBINE_ADD_RMS_NORM_OP: "aclnnMoeDistributeCombineAddRmsNormV2",
}
SCHEMA_FILE = Path(__file__).with_name("torch_npu_schemas.yaml")

# torch_npu's y_dtype keyword takes a torch ScalarType number: how a caller picks expand_x's dtype, and
# the only way an expand_x dtype reaches the kernel through torch_npu
Y_DTYPE = {"int8": 1, "float16": 5, "bfloat16": 15}
# y_dtype -> (expand_x dtype, divisor of H): the meta function's map (fp4 packs two values per byte)
Y_DTYPE_OUT = {
    1: ("int8", 1), 5: ("float16", 1), 15: ("bfloat16", 1),
    23: ("float8_e5m2", 1), 291: ("float8_e5m2", 1), 24: ("float8_e4m3fn", 1), 292: ("float8_e4m3fn", 1),
    290: ("uint8", 1), 296: ("uint8", 2), 297: ("uint8", 2),
}

# the dtypes each op definition accepts (REG_OP): outside them the aclnn layer answers 161002
_BFI = ("bfloat16", "float16", "int32")
INPUT_DTYPES = {
    DISPATCH_OP: {"x": ("bfloat16", "float16"), "expert_ids": ("int32",), "scales": ("float32",),
                  "x_active_mask": ("bool",), "expert_scales": ("float32",), "elastic_info": ("int32",),
                  "performance_info": ("int64",)},
    COMBINE_OP: {"expand_x": _BFI, "expert_ids": ("int32",), "assist_info_for_combine": ("int32",),
                 "ep_send_counts": ("int32",), "expert_scales": ("float32",), "tp_send_counts": ("int32",),
                 "x_active_mask": ("bool",), "expand_scales": ("float32",), "shared_expert_x": _BFI,
                 "ori_x": _BFI, "const_expert_alpha_1": _BFI, "const_expert_alpha_2": _BFI,
                 "const_expert_v": _BFI, "elastic_info": ("int32",), "performance_info": ("int64",)},
}
INPUT_DTYPES[COMBINE_ADD_RMS_NORM_OP] = {
    **{("expand_idx" if k == "assist_info_for_combine" else k): v for k, v in INPUT_DTYPES[COMBINE_OP].items()},
    "activation_scale": ("float32",), "weight_scale": ("float32",), "group_list": ("int64",),
    "residual_x": ("bfloat16", "float16"), "gamma": ("bfloat16", "float16"),
}


# ------------------------------------------------------------------------------------------- schemas
@functools.lru_cache(maxsize=None)
def _schema_data() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def releases() -> list[str]:
    """The torch_npu release lines whose schemas are recorded."""
    return list(_schema_data()["releases"])


def schemas(release: str | None = None) -> dict[str, str]:
    """op name -> schema string of one torch_npu release line (default: the current one)."""
    data = _schema_data()
    rel = release or data["default"]
    if rel not in data["releases"]:
        raise ValueError(f"unknown torch_npu release line {rel!r} (known: {', '.join(data['releases'])})")
    return dict(data["releases"][rel]["schemas"])


_ARG_RE = re.compile(r"^\s*(?P<type>[\w\[\]?]+)\s+(?P<name>\w+)(?:=(?P<default>.*))?\s*$")


@functools.lru_cache(maxsize=None)
def signature(op: str, release: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positional parameter names, keyword-only parameter names) of ``op``, read from its schema."""
    s = schemas(release).get(op)
    if s is None:
        raise ValueError(f"no schema for {op!r} in torch_npu release line {release or _schema_data()['default']!r}")
    inner = s[s.index("(") + 1: s.rindex(") ->")]
    pos, kw, star = [], [], False
    for part in inner.split(","):
        part = part.strip()
        if part == "*":
            star = True
            continue
        m = _ARG_RE.match(part)
        if m is None:
            raise ValueError(f"schema of {op}: cannot read argument {part!r}")
        (kw if star else pos).append(m.group("name"))
    return tuple(pos), tuple(kw)


def positional(op: str) -> tuple[str, ...]:
    return signature(op)[0]


# ------------------------------------------------------------------------------------------- keywords
def group_names(params: OpParams, group_ep: str, group_tp: str) -> dict[str, str]:
    """group_ep / group_tp as a caller passes them: group_tp only with TP communication (else torch's "")."""
    return {"group_ep": group_ep, "group_tp": group_tp if params.tp_world_size == 2 else ""}


def dispatch_attrs(params: OpParams, rank: int, group_ep: str, group_tp: str) -> dict:
    """Every scalar argument of global rank ``rank``'s dispatch call, by torch_npu keyword."""
    return {
        **group_names(params, group_ep, group_tp),
        "ep_world_size": params.ep_world_size, "ep_rank_id": params.ep_rank(rank),
        "moe_expert_num": params.moe_expert_num, "tp_world_size": params.tp_world_size,
        "tp_rank_id": params.tp_rank(rank), "expert_shard_type": params.expert_shard_type,
        "shared_expert_num": params.shared_expert_num, "shared_expert_rank_num": params.shared_expert_rank_num,
        "quant_mode": params.quant_mode, "global_bs": params.global_bs,
        "expert_token_nums_type": params.expert_token_nums_type, "comm_alg": params.comm_alg,
        "zero_expert_num": params.zero_expert_num, "copy_expert_num": params.copy_expert_num,
        "const_expert_num": params.const_expert_num,
    }


def combine_attrs(params: OpParams, rank: int, group_ep: str, group_tp: str) -> dict:
    """Every scalar argument of global rank ``rank``'s combine call (both flavours), by torch_npu keyword."""
    a = dispatch_attrs(params, rank, group_ep, group_tp)
    for k in ("quant_mode", "expert_token_nums_type"):
        del a[k]
    a["comm_quant_mode"] = params.comm_quant_mode
    if params.combine_kind == "add_rms_norm":
        a["norm_eps"] = params.norm_eps
    return a


# ------------------------------------------------------------------------------------------- allocation
def dispatch_outputs(x_shape, x_dtype: str, k: int, ep_world_size: int, ep_rank_id: int, moe_expert_num: int, *,
                     scales_shape=None, expert_scales: bool = False, elastic_info: bool = False,
                     tp_world_size: int = 0, expert_shard_type: int = 0, shared_expert_num: int = 1,
                     shared_expert_rank_num: int = 0, quant_mode: int = 0, global_bs: int = 0,
                     y_dtype: int | None = None, soc_before_950: bool = True) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of the 7 dispatch outputs, in schema order, as torch_npu allocates them.

    The meta function's rules: A = maxBs*ceil(W/rpse) on a shared-expert rank and gbs*min(L, K) on a MoE
    rank (gbs = bs*W when 0); with elastic_info any rank may become either kind (the max of both);
    expand_x is (max(A, A*tp), H) of x's dtype (quant_mode 0) or int8, y_dtype overriding; dynamic_scales is
    (A*tp,) with TP, (A, scales.shape[1]) for quant_mode 0 with scales, (A,) otherwise; assist_info is
    (max(bs*K, A*128),); expert_token_nums (L,); ep_recv_counts (W*L*(2 if tp==2 else 1),), or
    W*L + gbs*2*K*(W//8) when expert_scales is given before Ascend950; tp_recv_counts (tp_world_size,);
    expand_scales (A,) with expert_scales, else (0,).
    """
    bs, h = int(x_shape[0]), int(x_shape[1])
    W, r, M = int(ep_world_size), int(ep_rank_id), int(moe_expert_num)
    srn, sen, k = int(shared_expert_rank_num), int(shared_expert_num), int(k)
    tp = int(tp_world_size)
    gbs = int(global_bs) or bs * W
    local, a = 1, 0
    if expert_shard_type == 0 and W > 0:  # W <= 0: a broken call the checker reports; allocate nothing
        a_shared = (gbs // W) * math.ceil(W / (srn // sen)) if (srn > 0 and sen > 0 and srn // sen > 0) else 0
        local_moe = M // (W - srn) if W > srn else 0
        a_moe = gbs * min(local_moe, k)
        if r < srn:
            a = a_shared
        else:
            local, a = local_moe, a_moe
        if elastic_info:
            a, local = max(a_shared, a_moe), max(local_moe, 1)
    ep_recv = W * local * (2 if tp == 2 else 1)
    if expert_scales and soc_before_950:
        ep_recv = W * local + gbs * 2 * k * (W // 8)
    out_dt, hdiv = (x_dtype, 1) if quant_mode == 0 else ("int8", 1)
    if y_dtype is not None:
        out_dt, hdiv = Y_DTYPE_OUT.get(int(y_dtype), (out_dt, 1))
    if tp > 1:
        ds_shape = (a * tp,)
    elif quant_mode == 0 and scales_shape is not None:
        ds_shape = (a, int(scales_shape[1])) if x_dtype != "int32" else (a,)
    elif quant_mode == 3:
        ds_shape = (a, math.ceil(h / 128))
    elif quant_mode in (4, 5):
        ds_shape = (a, (math.ceil(h / 32) + 1) // 2 * 2)
    else:
        ds_shape = (a,)
    ds_dt = "uint8" if quant_mode in (4, 5) else "float32"
    return [
        ((max(a, a * tp), h // hdiv), out_dt),
        (ds_shape, ds_dt),
        ((max(bs * k, a * 128),), "int32"),
        ((local,), "int64"),
        ((ep_recv,), "int32"),
        ((tp,), "int32"),
        (((a,) if expert_scales else (0,)), "float32"),
    ]


def dispatch_outputs_of(params: OpParams, rank: int, y_dtype: int | None = None) -> dict[str, tuple]:
    """The 7 outputs torch_npu allocates for global rank ``rank`` of a case: {name: (shape, dtype)}."""
    e = params.ep_rank(rank)
    outs = dispatch_outputs(
        (params.bs_of(e), params.h), params.x_dtype, params.k, params.ep_world_size, e, params.moe_expert_num,
        scales_shape=(params.moe_expert_num, params.h) if params.scales else None,
        expert_scales=params.expert_scales, tp_world_size=params.tp_world_size,
        expert_shard_type=params.expert_shard_type, shared_expert_num=params.shared_expert_num,
        shared_expert_rank_num=params.shared_expert_rank_num, quant_mode=params.quant_mode,
        global_bs=params.global_bs, y_dtype=y_dtype)
    return dict(zip(DISPATCH_OUTPUTS, outs))


def combine_outputs(op: str, bs: int, h: int, expand_x_dtype: str) -> list[tuple[tuple[int, ...], str]]:
    """combine_v2: x (Bs, H); combine_add_rms_norm: y (Bs,1,H), rstd (Bs,1,1) float32, x (Bs,1,H)."""
    if op == COMBINE_ADD_RMS_NORM_OP:
        return [((bs, 1, h), expand_x_dtype), ((bs, 1, 1), "float32"), ((bs, 1, h), expand_x_dtype)]
    return [((bs, h), expand_x_dtype)]


# ------------------------------------------------------------------------------------------- checks
def shared_config_ok(shared_expert_num: int, shared_expert_rank_num: int) -> bool:
    sen, srn = shared_expert_num, shared_expert_rank_num
    return (sen == 1 and srn == 0) or (sen == 0 and srn == 0) or (sen > 0 and srn // sen > 0 and srn % sen == 0)


def common_rejection(ep_world_size: int, ep_rank_id: int, shared_expert_num: int,
                     shared_expert_rank_num: int) -> str | None:
    """The checks every op's binding makes on the EP attributes (first failing one's message, or None)."""
    W, r, srn, sen = ep_world_size, ep_rank_id, shared_expert_rank_num, shared_expert_num
    if not 0 <= r < W:
        return f"ep_rank_id should be in [0, ep_world_size), but got ep_world_size: {W}, ep_rank_id: {r}."
    if not 0 <= srn < W:
        return (f"shared_expert_rank_num should be in [0, ep_world_size), but got ep_world_size: {W}, "
                f"shared_expert_rank_num: {srn}.")
    if not shared_config_ok(sen, srn):
        return f"shared_expert_num: {sen} and shared_expert_rank_num: {srn} is not a valid shared expert configuration."
    return None


def dispatch_rejection(x_dim: int, ids_dim: int, ep_world_size: int, ep_rank_id: int, shared_expert_num: int,
                       shared_expert_rank_num: int, expert_token_nums_type: int) -> str | None:
    """What dispatch_v2's binding rejects (ERR01001) before any aclnn status exists; None when it passes."""
    if x_dim != 2 or ids_dim != 2:
        return f"The x and expert_ids should be 2D, but got x: {x_dim}D, expert_ids: {ids_dim}D."
    why = common_rejection(ep_world_size, ep_rank_id, shared_expert_num, shared_expert_rank_num)
    if why:
        return why
    if expert_token_nums_type not in (0, 1):
        return f"expert_token_nums_type should be 0 or 1, but got {expert_token_nums_type}."
    return None


def combine_rejection(expand_x_dtype: str, expert_ids_dtype: str, ep_world_size: int, ep_rank_id: int,
                      shared_expert_num: int, shared_expert_rank_num: int) -> str | None:
    """What combine_v2 / combine_add_rms_norm's binding rejects (ERR01001); None when it passes."""
    why = common_rejection(ep_world_size, ep_rank_id, shared_expert_num, shared_expert_rank_num)
    if why:
        return why
    if expand_x_dtype not in _BFI:
        return f"expand_x dtype should be bfloat16, float16 or int32, but got {expand_x_dtype}."
    if expert_ids_dtype != "int32":
        return f"expert_ids dtype should be int32, but got {expert_ids_dtype}."
    return None


def dtype_violation(op: str, dtypes: Mapping[str, str | None]) -> str | None:
    """The first input whose dtype the op definition does not accept (aclnn 161002), or None."""
    for name, allowed in INPUT_DTYPES[op].items():
        d = dtypes.get(name)
        if d is not None and d not in allowed:
            return f"{name} dtype {d} is not one of {list(allowed)}"
    return None


def case_rejection(params: OpParams, overrides: Mapping) -> str | None:
    """Which binding check rejects a (broken) case's dispatch call on some rank, or None.

    Through torch_npu such a case can only expect that rejection: the aclnn status is never reached.
    """
    x_dim = ids_dim = 2
    for name in ("x", "expert_ids"):
        shape = overrides.get(f"tensors.{name}.shape")
        if shape is not None:
            x_dim, ids_dim = (len(shape), ids_dim) if name == "x" else (x_dim, len(shape))
    for g in range(params.world_size):
        why = dispatch_rejection(x_dim, ids_dim, params.ep_world_size,
                                 overrides.get("attrs.ep_rank_id", params.ep_rank(g)), params.shared_expert_num,
                                 params.shared_expert_rank_num, params.expert_token_nums_type)
        if why:
            return why
    return None


def combine_op_of(params: OpParams) -> str:
    """The torch_npu op a case's combine call uses."""
    return COMBINE_ADD_RMS_NORM_OP if params.combine_kind == "add_rms_norm" else COMBINE_OP


# combine_add_rms_norm's binding calls the assist_info tensor expand_idx
_BINDING_NAME = {(COMBINE_ADD_RMS_NORM_OP, "assist_info_for_combine"): "expand_idx"}


def unreachable(overrides: Mapping, params: OpParams | None = None) -> str | None:
    """Why a call-description override cannot be expressed as a torch_npu call (None when it can).

    Dispatch overrides are ``tensors.*`` / ``attrs.*``; combine overrides ``combine.tensors.*`` /
    ``combine.attrs.*`` (the combine flavour of ``params`` decides which schema is asked).
    """
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "combine":
            why = _combine_unreachable(parts[1:], value, combine_op_of(params) if params else COMBINE_OP)
            if why:
                return why
            continue
        if key == "tensors.expand_x.dtype" and value in Y_DTYPE:
            continue  # the y_dtype keyword chooses expand_x's dtype
        if parts[0] == "tensors" and parts[1] in DISPATCH_OUTPUTS:
            return f"needs {key}: torch_npu allocates every output itself (reachable only through raw aclnn)"
        if parts[0] == "tensors" and len(parts) == 2 and value is None and parts[1] in ("x", "expert_ids"):
            return f"needs a null {parts[1]}: a required Tensor in the torch_npu schema (reachable only through raw aclnn)"
        if parts[0] == "attrs" and value is None and parts[1] in ("group_ep", "group_tp", "comm_alg"):
            return f"needs a null {parts[1]}: a str in the torch_npu schema (reachable only through raw aclnn)"
    return None


def _combine_unreachable(parts: list[str], value, op: str) -> str | None:
    if len(parts) < 2:
        return None
    pos, kw = signature(op)
    name = _BINDING_NAME.get((op, parts[1]), parts[1])
    if parts[0] == "tensors":
        if name not in pos + kw:
            return f"needs {name} on {op}: not an argument of its torch_npu schema (reachable only through raw aclnn)"
        if len(parts) == 2 and value is None and name in pos:
            return f"needs a null {name} on {op}: a required Tensor in the torch_npu schema (reachable only through raw aclnn)"
    if parts[0] == "attrs" and value is None and name in ("group_ep", "group_tp", "comm_alg"):
        return f"needs a null {name} on {op}: a str in the torch_npu schema (reachable only through raw aclnn)"
    return None
