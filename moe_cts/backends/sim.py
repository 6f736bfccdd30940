"""``sim``: a software device for MoeDistributeDispatchV4 / CombineV4, built like the kernel.

A second, independent implementation of the operators (it never imports ``moe_cts.oracle.reference``):

* dispatch: every rank *packs* its rows by destination (walking valid (token, k) entries in increasing
  b*K+k; MoE target = S + e // L, shared expert j on rank j*rpse + s % rpse), quantises per (token,
  destination) on the sender, exchanges counts with a fixed-size all_to_all and rows with an uneven
  ``all_to_all_single``, and the receiver *unpacks* in the kernel's order (local expert, then source
  rank, then token). TP=2 adds a TP all_gather giving ``[own ; peer]``.
* combine: the expert rank sends each row back to its source token slot (A3: assistInfo triples;
  A2: per-sender slot index + epSendCounts), optionally through the TP reduce and the comm-quant path;
  the source rank accumulates in fp32 in k order (multiply, then add: two roundings).

docs/kernel-behaviour.md (sections 1-4, 6) gives every rule implemented here. What the binding accepts and
allocates comes from ``moe_cts.binding``; the parameter checks of both calls are the spec rows of
``moe_cts.spec`` (the same rows the checker and the case generators read).
"""
from __future__ import annotations

import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from moe_cts.binding import (COMBINE_ADD_RMS_NORM_OP, COMBINE_OP, DISPATCH_OP, combine_rejection, dispatch_outputs,
                             dispatch_rejection)
from moe_cts.model import DISPATCH_OUTPUTS, AclnnError, BindingError, CallDesc, TensorDesc
from moe_cts.spec import DEFAULT_PROFILE, load_profile

__all__ = ["SimBackend", "SimWorldMismatch", "dispatch_meta"]

_KNOWN_GROUP_FAILURE = 561000  # a group name the world never created: HCCL resource failure at run time


