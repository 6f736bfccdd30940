"""Small helpers to stand up sim worlds: group layout of model.py, loopback and torch.distributed runs.

The world manager (moe_cts/world/) owns long-lived worlds; these helpers are for one-shot use
(self-tests, quick experiments) and show the contract: groups are made with ``transport.new_group``
in the same order on every rank, following the layout of moe_cts.model
(EP group t = [e*T + t for e], TP group e = [e*T + t for t], T = 2 if tp_world_size == 2 else 1).
"""
from __future__ import annotations

from typing import Callable

from moe_cts.backends.base import RankContext
from moe_cts.backends.transport import LoopbackWorld


def build_groups(transport, ep_world_size: int, tp_world_size: int = 0):
    """Create every EP and TP group (collective, same order everywhere).

    Returns ``(groups, ep_name, tp_name)`` for ``transport.rank``.
    """
    T = 2 if tp_world_size == 2 else 1
    W = int(ep_world_size)
    groups = {}
    for t in range(T):
        groups[f"ep{t}"] = transport.new_group([e * T + t for e in range(W)])
    if T == 2:
        for e in range(W):
            groups[f"tp{e}"] = transport.new_group([e * T + t for t in range(T)])
    g = transport.rank
    ep_name = f"ep{g % T}"
    tp_name = f"tp{g // T}" if T == 2 else ""
    return groups, ep_name, tp_name


def make_context(transport, ep_world_size: int, tp_world_size: int = 0, *, product: str = "A3",
                 env: dict | None = None, device: str = "cpu") -> RankContext:
    groups, ep_name, tp_name = build_groups(transport, ep_world_size, tp_world_size)
    return RankContext(rank=transport.rank, world_size=transport.world_size, device=device, ep_group=ep_name,
                       tp_group=tp_name, groups=groups, env=dict(env or {}), product=product, transport=transport)


def run_loopback(ep_world_size: int, fn: Callable, *args, tp_world_size: int = 0, product: str = "A3",
                 env: dict | None = None, timeout_s: float = 30.0) -> list:
    """Run ``fn(ctx, *args)`` on every rank of a fresh loopback world; per-rank results in rank order."""
    T = 2 if tp_world_size == 2 else 1
    world = LoopbackWorld(ep_world_size * T, timeout_s=timeout_s)

    def body(rank, tr, *a):
        ctx = make_context(tr, ep_world_size, tp_world_size, product=product, env=env)
        return fn(ctx, *a)

    return world.run(body, *args)
