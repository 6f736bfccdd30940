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


# ------------------------------------------------------------------ torch.distributed (fork + FileStore)
def _dist_worker(rank, n, store_path, backend, timeout_s, fn, args, q):
    import datetime
    import traceback

    try:
        import torch.distributed as dist

        from moe_cts.backends.transport import DistTransport

        store = dist.FileStore(store_path, n)
        dist.init_process_group(backend, store=store, rank=rank, world_size=n,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            q.put((rank, "ok", fn(rank, DistTransport(), *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - shipped to the parent
        try:
            q.put((rank, "err", exc))
        except Exception:  # unpicklable exception
            q.put((rank, "err", RuntimeError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")))


def run_dist(n: int, fn: Callable, *args, store_dir: str, backend: str = "gloo", deadline_s: float = 60.0,
             start_method: str = "fork") -> list:
    """Run ``fn(rank, DistTransport, *args)`` on ``n`` fresh processes (FileStore in ``store_dir``).

    Returns per-rank results. A rank's exception is re-raised (the lowest rank's), with ``.rank`` set;
    a world that does not finish within ``deadline_s`` is killed and ``TimeoutError`` is raised.
    """
    import multiprocessing as mp
    import os
    import queue as _queue
    import time

    ctx = mp.get_context(start_method)
    q = ctx.Queue()
    store = os.path.join(store_dir, f"filestore-{os.getpid()}-{time.monotonic_ns()}")
    procs = [ctx.Process(target=_dist_worker, args=(r, n, store, backend, max(5.0, deadline_s / 2), fn, args, q),
                         daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    results, errors = [None] * n, {}
    end = time.monotonic() + deadline_s
    try:
        for _ in range(n):
            try:
                rank, st, val = q.get(timeout=max(0.1, end - time.monotonic()))
            except _queue.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and p.exitcode not in (0, None)]
                raise TimeoutError(f"world of {n} did not finish within {deadline_s}s (crashed ranks: {dead})") from None
            if st == "ok":
                results[rank] = val
            else:
                errors[rank] = val
    finally:
        for p in procs:
            p.join(timeout=max(0.1, end - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
    if errors:
        r = min(errors)
        exc = errors[r]
        exc.rank = r
        exc.errors = errors
        raise exc
    return results