# =========================================================================== small helpers
def _dtname(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _desc(t) -> TensorDesc | None:
    return None if t is None else TensorDesc(_dtname(t), tuple(int(s) for s in t.shape))


def _pack(cols: list[torch.Tensor], n: int, device) -> torch.Tensor:
    """Concatenate per-row columns of mixed dtypes into one (n, bytes) uint8 payload."""
    parts = [(c[:, None] if c.dim() == 1 else c.flatten(1)).contiguous().view(torch.uint8) for c in cols]
    if not parts:
        return torch.empty((n, 0), dtype=torch.uint8, device=device)
    return torch.cat(parts, dim=1)


def _unpack(buf: torch.Tensor, layout: list[tuple[torch.dtype, int]]) -> list[torch.Tensor]:
    """Inverse of :func:`_pack`: ``layout`` lists (dtype, elements per row)."""
    out, off, n = [], 0, buf.shape[0]
    for dt, width in layout:
        nb = width * torch.empty((), dtype=dt).element_size()
        out.append(buf[:, off:off + nb].contiguous().view(dt).reshape(n, width))
        off += nb
    return out


def _exchange(tr, group, payload: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
    out = torch.empty((sum(recv_counts), payload.shape[1]), dtype=payload.dtype, device=payload.device)
    tr.all_to_all_single(out, payload, recv_counts, send_counts, group)
    return out


def _exchange_counts(tr, group, counts: torch.Tensor) -> torch.Tensor:
    """Fixed-size all_to_all of a (G, C) int64 count matrix (row g goes to group rank g)."""
    out = torch.empty_like(counts)
    tr.all_to_all_single(out, counts.contiguous(), None, None, group)
    return out


def _put(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Write ``src`` rows into the front of ``dst``, as far as it reaches. Where torch_npu allocates less than
    the kernel writes (inconsistent attributes), the real op writes out of bounds; sim truncates."""
    if tuple(src.shape[1:]) != tuple(dst.shape[1:]):
        raise AclnnError(561002, f"sim: output of shape {tuple(dst.shape)} cannot hold rows of {tuple(src.shape)}")
    n = min(dst.shape[0], src.shape[0])
    if n:
        dst[:n] = src[:n].to(dst.dtype)


def _dev(ctx, t) -> torch.device:
    return torch.device(ctx.device) if ctx.device else t.device


def _excl_cumsum(v: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(v, 0) - v


class SimWorldMismatch(RuntimeError):
    """The ranks of one call disagree on attributes the doc requires to be equal (undefined on hardware).

    sim detects it with one small exchange before the data moves and raises on EVERY rank of the call,
    instead of letting mismatched exchange sizes crash or hang the world."""


def _agree(tr, ep, tpg, W: int, fields: tuple, device) -> None:
    """Every rank of the EP group (and its TP peer) checks that all ranks passed the same ``fields``:
    one all_reduce(max) of (fingerprint, -fingerprint); all equal <=> max == min."""
    G = tr.group_size(ep)
    if G != W:
        raise SimWorldMismatch(f"ep_world_size={W} but the EP group has {G} ranks")
    fp = zlib.crc32(repr(fields).encode()) & 0x7FFFFFFF
    t = torch.tensor([fp, -fp], dtype=torch.int64, device=device)
    tr.all_reduce(t, ep, op="max")
    if tpg is not None:
        t[0] = 1 if int(t[0]) != -int(t[1]) else 0
        t[1] = 0
        tr.all_reduce(t, tpg, op="max")
        bad = bool(int(t[0]))
    else:
        bad = int(t[0]) != -int(t[1])
    if bad:
        raise SimWorldMismatch(f"the ranks of this {fields[0]} call disagree on attributes the doc requires to be "
                               f"equal ({', '.join(_AGREE_NAMES[fields[0]])})")


_AGREE_NAMES = {
    "dispatch": ("product", "ep_world_size", "moe_expert_num", "shared_expert_num", "shared_expert_rank_num",
                 "quant_mode", "global_bs", "comm_alg", "zero/copy/const_expert_num", "tp_world_size",
                 "expert_token_nums_type", "H", "K", "x dtype", "scales given"),
    "combine": ("product", "ep_world_size", "moe_expert_num", "shared_expert_num", "shared_expert_rank_num",
                "global_bs", "comm_alg", "comm_quant_mode", "zero/copy/const_expert_num", "tp_world_size", "H",
                "K", "expand_x dtype"),
}


# =========================================================================== derived configuration
@dataclass
class _Cfg:
    product: str
    W: int
    me: int
    M: int
    S: int
    SE: int
    rpse: int
    Lmoe: int
    L: int  # local experts of this rank (1 on a shared rank)
    shared: bool
    tp: int  # TP peers exchanging data (2 or 1)
    tp_rank: int
    Z: int
    C: int
    Q: int
    bs: int
    K: int
    H: int
    global_bs: int
    A: int

    @property
    def special(self) -> int:
        return self.Z + self.C + self.Q


def _cfg(product, x_shape, k, ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id,
         shared_expert_num, shared_expert_rank_num, global_bs, zero, copy, const) -> _Cfg:
    W, me, M = int(ep_world_size), int(ep_rank_id), int(moe_expert_num)
    S, SE = int(shared_expert_rank_num), int(shared_expert_num)
    tp = 2 if int(tp_world_size) == 2 else 1
    tp_rank = int(tp_rank_id) if tp == 2 else 0
    if product == "A2":  # A2: TP / shared-expert attributes are only null-checked, then forced to 0
        S, SE, tp, tp_rank = 0, 0, 1, 0
    if S == 0 and SE == 1:  # tiling normalisation
        SE = 0
    rpse = S // SE if SE else 0
    Lmoe = M // (W - S) if W > S else 0
    shared = me < S
    bs, H = int(x_shape[0]), int(x_shape[1])
    gbs = int(global_bs) or bs * W  # torch_npu replaces 0 by bs*W
    A = (gbs // W) * (-(-W // rpse)) if shared else gbs * min(Lmoe, int(k))
    return _Cfg(product, W, me, M, S, SE, rpse, Lmoe, 1 if shared else Lmoe, shared, tp, tp_rank,
                int(zero), int(copy), int(const), bs, int(k), H, gbs, A)


def dispatch_meta(x_shape, x_dtype, k, ep_world_size, ep_rank_id, moe_expert_num, **kw):
    """Output (shape, torch dtype) list exactly as torch_npu allocates them (moe_cts.binding.dispatch_outputs)."""
    outs = dispatch_outputs(x_shape, str(x_dtype).replace("torch.", ""), k, ep_world_size, ep_rank_id,
                            moe_expert_num, **kw)
    return [(shape, getattr(torch, dt)) for shape, dt in outs]


# =========================================================================== parameter checks
_CHECKERS: dict[str, Any] = {}
_CHECKERS_LOCK = threading.Lock()  # thread-ranks of a loopback world share one compiled profile


def _checker(profile: str):
    with _CHECKERS_LOCK:
        if profile not in _CHECKERS:
            _CHECKERS[profile] = load_profile(profile)
        return _CHECKERS[profile]


def _binding_reject(op: str, why: str | None) -> None:
    if why:
        raise BindingError("ERR01001", f"{op}: {why}")


def _env(ctx) -> dict:
    """ctx.env as the checker wants it: numeric strings (HCCL_BUFFSIZE="200") become ints."""
    out = {}
    for k, v in dict(ctx.env or {}).items():
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        out[k] = v
    return out


# =========================================================================== the backend
class SimBackend:
    """The software device. Options: ``profile`` (the spec profile sim checks by: by default the profile of
    the case it runs, ``ctx.profile``; set it to make sim behave like one release whatever the suite judges
    by), ``check`` (run the spec parameter checks, default True); unknown options are accepted and ignored."""

    name = "sim"

    def __init__(self, profile: str | None = None, check: bool = True, **options: Any):
        self.profile = profile
        self.check = bool(check)
        self.options = options

    # ------------------------------------------------------------------ checks
    def _run_checks(self, ctx, desc: CallDesc):
        """First-stage checks, before any communication, so every rank fails alike (no hang): the spec
        profile's rows for this call (dispatch or combine), in check order; the first checked one raises."""
        if not self.check:
            return
        prof = _checker(self.profile or getattr(ctx, "profile", None) or DEFAULT_PROFILE)
        for v in prof.check(desc):
            if v.kind == "checked":
                raise AclnnError(v.status, v.message, constraint=v.constraint)

    @staticmethod
    def _group(ctx, name, what):
        if name not in (ctx.groups or {}):
            raise AclnnError(_KNOWN_GROUP_FAILURE, f"{what} group {name!r} does not exist in this world")
        return ctx.groups[name]

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, ctx, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *,
                 scales=None, x_active_mask=None, expert_scales=None, elastic_info=None, performance_info=None,
                 group_tp="", tp_world_size=0, tp_rank_id=0, expert_shard_type=0, shared_expert_num=1,
                 shared_expert_rank_num=0, quant_mode=0, global_bs=0, expert_token_nums_type=1, comm_alg="",
                 zero_expert_num=0, copy_expert_num=0, const_expert_num=0, y_dtype=None, x_dtype=None,
                 scales_dtype=None):
        _binding_reject(DISPATCH_OP, dispatch_rejection(x.dim(), expert_ids.dim(), ep_world_size, ep_rank_id,
                                                        shared_expert_num, shared_expert_rank_num,
                                                        expert_token_nums_type))
        meta = dispatch_meta(tuple(x.shape), x.dtype, expert_ids.shape[1], ep_world_size, ep_rank_id,
                             moe_expert_num, scales_shape=None if scales is None else tuple(scales.shape),
                             expert_scales=expert_scales is not None, elastic_info=elastic_info is not None,
                             tp_world_size=tp_world_size,
                             expert_shard_type=expert_shard_type, shared_expert_num=shared_expert_num,
                             shared_expert_rank_num=shared_expert_rank_num, quant_mode=quant_mode,
                             global_bs=global_bs, y_dtype=y_dtype)
        gbs = int(global_bs) or x.shape[0] * ep_world_size  # torch_npu passes bs*W for 0
        attrs = dict(group_ep=group_ep, ep_world_size=ep_world_size, ep_rank_id=ep_rank_id,
                     moe_expert_num=moe_expert_num, group_tp=group_tp, tp_world_size=tp_world_size,
                     tp_rank_id=tp_rank_id, expert_shard_type=expert_shard_type,
                     shared_expert_num=shared_expert_num, shared_expert_rank_num=shared_expert_rank_num,
                     quant_mode=quant_mode, global_bs=gbs, expert_token_nums_type=expert_token_nums_type,
                     comm_alg=comm_alg, zero_expert_num=zero_expert_num, copy_expert_num=copy_expert_num,
                     const_expert_num=const_expert_num)
        tensors = {"x": _desc(x), "expert_ids": _desc(expert_ids), "scales": _desc(scales),
                   "x_active_mask": _desc(x_active_mask), "expert_scales": _desc(expert_scales),
                   "elastic_info": _desc(elastic_info), "performance_info": _desc(performance_info)}
        for name, (shape, dt) in zip(DISPATCH_OUTPUTS, meta):
            tensors[name] = TensorDesc(str(dt).replace("torch.", ""), tuple(shape))
        desc = CallDesc(product=ctx.product, attrs=attrs, tensors=tensors, env=_env(ctx))
        self._run_checks(ctx, desc)
        ep = self._group(ctx, group_ep, "EP")
        tpg = self._group(ctx, group_tp, "TP") if (tp_world_size == 2 and ctx.product != "A2") else None
        _agree(ctx.transport, ep, tpg, ep_world_size,
               ("dispatch", ctx.product, ep_world_size, moe_expert_num, shared_expert_num, shared_expert_rank_num,
                quant_mode, gbs, comm_alg, zero_expert_num, copy_expert_num, const_expert_num, tp_world_size,
                expert_token_nums_type, x.shape[1], expert_ids.shape[1], str(x.dtype), scales is not None),
               _dev(ctx, x))
        return _dispatch(ctx, ep, tpg, meta, x, expert_ids, scales, x_active_mask, expert_scales, performance_info,
                         ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id, shared_expert_num,
                         shared_expert_rank_num, quant_mode, gbs, expert_token_nums_type, zero_expert_num,
                         copy_expert_num, const_expert_num)

    # ------------------------------------------------------------------ combine
    def _combine_prologue(self, ctx, op, tensors, attrs):
        """Both combine flavours: the binding's checks, the spec's checks before any communication, then the
        EP/TP groups, then one all_reduce proving every rank passed the same must-agree attributes.
        Returns (ep group, tp group)."""
        name = COMBINE_ADD_RMS_NORM_OP if op == "combine_add_rms_norm" else COMBINE_OP
        _binding_reject(name, combine_rejection(_dtname(tensors["expand_x"]), _dtname(tensors["expert_ids"]),
                                                attrs["ep_world_size"], attrs["ep_rank_id"],
                                                attrs["shared_expert_num"], attrs["shared_expert_rank_num"]))
        self._run_checks(ctx, CallDesc(product=ctx.product, attrs=attrs, env=_env(ctx), op=op,
                                       tensors={k: _desc(v) for k, v in tensors.items()}))
        a, ex, ids = attrs, tensors["expand_x"], tensors["expert_ids"]
        ep = self._group(ctx, a["group_ep"], "EP")
        tpg = self._group(ctx, a["group_tp"], "TP") if (a["tp_world_size"] == 2 and ctx.product != "A2") else None
        _agree(ctx.transport, ep, tpg, a["ep_world_size"],
               ("combine", ctx.product, a["ep_world_size"], a["moe_expert_num"], a["shared_expert_num"],
                a["shared_expert_rank_num"], a["global_bs"], a["comm_alg"], a["comm_quant_mode"],
                a["zero_expert_num"], a["copy_expert_num"], a["const_expert_num"], a["tp_world_size"],
                ex.shape[1], ids.shape[1], str(ex.dtype)), _dev(ctx, ex))
        return ep, tpg

    def combine(self, ctx, expand_x, expert_ids, assist_info_for_combine, ep_send_counts, expert_scales, group_ep,
                ep_world_size, ep_rank_id, moe_expert_num, *, tp_send_counts=None, x_active_mask=None,
                expand_scales=None, shared_expert_x=None, elastic_info=None, ori_x=None, const_expert_alpha_1=None,
                const_expert_alpha_2=None, const_expert_v=None, performance_info=None, group_tp="",
                tp_world_size=0, tp_rank_id=0, expert_shard_type=0, shared_expert_num=1, shared_expert_rank_num=0,
                global_bs=0, comm_quant_mode=0, comm_alg="", zero_expert_num=0, copy_expert_num=0,
                const_expert_num=0):
        gbs = int(global_bs) or expert_ids.shape[0] * ep_world_size
        attrs = dict(group_ep=group_ep, ep_world_size=ep_world_size, ep_rank_id=ep_rank_id,
                     moe_expert_num=moe_expert_num, group_tp=group_tp, tp_world_size=tp_world_size,
                     tp_rank_id=tp_rank_id, expert_shard_type=expert_shard_type,
                     shared_expert_num=shared_expert_num, shared_expert_rank_num=shared_expert_rank_num,
                     global_bs=gbs, comm_quant_mode=comm_quant_mode, comm_alg=comm_alg,
                     zero_expert_num=zero_expert_num, copy_expert_num=copy_expert_num,
                     const_expert_num=const_expert_num, out_dtype=0, group_list_type=0)
        tensors = dict(expand_x=expand_x, expert_ids=expert_ids, assist_info_for_combine=assist_info_for_combine,
                       ep_send_counts=ep_send_counts, expert_scales=expert_scales, tp_send_counts=tp_send_counts,
                       x_active_mask=x_active_mask, activation_scale=None, weight_scale=None, group_list=None,
                       expand_scales=expand_scales, shared_expert_x=shared_expert_x, elastic_info=elastic_info,
                       ori_x=ori_x, const_expert_alpha_1=const_expert_alpha_1,
                       const_expert_alpha_2=const_expert_alpha_2, const_expert_v=const_expert_v,
                       performance_info=performance_info)
        ep, tpg = self._combine_prologue(ctx, "combine", tensors, attrs)
        acc, active = _combine_acc(ctx, ep, tpg, expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                                   expert_scales, tp_send_counts, x_active_mask, shared_expert_x, ori_x,
                                   const_expert_alpha_1, const_expert_alpha_2, const_expert_v, performance_info,
                                   ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id,
                                   shared_expert_num, shared_expert_rank_num, gbs, comm_quant_mode,
                                   zero_expert_num, copy_expert_num, const_expert_num)
        out = acc.to(expand_x.dtype)
        out[~active] = 0
        return out

    def combine_add_rms_norm(self, ctx, expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales, residual_x,
                             gamma, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, tp_send_counts=None,
                             x_active_mask=None, activation_scale=None, weight_scale=None, group_list=None,
                             expand_scales=None, shared_expert_x=None, elastic_info=None, ori_x=None,
                             const_expert_alpha_1=None, const_expert_alpha_2=None, const_expert_v=None,
                             group_tp="", tp_world_size=0, tp_rank_id=0, expert_shard_type=0, shared_expert_num=1,
                             shared_expert_rank_num=0, global_bs=0, out_dtype=0, comm_quant_mode=0,
                             group_list_type=0, comm_alg="", norm_eps=1e-06, zero_expert_num=0, copy_expert_num=0,
                             const_expert_num=0):
        gbs = int(global_bs) or expert_ids.shape[0] * ep_world_size
        bs, H = expert_ids.shape[0], expand_x.shape[1]
        attrs = dict(group_ep=group_ep, ep_world_size=ep_world_size, ep_rank_id=ep_rank_id,
                     moe_expert_num=moe_expert_num, group_tp=group_tp, tp_world_size=tp_world_size,
                     tp_rank_id=tp_rank_id, expert_shard_type=expert_shard_type,
                     shared_expert_num=shared_expert_num, shared_expert_rank_num=shared_expert_rank_num,
                     global_bs=gbs, out_dtype=out_dtype, comm_quant_mode=comm_quant_mode,
                     group_list_type=group_list_type, comm_alg=comm_alg, norm_eps=norm_eps,
                     zero_expert_num=zero_expert_num, copy_expert_num=copy_expert_num,
                     const_expert_num=const_expert_num)
        tensors = dict(expand_x=expand_x, expert_ids=expert_ids, assist_info_for_combine=expand_idx,
                       ep_send_counts=ep_send_counts, expert_scales=expert_scales, residual_x=residual_x, gamma=gamma,
                       tp_send_counts=tp_send_counts, x_active_mask=x_active_mask, activation_scale=activation_scale,
                       weight_scale=weight_scale, group_list=group_list, expand_scales=expand_scales,
                       shared_expert_x=shared_expert_x, elastic_info=elastic_info, ori_x=ori_x,
                       const_expert_alpha_1=const_expert_alpha_1, const_expert_alpha_2=const_expert_alpha_2,
                       const_expert_v=const_expert_v)
        ep, tpg = self._combine_prologue(ctx, "combine_add_rms_norm", tensors, attrs)
        acc, active = _combine_acc(ctx, ep, tpg, expand_x, expert_ids, expand_idx, ep_send_counts, expert_scales,
                                   tp_send_counts, x_active_mask, shared_expert_x, ori_x, const_expert_alpha_1,
                                   const_expert_alpha_2, const_expert_v, None, ep_world_size, ep_rank_id,
                                   moe_expert_num, tp_world_size, tp_rank_id, shared_expert_num,
                                   shared_expert_rank_num, gbs, comm_quant_mode, zero_expert_num, copy_expert_num,
                                   const_expert_num)
        dt = expand_x.dtype
        t = acc + residual_x.reshape(bs, H).to(acc.device).float()           # Add
        x_out = t.to(dt)                                                       # RINT
        sq = t * t                                                             # Mul
        sq = sq * torch.tensor(1.0 / H, dtype=torch.float32, device=t.device)  # Muls by 1/H
        ms = sq.sum(dim=1, keepdim=True)                                       # ReduceSum
        ms = ms + torch.tensor(norm_eps, dtype=torch.float32, device=t.device)  # Adds eps
        rstd = torch.ones_like(ms) / torch.sqrt(ms)                            # Sqrt, Div
        normed = (t * rstd).to(dt)                                             # RINT(t*rstd)
        y = (normed.float() * gamma.reshape(1, H).to(t.device).float()).to(dt)  # RINT(fp32*fp32(gamma))
        y[~active] = 0
        x_out[~active] = 0
        rstd[~active] = 0
        return y.reshape(bs, 1, H), rstd.reshape(bs, 1, 1), x_out.reshape(bs, 1, H)


# =========================================================================== dispatch body
def _valid_entries(ids: torch.Tensor, mask, M: int, special: int):
    """(entry_valid (bs,K) bool, token_active (bs,) bool) per kernel-behaviour §1.4, by the mask alone.

    Special-expert ids (>= M) are removed from *sending* by :func:`_sendable`; combine still needs them.
    """
    bs, K = ids.shape
    dev = ids.device
    if mask is None:
        tok = torch.ones(bs, dtype=torch.bool, device=dev)
        ent = torch.ones(bs, K, dtype=torch.bool, device=dev)
    elif mask.dim() == 1:
        cnt = int(mask.to(torch.int64).sum())  # the kernel only sums the mask: first cnt tokens
        tok = torch.arange(bs, device=dev) < cnt
        ent = tok[:, None].expand(bs, K).clone()
    else:
        ent = mask.to(device=dev, dtype=torch.bool).clone()
        tok = ent.any(dim=1)
    return ent, tok


def _sendable(ent: torch.Tensor, ids: torch.Tensor, limit: int) -> torch.Tensor:
    """Entries that are actually sent: id in [0, limit), limit = min(M, (W-S)*L). An id past that with
    Z+C+Q == 0 is undefined behaviour in the kernel (it indexes a rank past W); sim drops it rather than
    crash one rank and hang the others."""
    return ent & (ids >= 0) & (ids < limit)


def _quant_rows(xf: torch.Tensor):
    """Dynamic per-row quant (kernel-behaviour §3) of fp32 rows: (int8 rows, dynamic scale = 1/ds).

    Consumes ``xf`` (works in place on it).
    """
    if xf.shape[0] == 0:
        return torch.empty(xf.shape, dtype=torch.int8, device=xf.device), xf.new_empty((0,))
    mn, mx = torch.aminmax(xf, dim=1)
    amax = torch.maximum(mx, -mn)  # max |x|, exact
    ds = torch.full_like(amax, 127.0) / amax  # fp32 scalar division
    y = xf.mul_(ds[:, None])  # fp32 Muls
    torch.round(y, out=y)  # half to even (CAST_RINT)
    y.clamp_(-128, 127).nan_to_num_(0.0)  # |y| <= 127 by construction; NaN (amax 0) -> 0
    return y.to(torch.int8), torch.ones_like(ds) / ds


def _dispatch(ctx, ep, tpg, meta, x, expert_ids, scales, x_active_mask, expert_scales, performance_info,
              ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id, shared_expert_num,
              shared_expert_rank_num, quant_mode, global_bs, expert_token_nums_type, Z, C, Q):
    tr = ctx.transport
    dev = torch.device(ctx.device) if ctx.device else x.device
    cfg = _cfg(ctx.product, tuple(x.shape), expert_ids.shape[1], ep_world_size, ep_rank_id, moe_expert_num,
               tp_world_size, tp_rank_id, shared_expert_num, shared_expert_rank_num, global_bs, Z, C, Q)
    W, S, SE, K, H, bs, Lm = cfg.W, cfg.S, cfg.SE, cfg.K, cfg.H, cfg.bs, cfg.Lmoe
    x = x.to(dev)
    ids = expert_ids.to(dev).to(torch.int64)
    mask = None if x_active_mask is None else x_active_mask.to(dev)
    ent, tok = _valid_entries(ids, mask, cfg.M, cfg.special)

    # ---- sender: MoE entries in increasing b*K+k, then shared-expert copies of active tokens
    sendable = _sendable(ent, ids, min(cfg.M, (W - S) * Lm))
    flat = torch.nonzero(sendable.reshape(-1), as_tuple=False).reshape(-1)  # increasing b*K+k
    b_m, k_m = flat // K, flat % K
    e_m = ids.reshape(-1)[flat]
    dest_m = S + torch.div(e_m, Lm, rounding_mode="floor")
    l_m = e_m % Lm
    srow_m = e_m + SE  # smooth-scale row (SE == 0 when S == 0)
    act = torch.nonzero(tok, as_tuple=False).reshape(-1)  # compacted active tokens, ascending
    parts_b, parts_k, parts_dest, parts_l, parts_srow, parts_pos = [b_m], [k_m], [dest_m], [l_m], [srow_m], [flat]
    for j in range(SE):
        dj = j * cfg.rpse + cfg.me % cfg.rpse
        parts_b.append(act)
        parts_k.append(torch.full_like(act, K + j))
        parts_dest.append(torch.full_like(act, dj))
        parts_l.append(torch.zeros_like(act))
        parts_srow.append(torch.full_like(act, j))
        parts_pos.append(act)
    sb, sk, sdest, sl, ssrow, spos = (torch.cat(p) for p in (parts_b, parts_k, parts_dest, parts_l, parts_srow,
                                                               parts_pos))
    Lc = max(Lm, 1)
    span = bs * K + 1
    order = torch.argsort((sdest * Lc + sl) * span + spos, stable=True)
    sb, sk, sdest, sl, ssrow = sb[order], sk[order], sdest[order], sl[order], ssrow[order]
    n_send = sb.shape[0]

    # ---- per-row payload: data (quantised per destination on the sender), scales, triple
    if quant_mode == 2 and scales is None:
        # the same row quantised for each destination gives the same bits: quantise each token once
        qx, dx = _quant_rows(x.float())
        data, dyn = qx.index_select(0, sb), dx.index_select(0, sb)
    elif quant_mode == 2:
        xf = x.index_select(0, sb).float()
        xf.mul_(scales.to(dev).float().index_select(0, ssrow))  # smooth scale row per destination
        data, dyn = _quant_rows(xf)
    else:
        data, dyn = x.index_select(0, sb), torch.zeros(n_send, dtype=torch.float32, device=dev)
    if expert_scales is not None:
        es_full = torch.cat([expert_scales.to(dev).float(), torch.ones(bs, max(SE, 1), device=dev)], dim=1)
        esc = es_full[sb, sk]
    else:
        esc = torch.zeros(n_send, dtype=torch.float32, device=dev)
    triple = torch.stack([torch.full_like(sb, cfg.me), sb, sk], dim=1).to(torch.int32)
    payload = _pack([data, dyn, esc, triple], n_send, dev)

    # ---- counts first (fixed size), then rows (uneven)
    t0 = time.perf_counter_ns()
    cnt = torch.zeros(W * Lc, dtype=torch.int64, device=dev)
    cnt.index_add_(0, sdest * Lc + sl, torch.ones_like(sdest))
    rcnt = _exchange_counts(tr, ep, cnt.reshape(W, Lc)).reshape(W, Lc)  # rcnt[s, l]
    send_rows = cnt.reshape(W, Lc).sum(1).tolist()
    recv_rows = rcnt.sum(1).tolist()
    recv = _exchange(tr, ep, payload, send_rows, recv_rows)
    elapsed = time.perf_counter_ns() - t0

    # ---- receiver: kernel order l-major, then source s, then the sender's order
    L = cfg.L
    n_recv = recv.shape[0]
    row_s = torch.repeat_interleave(torch.arange(W, device=dev).repeat_interleave(Lc), rcnt.reshape(-1))
    row_l = torch.repeat_interleave(torch.arange(Lc, device=dev).repeat(W), rcnt.reshape(-1))
    rorder = torch.argsort(row_l * W + row_s, stable=True)
    recv = recv.index_select(0, rorder)
    ex_dt = torch.int8 if quant_mode == 2 else x.dtype
    r_data, r_dyn, r_esc, r_tri = _unpack(recv, [(ex_dt, H), (torch.float32, 1), (torch.float32, 1),
                                                 (torch.int32, 3)])
    per_ls = rcnt[:, :L].t().reshape(-1)  # index l*W + s
    ep_cum = torch.cumsum(per_ls, 0)
    tok_nums = rcnt[:, :L].sum(0)

    # ---- TP all_gather: [own ; peer]
    if cfg.tp == 2:
        tsz = 2
        totals = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(tsz)]
        tr.all_gather(totals, torch.tensor([n_recv], dtype=torch.int64, device=dev), tpg)
        totals = [int(t.item()) for t in totals]
        pmax = max(totals)
        rowpay = _pack([r_data, r_dyn, r_esc], n_recv, dev)
        padded = torch.zeros((pmax, rowpay.shape[1]), dtype=torch.uint8, device=dev)
        padded[:n_recv] = rowpay
        got = [torch.empty_like(padded) for _ in range(tsz)]
        tr.all_gather(got, padded, tpg)
        peer = 1 - cfg.tp_rank
        peer_rows = got[peer][:totals[peer]]
        cums = [torch.empty_like(ep_cum) for _ in range(tsz)]
        tr.all_gather(cums, ep_cum.contiguous(), tpg)
        p_data, p_dyn, p_esc = _unpack(peer_rows, [(ex_dt, H), (torch.float32, 1), (torch.float32, 1)])
        r_data = torch.cat([r_data, p_data])
        r_dyn = torch.cat([r_dyn, p_dyn])
        r_esc = torch.cat([r_esc, p_esc])
        ep_cum = torch.cat([ep_cum, cums[peer]])
        tok_nums = tok_nums + int(totals[peer])
        tp_counts = [0, 0]
        tp_counts[cfg.tp_rank], tp_counts[peer] = totals[cfg.tp_rank], totals[peer]

    # ---- outputs, allocated as torch_npu does (expand_x rows past the count uninitialised, the rest zeros)
    outs = [torch.empty(shape, dtype=dt, device=dev) if i == 0 else torch.zeros(shape, dtype=dt, device=dev)
            for i, (shape, dt) in enumerate(meta)]
    expand_x, dyn_o, assist, etn, epc, tpc, exs = outs
    n_all = r_data.shape[0]
    _put(expand_x, r_data)
    # rows past the count stay uninitialised, as torch_npu allocates them (undefined; A*H can be 100s of MB)
    if quant_mode == 2:
        m = min(n_all, dyn_o.numel())
        dyn_o.view(-1)[:m] = r_dyn.reshape(-1)[:m]
    if ctx.product == "A2":
        # A2 fullmesh: Bs*K array, element b*K+k = slot of the entry among the sender's entries to e
        slot = torch.zeros(bs * K, dtype=torch.int64, device=dev)
        if flat.numel():
            srt = torch.argsort(e_m * span + flat, stable=True)
            e_sorted = e_m[srt]
            first = torch.searchsorted(e_sorted, e_sorted, right=False)
            slot[flat[srt]] = torch.arange(e_sorted.numel(), device=dev) - first
        _put(assist, slot.to(torch.int32))
    else:
        _put(assist, r_tri.reshape(-1))
    tn = tok_nums if expert_token_nums_type == 1 else torch.cumsum(tok_nums, 0)
    _put(etn, tn)
    _put(epc, ep_cum.to(torch.int32))
    if cfg.tp == 2 and tpc.numel() >= 2:
        _put(tpc, torch.tensor(tp_counts, dtype=torch.int32, device=dev))
    if expert_scales is not None and (ctx.product == "A2"):
        m = min(exs.numel(), n_all)
        exs[:m] = r_esc.reshape(-1)[:m]
    if performance_info is not None:
        performance_info.add_(torch.full_like(performance_info, max(int(elapsed), 0)))
    return tuple(outs)


# =========================================================================== combine body
def _comm_quant(rows: torch.Tensor):
    """commQuantMode 2 (kernel-behaviour §4.5): per group of 8, int8 values + XType scales."""
    n, H = rows.shape
    xf = rows.float().reshape(n, H // 8, 8)
    s = xf.abs().amax(dim=2) * torch.tensor(1.0 / 127.0, dtype=torch.float32, device=rows.device)
    s_st = s.to(rows.dtype)
    q = torch.round(xf / s[:, :, None]).nan_to_num(0.0).clamp(-128, 127).to(torch.float16).to(torch.int8)
    return q.reshape(n, H), s_st


def _comm_dequant(q: torch.Tensor, s_st: torch.Tensor, dtype) -> torch.Tensor:
    n, H = q.shape
    v = q.reshape(n, H // 8, 8).to(torch.float16).float() * s_st.float()[:, :, None]
    return v.to(dtype).reshape(n, H)


def _combine_acc(ctx, ep, tpg, expand_x, expert_ids, assist, ep_send_counts, expert_scales, tp_send_counts,
                 x_active_mask, shared_expert_x, ori_x, alpha1, alpha2, const_v, performance_info,
                 ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id, shared_expert_num,
                 shared_expert_rank_num, global_bs, comm_quant_mode, Z, C, Q):
    """Return (fp32 accumulator (bs,H), active tokens (bs,)) of one source rank."""
    tr = ctx.transport
    dev = torch.device(ctx.device) if ctx.device else expand_x.device
    bs, K = expert_ids.shape
    H = expand_x.shape[1]
    cfg = _cfg(ctx.product, (bs, H), K, ep_world_size, ep_rank_id, moe_expert_num, tp_world_size, tp_rank_id,
               shared_expert_num, shared_expert_rank_num, global_bs, Z, C, Q)
    W, SE, L, M = cfg.W, cfg.SE, cfg.L, cfg.M
    dt = expand_x.dtype
    ex = expand_x.to(dev)
    epc = ep_send_counts.to(dev).to(torch.int64)
    ids = expert_ids.to(dev).to(torch.int64)
    mask = None if x_active_mask is None else x_active_mask.to(dev)
    ent, tok = _valid_entries(ids, mask, M, cfg.special)
    n_own = int(epc[W * L - 1].item()) if W * L > 0 else 0

    # ---- expert side, TP=2 reduce: own part + the peer's copy of our rows
    rows = ex[:n_own]
    if cfg.tp == 2:
        me_t, peer = cfg.tp_rank, 1 - cfg.tp_rank
        if tp_send_counts is not None and tp_send_counts.numel() >= 2:
            tsc = tp_send_counts.to(dev).to(torch.int64).tolist()
            n_own, n_peer = int(tsc[me_t]), int(tsc[peer])
        else:  # no tp_send_counts: the two cumulative halves of ep_send_counts say the same
            n_own, n_peer = int(epc[W * L - 1]), int(epc[2 * W * L - 1])
        rows = ex[:n_own]
        send = ex[n_own:n_own + n_peer].contiguous()
        ssz = [0, 0]
        ssz[peer] = n_peer
        rsz = [0, 0]
        rsz[peer] = n_own
        got = torch.empty((n_own, H), dtype=dt, device=dev)
        tr.all_to_all_single(got, send, rsz, ssz, tpg)
        if dt == torch.bfloat16:
            rows = (got.float() + rows.float()).to(dt)
        else:
            rows = got + rows  # native half add

    # ---- which source token slot every row goes back to
    if ctx.product == "A2":
        per_ls = torch.diff(epc[: W * L], prepend=epc.new_zeros(1))  # index l*W + s
        row_s = torch.repeat_interleave(torch.arange(W, device=dev).repeat(L), per_ls)
        meta_b = torch.zeros(n_own, dtype=torch.int64, device=dev)  # A2: located by slot on the source
        meta_k = torch.zeros_like(meta_b)
    else:
        tri = assist.to(dev)[: 3 * n_own].reshape(n_own, 3).to(torch.int64)
        row_s, meta_b, meta_k = tri[:, 0], tri[:, 1], tri[:, 2]
    order = torch.argsort(row_s, stable=True)  # grouped by source, in our row order
    rows, row_s, meta_b, meta_k = rows[order], row_s[order], meta_b[order], meta_k[order]
    if comm_quant_mode == 2:
        q, s_st = _comm_quant(rows)
        cols, lay = [q, s_st], [(torch.int8, H), (dt, H // 8)]
    else:
        cols, lay = [rows], [(dt, H)]
    cols.append(torch.stack([meta_b, meta_k], 1).to(torch.int32))
    lay.append((torch.int32, 2))
    payload = _pack(cols, n_own, dev)
    t0 = time.perf_counter_ns()
    cnt = torch.bincount(row_s, minlength=W)[:W].to(torch.int64)
    rcnt = _exchange_counts(tr, ep, cnt.reshape(W, 1)).reshape(W)
    recv = _exchange(tr, ep, payload, cnt.tolist(), rcnt.tolist())
    elapsed = time.perf_counter_ns() - t0
    parts = _unpack(recv, lay)
    if comm_quant_mode == 2:
        r_rows = _comm_dequant(parts[0], parts[1], dt)
    else:
        r_rows = parts[0]
    r_meta = parts[-1].to(torch.int64)
    if performance_info is not None:
        performance_info.add_(torch.full_like(performance_info, max(int(elapsed), 0)))

    # ---- source side: R[b, k] (k < K MoE rows, K + j shared rows)
    R = torch.zeros((bs, K + max(SE, 0), H), dtype=torch.float32, device=dev)
    if ctx.product == "A2":
        sendable = _sendable(ent, ids, min(M, (W - cfg.S) * cfg.Lmoe))
        flat = torch.nonzero(sendable.reshape(-1), as_tuple=False).reshape(-1)
        e = ids.reshape(-1)[flat]
        dest = torch.div(e, cfg.Lmoe, rounding_mode="floor")
        l = e % cfg.Lmoe
        dl = torch.zeros(W * cfg.Lmoe, dtype=torch.int64, device=dev)
        dl.index_add_(0, dest * cfg.Lmoe + l, torch.ones_like(dest))
        offs_l = (torch.cumsum(dl.reshape(W, cfg.Lmoe), 1) - dl.reshape(W, cfg.Lmoe)).reshape(-1)
        displ = _excl_cumsum(rcnt)
        slot = assist.to(dev)[: bs * K].to(torch.int64)[flat]
        pos = displ[dest] + offs_l[dest * cfg.Lmoe + l] + slot
        R[flat // K, flat % K] = r_rows.float()[pos]
    elif r_rows.shape[0]:
        R[r_meta[:, 0], r_meta[:, 1]] = r_rows.float()

    def add(acc, t, where):
        """acc + t on the rows in ``where`` (fp32 add, one rounding; -0.0 of untouched rows preserved)."""
        if bool(where.all()):
            return acc.add_(t)
        return torch.where(where[:, None], acc + t, acc)

    # ---- accumulate in k order: t = r*w (one rounding), acc = acc + t (another)
    w = expert_scales.to(dev).float()
    acc = torch.zeros((bs, H), dtype=torch.float32, device=dev)
    xo = ori_x.to(dev).reshape(bs, H).float() if ori_x is not None else None
    for k in range(K):
        e = ids[:, k]
        use = ent[:, k] & tok
        if cfg.special == 0:
            t = R[:, k] * w[:, k:k + 1]
            acc = add(acc, t, use)
            continue
        moe = use & (e < M)
        t = R[:, k] * w[:, k:k + 1]
        acc = add(acc, t, moe)
        cp = use & (e >= M + cfg.Z) & (e < M + cfg.Z + cfg.C)
        if bool(cp.any()):
            t = xo * w[:, k:k + 1]
            acc = add(acc, t, cp)
        cs = use & (e >= M + cfg.Z + cfg.C) & (e < M + cfg.special)
        if bool(cs.any()):
            c = (e - (M + cfg.Z + cfg.C)).clamp(0, max(cfg.Q - 1, 0))
            const = _const_expert(xo, c, alpha1.to(dev), alpha2.to(dev), const_v.to(dev))
            t = const * w[:, k:k + 1]
            acc = add(acc, t, cs)
    for j in range(SE):
        acc = add(acc, R[:, K + j], tok)
    if shared_expert_x is not None:
        acc = add(acc, shared_expert_x.to(dev).reshape(bs, H).float(), tok)
    return acc, tok


def _const_expert(xf, c, a1, a2, v):
    """CONST(c, x): (Q,) scalar alphas (the operator document / HC kernel) or (Q,H) softmax form (YC kernel)."""
    vf = v.float()[c]
    if a1.dim() == 1 or (a1.dim() == 2 and a1.shape[1] == 1):
        s1 = a1.float().reshape(-1)[c][:, None]
        s2 = a2.float().reshape(-1)[c][:, None]
    else:
        l1 = (a1.float()[c] * xf).sum(dim=1, keepdim=True)
        l2 = (a2.float()[c] * xf).sum(dim=1, keepdim=True)
        m = torch.maximum(l1, l2)
        e1, e2 = torch.exp(l1 - m), torch.exp(l2 - m)
        s1, s2 = e1 / (e1 + e2), e2 / (e1 + e2)
    u1 = s1 * xf
    u2 = s2 * vf
    return u1 + u2
