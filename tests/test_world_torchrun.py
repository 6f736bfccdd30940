"""A torchrun fixture on one host over gloo: the driver (this process) and 2 workers launched by torchrun.

torchrun's workers are fresh interpreters (~2 s each to import torch here), so this module costs
~15-25 s; every wait is bounded (deadlines, start_s, Popen.wait timeouts, killpg at the end).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from moe_cts.world.fixtures import load_fixture
from moe_cts.model import AclnnError
from moe_cts.world import WorldBroken, WorldPool
from moe_cts.world.base import DUMP_WAIT_S

HERE = __name__
JOBS = "moe_cts.world.jobs"  # health-check jobs and fault injections shared with benchmarks
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")








def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched():
    if not os.path.exists(TORCHRUN):
        pytest.skip("torchrun not installed next to this interpreter")
    port = _free_port()
    # not tmp_path: pytest prunes old numbered tmp dirs, and other pytest runs share /tmp
    d = Path(tempfile.mkdtemp(prefix="moe-cts-torchrun-"))
    fxp = d / "torchrun-2.yaml"
    fxp.write_text(f"""\
products: [A2, A3]
backend: sim
device_type: cpu
devices: 2
launcher: torchrun
torchrun: {{store_host: 127.0.0.1, store_port: {port}, nproc_per_node: 2, nnodes: 1, max_restarts: 3}}
deadlines: {{case_s: 20, start_s: 90}}
env: {{HCCL_BUFFSIZE: "300"}}
""")
    fx = load_fixture(fxp)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__)]), OMP_NUM_THREADS="1")
    log = open(d / "torchrun.log", "w")
    proc = subprocess.Popen(
        [TORCHRUN, "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "3",
         "--monitor-interval", "0.2", "-m", "moe_cts.world.torchrun_worker", "--driver", f"127.0.0.1:{port}",
         "--connect-timeout", "120"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pool = WorldPool(fx, backend_spec=f"{JOBS}:null_backend")
    try:
        yield pool, proc, d / "torchrun.log"
    finally:
        pool.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # never leave torchrun or its workers behind
        except OSError:
            pass
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def test_torchrun_world_runs_jobs(launched):
    pool, proc, log = launched
    outs = pool.run(2, f"{JOBS}:alltoall_ranks")
    assert [o.value["ep"] for o in outs] == [[0, 1], [0, 1]], log.read_text()[-2000:]
    assert outs[0].value["env"] == "300" and outs[0].value["world"] == 2
    again = pool.run(2, f"{JOBS}:alltoall_ranks")
    assert [o.value["pid"] for o in again] == [o.value["pid"] for o in outs]  # warm
    one = pool.run(1, f"{JOBS}:alltoall_ranks")  # a smaller case on the same torchrun world
    assert one[0].value["ep"] == [0] and one[0].value["world"] == 1


def test_torchrun_exception_is_an_outcome(launched):
    pool, _, _ = launched
    outs = pool.run(2, f"{JOBS}:raise_on", 1)
    assert outs[0].ok and type(outs[1].error) is AclnnError and outs[1].error.status == 161001


def test_torchrun_hang_then_fresh_world(launched):
    pool, _, log = launched
    pids = pool.pids
    t0 = time.monotonic()
    with pytest.raises(WorldBroken) as ei:
        pool.run(2, f"{JOBS}:sleep_on", 0, deadline_s=2)
    assert ei.value.kind == "hang" and time.monotonic() - t0 < 2 + DUMP_WAIT_S + 3
    assert "sleep_on" in ei.value.stacks.get(0, ""), ei.value.stacks
    outs = pool.run(2, f"{JOBS}:alltoall_ranks")  # torchrun restarted the group
    assert all(o.ok for o in outs), log.read_text()[-2000:]
    assert set(pool.pids).isdisjoint(pids)


def test_torchrun_crash_then_fresh_world(launched):
    pool, _, log = launched
    with pytest.raises(WorldBroken) as ei:
        pool.run(2, f"{JOBS}:exit_on", 1, deadline_s=20)
    assert ei.value.kind == "crash"
    assert all(o.ok for o in pool.run(2, f"{JOBS}:alltoall_ranks")), log.read_text()[-2000:]


def test_torchrun_exits_cleanly_on_close(launched):
    pool, proc, log = launched
    pool.close()
    assert proc.wait(timeout=20) == 0, log.read_text()[-2000:]
