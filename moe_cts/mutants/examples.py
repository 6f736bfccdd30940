"""Mutant backends for qualification self-tests and demos (``--backend moe_cts.mutants.examples:zero_first_row``).

zero_first_row: sim, but expand_x row 0 is zeroed on every rank that receives rows (a conformance failure
in dispatch and, through it, in the round trip). reverse_groups: sim, but on A3 (TP 1) the rows inside each
local expert's group come in reverse order and dynamic_scales / assist_info follow them (implementation-defined
drift only: the round trip still passes). hang_rank1: sim, but rank 1 never returns from dispatch (broken: hang, stack dumps)."""
from __future__ import annotations

from moe_cts.backends.sim import SimBackend


class ZeroFirstRow(SimBackend):
    name = "sim-mutant-zero-first-row"

    def dispatch(self, ctx, *args, **kw):
        out = list(super().dispatch(ctx, *args, **kw))
        out[0] = out[0].clone()
        if out[0].shape[0]:
            out[0][0] = 0
        return tuple(out)


def zero_first_row(**options):
    return ZeroFirstRow(**options)


class HangOnRank1(SimBackend):
    """sim, but global rank 1 never returns from dispatch (the world's deadline must catch it: broken, hang)."""

    name = "sim-mutant-hang-rank1"

    def dispatch(self, ctx, *args, **kw):
        if ctx.rank == 1:
            import time

            while True:
                time.sleep(1)
        return super().dispatch(ctx, *args, **kw)


def hang_rank1(**options):
    return HangOnRank1(**options)


class ReverseGroups(SimBackend):
    name = "sim-mutant-reverse-groups"

    def dispatch(self, ctx, *args, **kw):
        import torch

        out = list(super().dispatch(ctx, *args, **kw))
        if ctx.product != "A3" or int(kw.get("tp_world_size", 0) or 0) > 1:
            return tuple(out)
        etn = out[3].to(torch.int64).reshape(-1)
        counts = etn if int(kw.get("expert_token_nums_type", 1)) == 1 else torch.diff(etn, prepend=etn.new_zeros(1))
        perm, pos = [], 0
        for c in counts.tolist():
            perm.extend(range(pos + c - 1, pos - 1, -1))
            pos += c
        n = len(perm)
        if n == 0 or n > out[0].shape[0]:
            return tuple(out)
        idx = torch.tensor(perm, dtype=torch.int64)
        out[0] = out[0].clone()
        out[0][:n] = out[0][idx]
        if out[1].dim() == 1 and out[1].numel() >= n:
            out[1] = out[1].clone()
            out[1][:n] = out[1][idx]
        tri = out[2].reshape(-1)
        if tri.numel() >= 3 * n:
            t = tri.clone().reshape(-1)
            t[: 3 * n] = tri[: 3 * n].reshape(n, 3)[idx].reshape(-1)
            out[2] = t.reshape(out[2].shape)
        return tuple(out)


def reverse_groups(**options):
    return ReverseGroups(**options)
