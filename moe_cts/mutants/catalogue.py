"""Mutant backends: each breaks exactly one documented behaviour of the operators.

Every factory here is a backend loadable with ``--backend moe_cts.mutants.catalogue:<factory>``.
Most wrap the software device (:class:`moe_cts.backends.sim.SimBackend`) through the public backend
protocol and transform its inputs or outputs. Behaviours that live *inside* the computation (quant
rounding, dynamic-scale formula, shared-expert routing, combine accumulation) have no seam in sim;
those mutants are built by :func:`_source_mutant`: sim's own source with ONE textual change,
executed as a separate module (nothing of the real sim is patched, so threads of a loopback world
and the pytest parent are unaffected). A change that no longer matches sim's source fails loudly
at load time instead of producing a silent non-mutant.

The catalogue (id, what it breaks, which cases kill it) is :mod:`moe_cts.mutants`.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
import types

import torch

from moe_cts.backends import sim as _sim
from moe_cts.backends.sim import SimBackend
from moe_cts.model import AclnnError

OUT = ("expand_x", "dynamic_scales", "assist_info_for_combine", "expert_token_nums", "ep_recv_counts",
       "tp_recv_counts", "expand_scales")


# =========================================================================== helpers
def _groups(etn: torch.Tensor, ent_type: int) -> list[tuple[int, int]]:
    """Row ranges [start, end) of each local expert, read from expert_token_nums."""
    v = [int(a) for a in etn.reshape(-1).tolist()]
    counts = v if ent_type == 1 else [b - a for a, b in zip([0] + v[:-1], v)]
    out, s = [], 0
    for c in counts:
        out.append((s, s + max(c, 0)))
        s += max(c, 0)
    return out


def _permute_rows(t: torch.Tensor, perm: torch.Tensor, start: int) -> None:
    """Apply ``perm`` (indices into [start, start+len)) to rows of ``t`` in place (1-D or 2-D)."""
    if t is None or t.dim() == 0 or t.shape[0] < start + perm.numel():
        return
    idx = torch.arange(start, start + perm.numel())
    t[idx] = t[perm].clone()


class _Post(SimBackend):
    """SimBackend whose dispatch outputs go through ``post(ctx, outs, kw)`` (outs: a list of clones)."""

    def post(self, ctx, outs: list, kw: dict) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def dispatch(self, ctx, *args, **kw):
        outs = [t.clone() if isinstance(t, torch.Tensor) else t for t in super().dispatch(ctx, *args, **kw)]
        self.post(ctx, outs, kw)
        return tuple(outs)


def _ent_type(kw) -> int:
    return int(kw.get("expert_token_nums_type", 1))


def _source_mutant(tag: str, *changes: tuple[str, str], count: int = 1):
    """sim's module source with each ``old`` replaced by ``new`` (each must occur exactly ``count`` times),
    executed as module ``moe_cts.mutants._sim_<tag>``; returns its SimBackend class."""
    name = f"moe_cts.mutants._sim_{tag}"
    mod = sys.modules.get(name)
    if mod is None:
        src = inspect.getsource(_sim)
        for old, new in changes:
            n = src.count(old)
            if n != count:
                raise RuntimeError(f"mutant {tag}: expected {count} occurrence(s) of {old!r} in "
                                   f"moe_cts/backends/sim.py, found {n}; the mutant must be updated to sim's source")
            src = src.replace(old, new)
        mod = types.ModuleType(name)
        mod.__file__ = f"<mutant {tag} of {_sim.__file__}>"
        sys.modules[name] = mod
        try:
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    return mod.SimBackend


# =========================================================================== dispatch layout (§1, §2)
class RowOrder(_Post):
    """Rows of each local expert reversed; assistInfo triples / counts still describe the kernel order."""

    def post(self, ctx, outs, kw):
        for s, e in _groups(outs[3], _ent_type(kw)):
            if e - s > 1:
                perm = torch.arange(e - 1, s - 1, -1)
                _permute_rows(outs[0], perm, s)
                _permute_rows(outs[1], perm, s)


class SourceRankOrder(_Post):
    """Inside each local expert, rows ordered by DEScending source rank (triples left in kernel order)."""

    def post(self, ctx, outs, kw):
        if ctx.product != "A3" or int(kw.get("tp_world_size", 0)) == 2:
            return
        tri = outs[2]
        for s, e in _groups(outs[3], _ent_type(kw)):
            if e - s > 1 and tri.numel() >= 3 * e:
                src = tri[3 * s:3 * e].reshape(-1, 3)[:, 0].to(torch.int64)
                perm = s + torch.argsort(-src, stable=True)
                _permute_rows(outs[0], perm, s)
                _permute_rows(outs[1], perm, s)


def _n_rows(outs, kw) -> int:
    g = _groups(outs[3], _ent_type(kw))
    return g[-1][1] if g else 0


class DropRow(_Post):
    """The first received row is lost (later rows move up, the last valid row is zero); counts unchanged."""

    def post(self, ctx, outs, kw):
        n = min(_n_rows(outs, kw), outs[0].shape[0])
        if n >= 1:
            for t in (outs[0], outs[1]):
                if t.dim() and t.shape[0] >= n:
                    t[:n - 1] = t[1:n].clone()
                    t[n - 1] = 0


class DuplicateRow(_Post):
    """The first received row is written twice (it replaces the second row); counts unchanged."""

    def post(self, ctx, outs, kw):
        if min(_n_rows(outs, kw), outs[0].shape[0]) >= 2:
            for t in (outs[0], outs[1]):
                if t.dim() and t.shape[0] >= 2:
                    t[1] = t[0]


class TokenNumsSwapped(_Post):
    """expert_token_nums: cumulative when counts were asked for (type 1) and counts for type 0."""

    def post(self, ctx, outs, kw):
        etn = outs[3]
        if _ent_type(kw) == 1:
            outs[3] = torch.cumsum(etn, 0).to(etn.dtype)
        else:
            outs[3] = torch.diff(etn, prepend=etn.new_zeros(1)).to(etn.dtype)


def _L_W(outs, kw) -> tuple[int, int]:
    return int(outs[3].numel()), int(kw["ep_world_size"])


class EpRecvResetPerExpert(_Post):
    """ep_recv_counts restarts its prefix sum at every local expert (the OP test's reading)."""

    def post(self, ctx, outs, kw):
        L, W = _L_W(outs, kw)
        epc = outs[4]
        if epc.numel() >= L * W and L > 0:
            head = epc[:L * W].to(torch.int64).reshape(L, W)
            per = torch.diff(head.reshape(-1), prepend=head.new_zeros(1)).reshape(L, W)
            epc[:L * W] = torch.cumsum(per, 1).reshape(-1).to(epc.dtype)


class EpRecvPlainCounts(_Post):
    """ep_recv_counts holds plain per-(expert, source) counts instead of the running prefix sum."""

    def post(self, ctx, outs, kw):
        L, W = _L_W(outs, kw)
        epc = outs[4]
        if epc.numel() >= L * W and L > 0:
            head = epc[:L * W].to(torch.int64)
            epc[:L * W] = torch.diff(head, prepend=head.new_zeros(1)).to(epc.dtype)


class TpHalvesSwapped(_Post):
    """TP=2: expand_x / dynamic_scales are [peer ; own] instead of [own ; peer]."""

    def post(self, ctx, outs, kw):
        if int(kw.get("tp_world_size", 0)) != 2 or ctx.product != "A3" or outs[5].numel() != 2:
            return
        me = int(kw.get("tp_rank_id", 0))
        own, peer = int(outs[5][me]), int(outs[5][1 - me])
        perm = torch.cat([torch.arange(own, own + peer), torch.arange(0, own)])
        _permute_rows(outs[0], perm, 0)
        _permute_rows(outs[1], perm, 0)


class TpCountsSwapped(_Post):
    """TP=2: tp_recv_counts [peer total, own total] (index tpRankId should hold our own total)."""

    def post(self, ctx, outs, kw):
        if outs[5].numel() == 2:
            outs[5] = outs[5].flip(0).contiguous()


class AssistKIndexOff(_Post):
    """A3 assistInfo triples: kIdx of a MoE row is k+1 (mod K) instead of k."""

    def post(self, ctx, outs, kw):
        if ctx.product != "A3":
            return
        K = int(kw["expert_ids"].shape[1])
        n = min(_n_rows(outs, kw), outs[2].numel() // 3)
        if int(kw.get("tp_world_size", 0)) == 2 and outs[5].numel() == 2:
            n = min(n, int(outs[5][int(kw.get("tp_rank_id", 0))]))
        tri = outs[2][:3 * n].reshape(n, 3)
        moe = tri[:, 2] < K
        tri[:, 2] = torch.where(moe, (tri[:, 2] + 1) % K, tri[:, 2])


class DynScalesShifted(_Post):
    """dynamic_scales no longer travel with their row: scale i is row i+1's (rotated within the valid rows)."""

    def post(self, ctx, outs, kw):
        n = min(_n_rows(outs, kw), outs[1].shape[0] if outs[1].dim() else 0)
        if int(kw.get("quant_mode", 0)) == 2 and n >= 2:
            outs[1][:n] = torch.roll(outs[1][:n].clone(), -1, 0)


class ExpandScalesZero(_Post):
    """A2: expand_scales not filled (expertScales do not travel with their row)."""

    def post(self, ctx, outs, kw):
        if outs[6] is not None and outs[6].numel():
            outs[6].zero_()


class Nondeterministic(_Post):
    """Every second call reverses each local expert's rows TOGETHER with their scales and triples: a
    consistent (round-trip-correct) order that changes from call to call."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def post(self, ctx, outs, kw):
        self.calls += 1
        if self.calls % 2 or ctx.product != "A3" or int(kw.get("tp_world_size", 0)) == 2:
            return
        tri = outs[2]
        for s, e in _groups(outs[3], _ent_type(kw)):
            if e - s > 1 and tri.numel() >= 3 * e:
                perm = torch.arange(e - 1, s - 1, -1)
                _permute_rows(outs[0], perm, s)
                _permute_rows(outs[1], perm, s)
                t3 = tri[:3 * e].reshape(e, 3)
                t3[s:e] = t3[perm].clone()


# =========================================================================== input pre-transforms
class SmoothRowOff(SimBackend):
    """Smooth scales of MoE expert e read from row e instead of row e + sharedExpertNum (A3, S != 0)."""

    def dispatch(self, ctx, *args, **kw):
        sc = kw.get("scales")
        S, SE = int(kw.get("shared_expert_rank_num", 0)), int(kw.get("shared_expert_num", 1))
        if sc is not None and S and SE and ctx.product == "A3":
            kw["scales"] = torch.cat([sc[:SE], sc[:sc.shape[0] - SE]]).contiguous()
        return super().dispatch(ctx, *args, **kw)


class Mask1dIgnored(SimBackend):
    """Dispatch ignores a 1-D x_active_mask (every token is sent)."""

    def dispatch(self, ctx, *args, **kw):
        m = kw.get("x_active_mask")
        if m is not None and m.dim() == 1:
            kw["x_active_mask"] = None
        return super().dispatch(ctx, *args, **kw)


class Mask2dPerToken(SimBackend):
    """Dispatch applies a 2-D mask per token: every k of a token with any true entry is sent."""

    def dispatch(self, ctx, *args, **kw):
        m = kw.get("x_active_mask")
        if m is not None and m.dim() == 2:
            kw["x_active_mask"] = m.any(dim=1, keepdim=True).expand_as(m).contiguous()
        return super().dispatch(ctx, *args, **kw)


class SpecialExpertsSent(SimBackend):
    """Dispatch does not drop zero/copy/const entries: id e >= M is sent to MoE expert e - M (mod M)."""

    def dispatch(self, ctx, *args, **kw):
        args = list(args)
        ids = kw["expert_ids"] if "expert_ids" in kw else args[1]
        M = int(kw["moe_expert_num"]) if "moe_expert_num" in kw else int(args[5])
        special = sum(int(kw.get(n, 0)) for n in ("zero_expert_num", "copy_expert_num", "const_expert_num"))
        if special and ids.dtype == torch.int32:
            ids = torch.where(ids >= M, (ids - M) % M, ids)
            if "expert_ids" in kw:
                kw["expert_ids"] = ids
            else:
                args[1] = ids
            kw.update(zero_expert_num=0, copy_expert_num=0, const_expert_num=0)
        return super().dispatch(ctx, *args, **kw)


class CopyUsesExpertRow(SimBackend):
    """Combine: a copy expert adds the (never sent, zero) expert-row slot R[b,k] instead of oriX."""

    def combine(self, ctx, *args, **kw):
        z, c = int(kw.get("zero_expert_num", 0)), int(kw.get("copy_expert_num", 0))
        if c:
            kw.update(zero_expert_num=z + c, copy_expert_num=0)
        return super().combine(ctx, *args, **kw)


class ZeroAsCopy(SimBackend):
    """Combine: a zero expert contributes oriX * w like a copy expert (instead of nothing)."""

    def combine(self, ctx, *args, **kw):
        z, c = int(kw.get("zero_expert_num", 0)), int(kw.get("copy_expert_num", 0))
        if z:
            kw.update(zero_expert_num=0, copy_expert_num=z + c)
        return super().combine(ctx, *args, **kw)


class ConstAlphaSwapped(SimBackend):
    """Combine: const expert uses alpha2 for x and alpha1 for V."""

    def combine(self, ctx, *args, **kw):
        if kw.get("const_expert_alpha_1") is not None:
            kw["const_expert_alpha_1"], kw["const_expert_alpha_2"] = kw["const_expert_alpha_2"], kw["const_expert_alpha_1"]
        return super().combine(ctx, *args, **kw)


# =========================================================================== statuses (§6)
class _Status(SimBackend):
    def remap(self, err: AclnnError, kw: dict):  # return a replacement exception, a callable retry, or None
        return None

    def dispatch(self, ctx, *args, **kw):
        try:
            return super().dispatch(ctx, *args, **kw)
        except AclnnError as err:
            new = self.remap(err, kw)
            if new is None:
                raise
            if callable(new) and not isinstance(new, BaseException):
                return new(ctx, *args, **kw)
            raise new from None


class NullStatusWrong(_Status):
    """A null/empty required argument reports 161002 PARAM_INVALID instead of 161001 PARAM_NULLPTR."""

    def remap(self, err, kw):
        if err.status == 161001:
            return AclnnError(161002, err.message, constraint=err.constraint)


class BadDtypeCode(_Status):
    """An unsupported dtype reports 561002 (tiling) instead of 161002 PARAM_INVALID."""

    def remap(self, err, kw):
        if err.status == 161002 and str(err.constraint or "").endswith(".dtype"):
            return AclnnError(561002, err.message, constraint=err.constraint)


class HOnePastAccepted(_Status):
    """H one past the upper bound (A3 8193, A2 7169) is accepted and computed."""

    def remap(self, err, kw):
        x = kw.get("x")
        c = str(err.constraint or "")
        if x is not None and ".h.range" in c and int(x.shape[1]) in (8193, 7169):
            return SimBackend(check=False).dispatch
        return None


class RejectsHMax(SimBackend):
    """The legal boundary H = 8192 (A3 max) is rejected with 561002 (an off-by-one `<` for `<=`)."""

    def dispatch(self, ctx, *args, **kw):
        x = kw.get("x", args[0] if args else None)
        if ctx.product == "A3" and x is not None and int(x.shape[1]) == 8192:
            raise AclnnError(561002, "H must be < 8192 (mutant)", constraint="A3.h.range")
        return super().dispatch(ctx, *args, **kw)


# =========================================================================== performance_info, liveness
class PerfInfoOverwrites(SimBackend):
    """performance_info holds only the last call's time (overwritten, not accumulated)."""

    def dispatch(self, ctx, *args, **kw):
        perf = kw.get("performance_info")
        if perf is None:
            return super().dispatch(ctx, *args, **kw)
        perf.zero_()
        return super().dispatch(ctx, *args, **kw)


class RankHangs(SimBackend):
    """Rank 1 never returns from dispatch (a lost signal: its peers wait in the exchange)."""

    def dispatch(self, ctx, *args, **kw):
        if ctx.rank == 1:
            time.sleep(3600)
        return super().dispatch(ctx, *args, **kw)


class RankCrashes(SimBackend):
    """Rank 1 dies inside dispatch (os._exit)."""

    def dispatch(self, ctx, *args, **kw):
        if ctx.rank == 1:
            os._exit(17)
        return super().dispatch(ctx, *args, **kw)


# =========================================================================== source mutants (no seam in sim)
_QUANT_ROUND = ("torch.round(y, out=y)", "y.copy_(torch.sign(y) * torch.floor(y.abs() + 0.5))")
_DYN_SCALE = ("torch.ones_like(ds) / ds", "amax / torch.tensor(127.0, dtype=amax.dtype)")
_SHARED_MOD = ("dj = j * cfg.rpse + cfg.me % cfg.rpse", "dj = j * cfg.rpse + cfg.me % cfg.S")
_SHARED_REPLICA = ("dj = j * cfg.rpse + cfg.me % cfg.rpse", "dj = j * cfg.rpse")
_WEIGHT_SHARED = ("acc = add(acc, R[:, K + j], tok)", "acc = add(acc, R[:, K + j] * w[:, j % K:j % K + 1], tok)")
_K_ORDER = ("    for k in range(K):\n        e = ids[:, k]", "    for k in reversed(range(K)):\n        e = ids[:, k]")
_FMA = [(f"acc = add(acc, t, {u})",
         f"acc = torch.where({u}[:, None], (acc.double() + R[:, k].double() * w[:, k:k + 1].double()).float(), acc)")
        for u in ("use", "moe")]


def _src(tag, *changes):
    def factory(**options):
        return _source_mutant(tag, *changes)(**options)
    factory.__name__ = tag
    return factory


quant_round_half_away = _src("quant_round_half_away", _QUANT_ROUND)
dyn_scale_amax_over_127 = _src("dyn_scale_amax_over_127", _DYN_SCALE)
shared_routing_modulus = _src("shared_routing_modulus", _SHARED_MOD)
shared_replica_offset = _src("shared_replica_offset", _SHARED_REPLICA)
combine_weights_shared = _src("combine_weights_shared", _WEIGHT_SHARED)
combine_k_order = _src("combine_k_order", _K_ORDER)
combine_fma = _src("combine_fma", *_FMA)


# =========================================================================== factories
def _f(cls):
    def factory(**options):
        return cls(**options)
    factory.__name__ = cls.__name__
    factory.__doc__ = cls.__doc__
    return factory


row_order = _f(RowOrder)
source_rank_order = _f(SourceRankOrder)
drop_row = _f(DropRow)
duplicate_row = _f(DuplicateRow)
token_nums_swapped = _f(TokenNumsSwapped)
ep_recv_reset_per_expert = _f(EpRecvResetPerExpert)
ep_recv_plain_counts = _f(EpRecvPlainCounts)
tp_halves_swapped = _f(TpHalvesSwapped)
tp_counts_swapped = _f(TpCountsSwapped)
assist_k_index_off = _f(AssistKIndexOff)
dyn_scales_shifted = _f(DynScalesShifted)
expand_scales_zero = _f(ExpandScalesZero)
nondeterministic = _f(Nondeterministic)
smooth_row_off = _f(SmoothRowOff)
mask1d_ignored = _f(Mask1dIgnored)
mask2d_per_token = _f(Mask2dPerToken)
special_experts_sent = _f(SpecialExpertsSent)
copy_uses_expert_row = _f(CopyUsesExpertRow)
zero_as_copy = _f(ZeroAsCopy)
const_alpha_swapped = _f(ConstAlphaSwapped)
null_status_wrong = _f(NullStatusWrong)
bad_dtype_code = _f(BadDtypeCode)
h_one_past_accepted = _f(HOnePastAccepted)
rejects_h_max = _f(RejectsHMax)
perf_info_overwrites = _f(PerfInfoOverwrites)
rank_hangs = _f(RankHangs)
rank_crashes = _f(RankCrashes)
