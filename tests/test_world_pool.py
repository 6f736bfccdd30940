"""Self-tests of moe_cts.world on the fork / loopback path (CPU, gloo).

The jobs and the test backend live in this module; the rank processes import it by the name pytest
gave it (``__name__``), which forked children already have in sys.modules.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from moe_cts.world.fixtures import load_fixture
from moe_cts.model import AclnnError
from moe_cts.world import RankOutcome, WorldBroken, WorldPool
from moe_cts.world.base import DUMP_WAIT_S
from moe_cts.world.worker import layout_groups

HERE = __name__
JOBS = "moe_cts.world.jobs"  # fault injections shared with the device/torchrun tests and benchmarks
SIM = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sim.yaml")


# ----------------------------------------------------------------------------- test backend + jobs
class EchoBackend:
    """Anything with dispatch/combine will do: the world never calls them itself."""

    name = "echo"

    def __init__(self, **options):
        self.options = options

    def dispatch(self, ctx, *a, **kw):
        return ("dispatch", ctx.rank)

    def combine(self, ctx, *a, **kw):
        return ("combine", ctx.rank)


def factory(**options):
    return EchoBackend(**options)


class SleepyBackend(EchoBackend):
    """dispatch sleeps forever on one rank: the injected hang of a real backend call."""

    name = "sleepy"

    def dispatch(self, ctx, *a, hang=False, **kw):
        if hang and ctx.rank == self.options.get("hang_rank", 1):
            time.sleep(600)
        return super().dispatch(ctx, *a, **kw)


def sleepy(**options):
    return SleepyBackend(**options)


def job_backend_then_a2a(ctx, backend, payload):
    """The shape of a real case: call the backend, then a collective the other ranks wait in."""
    backend.dispatch(ctx, hang=payload)
    return job_a2a(ctx, backend, payload)


def job_big(ctx, backend, payload):
    import numpy as np

    return {"sum": float(payload.sum()), "back": np.full((512, 1024), ctx.rank, dtype=np.float32)}


def job_sleep_all(ctx, backend, payload):
    time.sleep(payload)
    return ctx.rank


def job_a2a(ctx, backend, payload):
    """all_to_all of rank ids over this rank's EP group: every rank receives every member's id."""
    import torch

    t = ctx.transport
    g = ctx.groups[ctx.ep_group]
    n = t.group_size(g)
    out = torch.empty(n, dtype=torch.int64)
    t.all_to_all_single(out, torch.full((n,), ctx.rank, dtype=torch.int64), group=g)
    tp = None
    if ctx.tp_group:
        tg = ctx.groups[ctx.tp_group]
        lst = [torch.empty(1, dtype=torch.int64) for _ in range(t.group_size(tg))]
        t.all_gather(lst, torch.tensor([ctx.rank]), group=tg)
        tp = [int(x) for x in lst]
    return {"rank": ctx.rank, "ep": out.tolist(), "tp": tp, "backend": backend.dispatch(ctx),
            "env": ctx.env.get("HCCL_BUFFSIZE"), "product": ctx.product, "payload": payload}




def job_sigkill_on(ctx, backend, payload):
    if ctx.rank == payload:
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.rank



class Unpicklable(Exception):
    def __init__(self, lock):
        import threading

        super().__init__("holds a lock")
        self.lock = threading.Lock()


def job_raise_unpicklable(ctx, backend, payload):
    raise Unpicklable(None)


def job_pid(ctx, backend, payload):
    return os.getpid()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fx():
    return load_fixture(SIM)


@pytest.fixture(scope="module")
def pool(fx):
    p = WorldPool(fx, backend_spec=f"{HERE}:factory")
    yield p
    p.close()


def _mp_helpers() -> set[int]:
    """multiprocessing's own long-lived helpers (resource tracker, forkserver): not worlds."""
    pids = set()
    try:
        from multiprocessing import forkserver, resource_tracker

        for obj in (resource_tracker._resource_tracker, forkserver._forkserver):
            pid = getattr(obj, "_pid", None) or getattr(obj, "_forkserver_pid", None)
            if pid:
                pids.add(pid)
    except Exception:  # noqa: BLE001
        pass
    return pids


