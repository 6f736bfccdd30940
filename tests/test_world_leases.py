"""Device leases: concurrent holders get disjoint device ranges; a dead holder frees its devices."""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from moe_cts.world.leases import LeaseTimeout, acquire


def _hold(lock_dir, n, total, q, go):
    lease = acquire(n, total, lock_dir, timeout_s=5)
    q.put(list(lease.devices))
    go.wait(10)  # hold until the parent has seen everyone's range


def test_concurrent_leases_are_disjoint(tmp_path):
    ctx = mp.get_context("fork")
    q, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 2, 8, q, go)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        ranges = [q.get(timeout=10) for _ in procs]
    finally:
        go.set()
        for p in procs:
            p.join(10)
    devs = [d for r in ranges for d in r]
    assert sorted(devs) == list(range(8))  # 4 x 2 of 8: disjoint, all used
    assert all(r[1] == r[0] + 1 for r in ranges)  # contiguous


def test_full_host_times_out_then_frees_on_release(tmp_path):
    a = acquire(3, 4, str(tmp_path))
    assert list(a.devices) == [0, 1, 2]
    b = acquire(1, 4, str(tmp_path))
    assert list(b.devices) == [3]
    with pytest.raises(LeaseTimeout):
        acquire(2, 4, str(tmp_path), timeout_s=0.2)
    a.release()
    with acquire(2, 4, str(tmp_path), timeout_s=1) as c:
        assert list(c.devices) == [0, 1]
    b.release()
    with pytest.raises(ValueError):
        acquire(5, 4, str(tmp_path))


def _take_and_die(lock_dir):
    acquire(4, 4, lock_dir)
    os._exit(0)  # no release: the kernel drops the flocks with the process


def test_dead_holder_frees_devices(tmp_path):
    p = mp.get_context("fork").Process(target=_take_and_die, args=(str(tmp_path),))
    p.start()
    p.join(10)
    assert list(acquire(4, 4, str(tmp_path), timeout_s=1).devices) == [0, 1, 2, 3]
