"""Self-tests of the sim transports: loopback threads and torch.distributed (gloo, fork, FileStore)."""
from __future__ import annotations

import time

import pytest
import torch

from moe_cts.backends.sim_world import run_dist
from moe_cts.backends.transport import LoopbackWorld


def _battery(rank, tr):
    """The same collective checks for any transport; returns what each rank saw."""
    n = tr.world_size
    out = {}
    # uneven all_to_all_single: rank r sends (r + d) % 3 rows to d, row value = 16*r + d (exact in bf16)
    send = [(rank + d) % 3 for d in range(n)]
    recv = [(s + rank) % 3 for s in range(n)]
    inp = torch.cat([torch.full((send[d], 2), 16.0 * rank + d, dtype=torch.bfloat16) for d in range(n)])
    o = torch.empty((sum(recv), 2), dtype=torch.bfloat16)
    tr.all_to_all_single(o, inp, recv, send, None)
    out["a2a"] = o[:, 0].float().tolist()
    # equal split all_to_all (int64)
    eq = torch.arange(n, dtype=torch.int64) + 10 * rank
    eo = torch.empty_like(eq)
    tr.all_to_all_single(eo, eq, None, None, None)
    out["a2a_eq"] = eo.tolist()
    # groups: evens and odds, made in the same order on every rank
    ge = tr.new_group([r for r in range(n) if r % 2 == 0])
    go = tr.new_group([r for r in range(n) if r % 2 == 1])
    mine = ge if rank % 2 == 0 else go
    out["grank"] = (tr.group_rank(mine), tr.group_size(mine))
    lst = [torch.zeros(1, dtype=torch.int32) for _ in range(tr.group_size(mine))]
    tr.all_gather(lst, torch.tensor([rank], dtype=torch.int32), mine)
    out["gather"] = [int(t) for t in lst]
    s = torch.tensor([float(rank + 1)])
    tr.all_reduce(s, mine, op="sum")
    m = torch.tensor([rank])
    tr.all_reduce(m, None, op="max")
    out["sum"], out["max"] = float(s), int(m)
    # uint8 payload (what sim packs rows into), with an empty split
    u = torch.full((1 if rank == 0 else 0, 5), rank + 1, dtype=torch.uint8)
    u_send = [0] * n
    if rank == 0:
        u_send[n - 1] = 1
    uo = torch.empty((1 if rank == n - 1 else 0, 5), dtype=torch.uint8)
    tr.all_to_all_single(uo, u, [1 if (rank == n - 1 and s_ == 0) else 0 for s_ in range(n)], u_send, None)
    out["u8"] = uo.tolist()
    tr.barrier(None)
    return out


def _check_battery(results):
    n = len(results)
    for r, res in enumerate(results):
        exp = []
        for s in range(n):
            exp += [16.0 * s + r] * ((s + r) % 3)
        assert res["a2a"] == exp
        assert res["a2a_eq"] == [r + 10 * s for s in range(n)]
        members = [q for q in range(n) if q % 2 == r % 2]
        assert res["grank"] == (members.index(r), len(members))
        assert res["gather"] == members
        assert res["sum"] == float(sum(q + 1 for q in members))
        assert res["max"] == n - 1
        assert res["u8"] == ([[1] * 5] if r == n - 1 else [])


@pytest.mark.parametrize("n", [2, 4, 16])
def test_loopback_battery(n):
    _check_battery(LoopbackWorld(n, timeout_s=10).run(_battery))


def test_loopback_timeout_names_missing_ranks():
    world = LoopbackWorld(3, timeout_s=0.5)

    def fn(rank, tr):
        if rank == 2:
            return "skipped"  # never joins the barrier
        tr.barrier(None)

    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        world.run(fn)
    assert time.monotonic() - t0 < 5
    assert "barrier" in str(ei.value) and "[2]" in str(ei.value)


def test_loopback_run_reraises_first_error_with_rank():
    world = LoopbackWorld(4, timeout_s=10)

    def fn(rank, tr):
        if rank == 1:
            raise ValueError("boom")
        tr.barrier(None)  # others are abandoned fast, not after 10 s

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="boom") as ei:
        world.run(fn)
    assert ei.value.rank == 1
    assert time.monotonic() - t0 < 5


def test_loopback_new_group_order_mismatch_is_an_error():
    world = LoopbackWorld(2, timeout_s=5)

    def fn(rank, tr):
        tr.new_group([0, 1] if rank == 0 else [1, 0])
        tr.new_group([0, 1] if rank == 0 else [1, 0])

    with pytest.raises(RuntimeError, match="disagrees"):
        world.run(fn)


# ------------------------------------------------------------------ gloo, fork-started, FileStore
@pytest.mark.parametrize("n", [2, 4])
def test_gloo_battery(n, tmp_path):
    _check_battery(run_dist(n, _battery, store_dir=str(tmp_path), deadline_s=40))


def test_gloo_rank_error_is_reraised_without_hang(tmp_path):
    def fn(rank, tr):
        if rank == 1:
            raise ValueError("rank one fails")
        return rank

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="rank one fails") as ei:
        run_dist(2, fn, store_dir=str(tmp_path), deadline_s=20)
    assert ei.value.rank == 1 and time.monotonic() - t0 < 20