def _children() -> list[int]:
    """Live (non-zombie) child processes of this process, from /proc, less multiprocessing's helpers."""
    me = os.getpid()
    helpers = _mp_helpers()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == me and rest[0] != "Z" and int(d) not in helpers:
            out.append(int(d))
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2:].split()[0] == "Z"
    except OSError:
        return True


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("n", [2, 4, 8])
def test_all_to_all_of_rank_ids(pool, n):
    outs = pool.run(n, f"{HERE}:job_a2a", {"seed": 1}, product="A2")
    assert [o.rank for o in outs] == list(range(n))
    for o in outs:
        assert isinstance(o, RankOutcome) and o.ok, o.error
        assert o.value["ep"] == list(range(n))
        assert o.value["backend"] == ("dispatch", o.rank)
        assert o.value["env"] == "200" and o.value["product"] == "A2" and o.value["payload"] == {"seed": 1}


def test_warm_world_is_reused(pool):
    pids = [o.value for o in pool.run(4, f"{HERE}:job_pid")]
    again = [o.value for o in pool.run(4, f"{HERE}:job_pid")]
    assert pids == again and len(set(pids)) == 4


def test_ep_tp_layout_groups(pool):
    outs = pool.run(8, f"{HERE}:job_a2a", layout=(4, 2))
    for o in outs:
        g = o.rank
        assert o.value["ep"] == [e * 2 + g % 2 for e in range(4)]  # EP group t = [e*T + t]
        assert o.value["tp"] == [(g // 2) * 2 + t for t in range(2)]  # TP group e = [e*T + t]
    # back to the flat layout on the same world: groups are cached per layout
    assert all(o.value["ep"] == list(range(8)) for o in pool.run(8, f"{HERE}:job_a2a"))
    with pytest.raises(ValueError):
        pool.run(8, f"{HERE}:job_a2a", layout=(3, 2))


def test_layout_groups_match_model():
    E, T, groups = layout_groups(8, (4, 2))
    assert (E, T) == (4, 2)
    assert dict(groups)["ep4x2_ep1"] == (1, 3, 5, 7) and dict(groups)["ep4x2_tp3"] == (6, 7)


def test_hang_is_broken_within_deadline_then_next_passes(pool):
    t0 = time.monotonic()
    with pytest.raises(WorldBroken) as ei:
        pool.run(4, f"{JOBS}:sleep_on", 2, deadline_s=1.5)
    took = time.monotonic() - t0
    e = ei.value
    assert e.kind == "hang" and "[2]" in e.message
    assert took < 1.5 + DUMP_WAIT_S + 2, took  # deadline + stack dumps (ms, capped) + kill
    assert "sleep_on" in e.stacks[2] and "time.sleep" not in e.stacks[0]
    assert set(e.stacks) == {0, 1, 2, 3}
    assert sorted(o.rank for o in e.outcomes) == [0, 1, 3]  # what did arrive
    outs = pool.run(4, f"{HERE}:job_a2a")
    assert all(o.ok and o.value["ep"] == [0, 1, 2, 3] for o in outs)


def test_backend_hang_in_one_rank_is_broken_hang(fx):
    p = WorldPool(fx, backend_spec=f"{HERE}:sleepy")
    try:
        p.warm(4)  # the deadline covers the case, not the world's start
        t0 = time.monotonic()
        with pytest.raises(WorldBroken) as ei:
            p.run(4, f"{HERE}:job_backend_then_a2a", True, deadline_s=2)
        assert ei.value.kind == "hang" and time.monotonic() - t0 < 2 + DUMP_WAIT_S + 2
        st = ei.value.stacks
        assert "SleepyBackend" not in st[1] and "in dispatch" in st[1] and "time.sleep" not in st[0]
        assert "all_to_all_single" in st[0]  # the others wait in the collective
        # the next case (same backend, no hang injected) passes on a fresh world
        outs = p.run(4, f"{HERE}:job_backend_then_a2a", False)
        assert all(o.ok and o.value["ep"] == [0, 1, 2, 3] for o in outs)
    finally:
        p.close()


def test_rank_killed_from_outside_mid_case(pool):
    import threading

    pids = pool.run(4, f"{HERE}:job_pid")
    victim = pids[2].value
    threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
    with pytest.raises(WorldBroken) as ei:
        pool.run(4, f"{HERE}:job_sleep_all", 3, deadline_s=20)
    assert ei.value.kind == "crash" and "rank 2" in ei.value.message and "SIGKILL" in ei.value.message
    assert all(o.ok for o in pool.run(4, f"{HERE}:job_a2a"))


def test_rank_killed_between_cases_is_replaced_silently(pool):
    pids = [o.value for o in pool.run(2, f"{HERE}:job_pid")]
    os.kill(pids[1], signal.SIGKILL)
    time.sleep(0.1)
    again = [o.value for o in pool.run(2, f"{HERE}:job_pid")]
    assert set(again).isdisjoint(pids)


def test_big_payload_and_values(pool):
    import numpy as np

    x = np.ones((1024, 1024), dtype=np.float32)  # 4 MB each way, past any pipe buffer
    outs = pool.run(4, f"{HERE}:job_big", x)
    assert all(o.value["sum"] == 1024 * 1024 and o.value["back"][0, 0] == o.rank for o in outs)


def test_exit_is_broken_crash_then_next_passes(pool):
    with pytest.raises(WorldBroken) as ei:
        pool.run(4, f"{JOBS}:exit_on", 1, deadline_s=10)
    assert ei.value.kind == "crash" and "rank 1" in ei.value.message and "code 5" in ei.value.message
    assert all(o.ok for o in pool.run(4, f"{HERE}:job_a2a"))


def test_killed_rank_is_broken_crash_then_next_passes(pool):
    old = pool.pids
    with pytest.raises(WorldBroken) as ei:
        pool.run(2, f"{HERE}:job_sigkill_on", 0, deadline_s=10)
    assert ei.value.kind == "crash" and "SIGKILL" in ei.value.message
    assert all(o.ok for o in pool.run(2, f"{HERE}:job_a2a"))
    assert set(pool.pids) != set(old)


def test_exception_is_an_outcome_and_world_survives(pool):
    pids = [o.value for o in pool.run(4, f"{HERE}:job_pid")]
    outs = pool.run(4, f"{JOBS}:raise_on", 3)
    assert [o.ok for o in outs] == [True, True, True, False]
    err = outs[3].error
    assert type(err) is AclnnError
    assert (err.status, err.constraint, err.message) == (161001, "x.null", "x is null")
    assert err.rank == 3 and "raise_on" in err.remote_traceback
    assert [o.value for o in pool.run(4, f"{HERE}:job_pid")] == pids  # same world


def test_unpicklable_exception_and_missing_job(pool):
    outs = pool.run(2, f"{HERE}:job_raise_unpicklable")
    assert all(o.error is not None for o in outs)
    assert "Unpicklable" in str(type(outs[0].error).__name__) + str(outs[0].error)
    outs = pool.run(2, f"{HERE}:no_such_job")
    assert all(isinstance(o.error, AttributeError) for o in outs)
    assert all(o.ok for o in pool.run(2, f"{HERE}:job_a2a"))


def test_unpicklable_payload_keeps_the_world(pool):
    import threading

    pids = [o.value for o in pool.run(2, f"{HERE}:job_pid")]
    with pytest.raises(Exception):
        pool.run(2, f"{HERE}:job_pid", threading.Lock())
    assert [o.value for o in pool.run(2, f"{HERE}:job_pid")] == pids


def test_loopback_world_of_32(pool):
    outs = pool.run(32, f"{HERE}:job_a2a", layout=(16, 2))
    assert len(outs) == 32 and all(o.ok for o in outs)
    assert outs[5].value["ep"] == [e * 2 + 1 for e in range(16)] and outs[5].value["tp"] == [4, 5]
    assert len(set(pool.run(32, f"{HERE}:job_pid")[i].value for i in range(32))) == 1  # one process


def test_loopback_hang_and_exception(pool):
    with pytest.raises(WorldBroken) as ei:
        pool.run(32, f"{JOBS}:sleep_on", 17, deadline_s=1.5)
    assert ei.value.kind == "hang" and "sleep_on" in ei.value.stacks[17]
    outs = pool.run(32, f"{JOBS}:raise_on", 9)
    assert outs[9].error.status == 161001 and sum(o.ok for o in outs) == 31
    assert all(o.ok for o in pool.run(32, f"{HERE}:job_a2a"))


def test_world_start_failure_is_infra(fx):
    p = WorldPool(fx, backend_spec=f"{HERE}:no_such_factory")
    try:
        with pytest.raises(WorldBroken) as ei:
            p.run(2, f"{HERE}:job_pid")
        assert ei.value.kind == "infra" and "no_such_factory" in ei.value.message
    finally:
        p.close()
    assert _children() == [] or all(pid not in _children() for pid in p.pids)


def crashing_factory(**options):
    os._exit(11)  # the backend factory kills the rank while the world starts


def test_rank_dying_at_start_is_infra_fast(fx):
    p = WorldPool(fx, backend_spec=f"{HERE}:crashing_factory")
    try:
        t0 = time.monotonic()
        with pytest.raises(WorldBroken) as ei:
            p.run(2, f"{HERE}:job_pid")
        assert ei.value.kind == "infra" and "died while starting" in ei.value.message
        assert time.monotonic() - t0 < fx.deadlines.start_s / 2
    finally:
        p.close()


def test_close_leaves_no_orphans(fx):
    p = WorldPool(fx, backend_spec=f"{HERE}:factory")
    p.run(4, f"{HERE}:job_pid")
    p.run(20, f"{HERE}:job_pid")
    pids = p.pids
    assert len(pids) == 5
    p.close()
    p.close()  # idempotent
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(RuntimeError):
        p.run(2, f"{HERE}:job_pid")


def test_zzz_no_children_left_after_module_pool_closes(pool):
    pool.close()
    assert _children() == []


def test_a_rank_that_raises_does_not_cost_the_whole_deadline(tmp_path):
    """Rank 1 raises before a collective its peers are already waiting in: the world is declared hung
    error_grace_s after the error, not case_s, and the next case still passes."""
    import dataclasses
    import time

    from moe_cts.world.fixtures import load_fixture
    from moe_cts.world import WorldBroken, WorldPool

    fx = load_fixture("sim")
    fx = dataclasses.replace(fx, deadlines=dataclasses.replace(fx.deadlines, case_s=60.0, error_grace_s=1.0))
    with WorldPool(fx, backend_spec="tests.test_world_pool:factory") as pool:
        t0 = time.monotonic()
        with pytest.raises(WorldBroken) as ei:
            pool.run(2, "tests.test_world_pool:raise_on_rank1_others_wait", {}, deadline_s=60.0)
        took = time.monotonic() - t0
        assert ei.value.kind == "hang" and "after a rank raised" in str(ei.value), str(ei.value)
        assert took < 20, f"expected the world to be declared hung about 1 s after rank 1 raised, took {took:.1f} s"
        assert [o.value for o in pool.run(2, "tests.test_world_pool:raise_on_rank1_others_wait", {"ok": True})] == [0, 1]


def raise_on_rank1_others_wait(ctx, backend, payload):
    import torch

    if ctx.rank == 1 and not payload.get("ok"):
        raise ValueError("rank 1 gives up before the collective")
    ctx.transport.all_reduce(torch.ones(1), None)  # rank 0 waits for a peer that never comes
    return ctx.rank
