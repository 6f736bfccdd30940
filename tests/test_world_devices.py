"""The spawn path (what cuda/npu fixtures use) on CPU, the real sim backend, and CUDA when present.

The CUDA test runs only where torch sees >= 2 GPUs (cuda-2 fixture: spawn, nccl, leased devices).
"""
from __future__ import annotations

import dataclasses
import os
import time

import pytest

from moe_cts.fixtures import Deadlines, load_fixture
from moe_cts.model import AclnnError
from moe_cts.world import WorldBroken, WorldPool

HERE = __name__


class _Stub:
    name = "stub"

    def dispatch(self, ctx, *a, **kw):
        return None

    def combine(self, ctx, *a, **kw):
        return None


def factory(**options):
    return _Stub()


def job_a2a(ctx, backend, payload):
    import torch

    t = ctx.transport
    g = ctx.groups[ctx.ep_group]
    n = t.group_size(g)
    out = torch.empty(n, dtype=torch.int64, device=ctx.device)
    t.all_to_all_single(out, torch.full((n,), ctx.rank, dtype=torch.int64, device=ctx.device), group=g)
    return {"ep": out.cpu().tolist(), "device": ctx.device, "backend": getattr(backend, "name", None),
            "pid": os.getpid()}


def job_sleep_on(ctx, backend, payload):
    if ctx.rank == payload:
        time.sleep(600)
    return ctx.rank


def job_exit_on(ctx, backend, payload):
    if ctx.rank == payload:
        os._exit(5)
    return ctx.rank


def job_raise_on(ctx, backend, payload):
    if ctx.rank == payload:
        raise AclnnError(161001, "x is null", constraint="x.null")
    return ctx.rank


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_world_on_cpu(method):
    fx = dataclasses.replace(load_fixture("sim"), start_method=method)
    with WorldPool(fx, backend_spec=f"{HERE}:factory") as pool:
        outs = pool.run(2, f"{HERE}:job_a2a")
        assert [o.value["ep"] for o in outs] == [[0, 1], [0, 1]]
        err = pool.run(2, f"{HERE}:job_raise_on", 0)[0].error
        assert type(err) is AclnnError and err.status == 161001
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{HERE}:job_exit_on", 1, deadline_s=30)
        assert ei.value.kind == "crash" and "code 5" in ei.value.message


def test_real_sim_backend_loads_in_the_ranks():
    pytest.importorskip("moe_cts.backends.sim")
    with WorldPool(load_fixture("sim")) as pool:
        outs = pool.run(2, f"{HERE}:job_a2a")
        assert all(o.ok for o in outs), [o.error for o in outs]
        assert outs[0].value["backend"] == "sim"


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


@pytest.mark.skipif(_cuda_count() < 2, reason="needs 2 CUDA GPUs (fixture cuda-2)")
def test_cuda_2_world(tmp_path):
    fx = dataclasses.replace(load_fixture("cuda-2"), deadlines=Deadlines(case_s=60, start_s=120))
    with WorldPool(fx, backend_spec=f"{HERE}:factory", lease_dir=str(tmp_path)) as pool:
        t0 = time.monotonic()
        outs = pool.run(2, f"{HERE}:job_a2a")
        print(f"cuda-2 world start + first case: {time.monotonic() - t0:.2f} s")
        assert [o.value["ep"] for o in outs] == [[0, 1], [0, 1]]
        assert [o.value["device"] for o in outs] == ["cuda:0", "cuda:1"]
        t0 = time.monotonic()
        for _ in range(20):
            pool.run(2, f"{HERE}:job_a2a")
        print(f"cuda-2 warm per case: {(time.monotonic() - t0) / 20 * 1e3:.2f} ms")
        assert pool.run(2, f"{HERE}:job_raise_on", 1)[1].error.status == 161001
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{HERE}:job_sleep_on", 1, deadline_s=3)
        assert ei.value.kind == "hang" and "job_sleep_on" in ei.value.stacks[1]
        assert all(o.ok for o in pool.run(2, f"{HERE}:job_a2a"))
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{HERE}:job_exit_on", 0, deadline_s=30)
        assert ei.value.kind == "crash"
        assert all(o.ok for o in pool.run(2, f"{HERE}:job_a2a"))
        with pytest.raises(ValueError):
            pool.run(4, f"{HERE}:job_a2a")  # more ranks than devices: the suite skips such cases
