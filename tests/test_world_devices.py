"""The spawn path (what cuda/npu fixtures use) on CPU, the real sim backend, and CUDA when present.

The CUDA test runs only where torch sees >= 2 GPUs (cuda-2 fixture: spawn, nccl, leased devices).
"""
from __future__ import annotations

import dataclasses
import time

import pytest

from moe_cts.world.fixtures import Deadlines, load_fixture
from moe_cts.model import AclnnError
from moe_cts.world import WorldBroken, WorldPool

HERE = __name__
JOBS = "moe_cts.world.jobs"  # health-check jobs and fault injections shared with benchmarks








@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_world_on_cpu(method):
    fx = dataclasses.replace(load_fixture("sim"), start_method=method)
    with WorldPool(fx, backend_spec=f"{JOBS}:null_backend") as pool:
        outs = pool.run(2, f"{JOBS}:alltoall_ranks")
        assert [o.value["ep"] for o in outs] == [[0, 1], [0, 1]]
        err = pool.run(2, f"{JOBS}:raise_on", 0)[0].error
        assert type(err) is AclnnError and err.status == 161001
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{JOBS}:exit_on", 1, deadline_s=30)
        assert ei.value.kind == "crash" and "code 5" in ei.value.message


def test_real_sim_backend_loads_in_the_ranks():
    pytest.importorskip("moe_cts.backends.sim")
    with WorldPool(load_fixture("sim")) as pool:
        outs = pool.run(2, f"{JOBS}:alltoall_ranks")
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
    with WorldPool(fx, backend_spec=f"{JOBS}:null_backend", lease_dir=str(tmp_path)) as pool:
        t0 = time.monotonic()
        outs = pool.run(2, f"{JOBS}:alltoall_ranks")
        print(f"cuda-2 world start + first case: {time.monotonic() - t0:.2f} s")
        assert [o.value["ep"] for o in outs] == [[0, 1], [0, 1]]
        assert [o.value["device"] for o in outs] == ["cuda:0", "cuda:1"]
        t0 = time.monotonic()
        for _ in range(20):
            pool.run(2, f"{JOBS}:alltoall_ranks")
        print(f"cuda-2 warm per case: {(time.monotonic() - t0) / 20 * 1e3:.2f} ms")
        assert pool.run(2, f"{JOBS}:raise_on", 1)[1].error.status == 161001
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{JOBS}:sleep_on", 1, deadline_s=3)
        assert ei.value.kind == "hang" and "sleep_on" in ei.value.stacks[1]
        assert all(o.ok for o in pool.run(2, f"{JOBS}:alltoall_ranks"))
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, f"{JOBS}:exit_on", 0, deadline_s=30)
        assert ei.value.kind == "crash"
        assert all(o.ok for o in pool.run(2, f"{JOBS}:alltoall_ranks"))
        with pytest.raises(ValueError):
            pool.run(4, f"{JOBS}:alltoall_ranks")  # more ranks than devices: the suite skips such cases
