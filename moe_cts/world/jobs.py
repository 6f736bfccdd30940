"""Jobs and a backend for checking a world itself (fixture health checks, benchmarks, self-tests).

``--backend moe_cts.world.jobs:null_backend`` never computes anything; ``alltoall_ranks`` exchanges rank ids
over the rank's EP group on its own device, so a fixture can be proven to start, connect and exchange
before any operator case runs. ``sleep_on`` / ``exit_on`` / ``raise_on`` inject a hang, a crash or an
aclnn error on the rank named by the payload.
"""
from __future__ import annotations

import os
import time

from moe_cts.model import AclnnError


class NullBackend:
    name = "null"

    def dispatch(self, ctx, *a, **kw):
        return None

    def combine(self, ctx, *a, **kw):
        return None


def null_backend(**options):
    return NullBackend()


def alltoall_ranks(ctx, backend, payload):
    """Every rank sends its global rank to every member of its EP group; returns what arrived."""
    import torch

    t = ctx.transport
    g = ctx.groups[ctx.ep_group]
    n = t.group_size(g)
    out = torch.empty(n, dtype=torch.int64, device=ctx.device)
    t.all_to_all_single(out, torch.full((n,), ctx.rank, dtype=torch.int64, device=ctx.device), group=g)
    return {"ep": out.cpu().tolist(), "pid": os.getpid(), "world": ctx.world_size, "device": ctx.device,
            "backend": getattr(backend, "name", None), "env": ctx.env.get("HCCL_BUFFSIZE")}


def sleep_on(ctx, backend, payload):
    """payload: the rank that hangs (sleeps 600 s)."""
    if ctx.rank == payload:
        time.sleep(600)
    return ctx.rank


def exit_on(ctx, backend, payload):
    """payload: the rank whose process exits with code 5 mid-job."""
    if ctx.rank == payload:
        os._exit(5)
    return ctx.rank


def raise_on(ctx, backend, payload):
    """payload: the rank that raises AclnnError(161001)."""
    if ctx.rank == payload:
        raise AclnnError(161001, "x is null", constraint="x.null")
    return ctx.rank
