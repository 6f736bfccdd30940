"""The driver side of a torchrun fixture: ranks launched by torchrun on every host, driven from pytest.

The pool hosts a TCPStore on ``torchrun.store_port`` (one per pool, kept across worlds); the workers
(:mod:`moe_cts.world.torchrun_worker`) connect to it, register, and take jobs from it. A *world* here
is one torchrun restart generation ``rc`` of all ``WORLD_SIZE`` workers. Breaking a world = ordering
its workers to exit (``kill/{rc}``); torchrun restarts the group (``--max-restarts``) and the next
``run`` waits for generation ``rc + 1``. Cases smaller than the torchrun world run on ranks
``0..n-1``; the other ranks only take part in making the groups.
"""
from __future__ import annotations

import json
import pickle
import time
from datetime import timedelta
from typing import Any

from moe_cts.world.fixtures import Fixture
from moe_cts.world.base import DUMP_WAIT_S
from moe_cts.world.outcome import RankOutcome, WorldBroken, errors_note, unpack_exception

HB_STALE_S = 3.0  # a worker whose heartbeat has not moved this long is dead
DEFAULT_STORE_PORT = 29555


class TorchrunDriver:
    """The pool's TCPStore server and the current restart generation."""

    def __init__(self, fx: Fixture):
        import torch.distributed as dist

        tr = fx.torchrun
        self.port = int(tr.get("store_port", DEFAULT_STORE_PORT))
        self.host = tr.get("store_host", "localhost")
        self.world_size = int(tr.get("nproc_per_node", fx.devices)) * int(tr.get("nnodes", len(fx.hosts)))
        self.store = dist.TCPStore(self.host, self.port, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=max(fx.deadlines.start_s, fx.deadlines.case_s) + 60))
        self.rc = 0
        self.stopped = False
        cores = __import__("os").cpu_count() or 1
        self.store.set("config", pickle.dumps({
            "backend_spec": None,  # set per pool below
            "session": f"{__import__('os').getpid()}-{time.time_ns()}",
            "env": dict(fx.env), "device_type": fx.device_type, "dist_backend": fx.dist_backend,
            "dist_timeout_s": max(fx.deadlines.case_s, fx.deadlines.start_s) * 4 + 60,
            "torch_threads": max(1, cores // int(tr.get("nproc_per_node", fx.devices))) if fx.device_type == "cpu" else None,
        }))

    def configure(self, backend_spec: str, backend_options: dict) -> None:
        cfg = pickle.loads(self.store.get("config"))
        cfg.update(backend_spec=backend_spec, backend_options=dict(backend_options))
        self.store.set("config", pickle.dumps(cfg))

    def count(self, key: str) -> int:
        return int(self.store.add(key, 0))

    def has(self, key: str) -> bool:
        return bool(self.store.check([key]))

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            try:
                self.store.set("stop", "1")
            except Exception:  # noqa: BLE001
                pass


class TorchrunWorld:
    def __init__(self, fx: Fixture, driver: TorchrunDriver):
        self.fx = fx
        self.d = driver
        self.world_size = driver.world_size
        self.rc = driver.rc
        self.seq = 0
        self.in_flight = False
        self.closed = False
        self.started_s = 0.0
        self.info: dict[int, dict] = {}

    def start(self) -> None:
        t0 = time.monotonic()
        t_end = t0 + self.fx.deadlines.start_s
        key = f"joined/{self.rc}"
        while self.d.count(key) < self.world_size:
            if time.monotonic() >= t_end:
                errs = [self.d.store.get(f"init_error/{rc}/{r}").decode(errors="replace")
                        for rc in range(self.rc, self.rc + 2) for r in range(self.world_size)
                        if self.d.has(f"init_error/{rc}/{r}")]
                why = (": " + errs[0].strip().splitlines()[-1]) if errs else ""
                self.closed = True
                raise WorldBroken("infra", f"torchrun world (generation {self.rc}) did not register "
                                           f"{self.world_size} workers within {self.fx.deadlines.start_s:g} s "
                                           f"({self.d.count(key)} did){why}")
            time.sleep(0.05)
        for r in range(self.world_size):
            self.info[r] = json.loads(self.d.store.get(f"worker/{self.rc}/{r}"))
        self.started_s = time.monotonic() - t0

    def is_alive(self) -> bool:
        return not self.closed and self.d.count(f"joined/{self.rc + 1}") == 0

    @property
    def pids(self) -> list[int]:
        return [i["pid"] for i in self.info.values()]

    def run(self, job: str, payload: Any, layout, product: str, deadline_s: float, n: int | None = None) -> list[RankOutcome]:
        n = n or self.world_size
        if n > self.world_size:
            raise ValueError(f"a world of {n} does not fit the torchrun world of {self.world_size}")
        self.seq += 1  # per generation: the workers of generation rc count jobs from 1
        seq = self.seq
        rc = self.rc
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        # every rank takes the job (the groups are collective over the whole torchrun world)
        msg = pickle.dumps(("job", seq, job, blob, layout, product, n), protocol=pickle.HIGHEST_PROTOCOL)
        self.in_flight = True
        self.d.store.set(f"job/{rc}/{seq}", msg)
        t_end = time.monotonic() + deadline_s
        outcomes: dict[int, RankOutcome] = {}
        infra_pending = set(range(n, self.world_size))
        hb = {r: (-1, time.monotonic()) for r in range(self.world_size)}
        next_hb = 0.0
        sleep = 0.001
        while len(outcomes) < n:
            now = time.monotonic()
            if now >= t_end:
                self.fail("hang", f"deadline of {deadline_s:g} s passed; ranks "
                                  f"{[r for r in range(n) if r not in outcomes]} did not finish" + errors_note(outcomes),
                          outcomes)
            for r in range(n):
                if r in outcomes:
                    continue
                key = f"res/{rc}/{seq}/{r}"
                if self.d.has(key):
                    m = pickle.loads(self.d.store.get(key))
                    if m[0] == "infra":
                        self.fail("infra", f"rank {r} could not make the groups for layout {layout}: "
                                           + m[1].strip().splitlines()[-1], outcomes, {r: m[1]})
                    _, ok, data = m
                    if ok:
                        outcomes[r] = RankOutcome(r, pickle.loads(data), None)
                    else:
                        outcomes[r] = RankOutcome(r, None, unpack_exception(data, r))
                    sleep = 0.001
            for r in list(infra_pending):  # helpers only report group failures
                if self.d.has(f"res/{rc}/{seq}/{r}"):
                    m = pickle.loads(self.d.store.get(f"res/{rc}/{seq}/{r}"))
                    self.fail("infra", f"rank {r} could not make the groups for layout {layout}: "
                                       + m[1].strip().splitlines()[-1], outcomes, {r: m[1]})
            if now >= next_hb:
                next_hb = now + 0.25
                if self.d.count(f"joined/{rc + 1}") > 0:
                    self.fail("crash", "torchrun restarted the worker group (a rank died)", outcomes)
                stale = []
                for r in range(self.world_size):
                    c = self.d.count(f"hb/{rc}/{r}")
                    last, since = hb[r]
                    if c != last:
                        hb[r] = (c, now)
                    elif now - since > HB_STALE_S:
                        stale.append(r)
                if stale:
                    self.fail("crash", f"ranks {stale} stopped (no heartbeat for {HB_STALE_S:g} s)", outcomes)
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.02)
        self.in_flight = False
        return [outcomes[r] for r in range(n)]

    def fail(self, kind: str, message: str, outcomes: dict, extra_stacks: dict | None = None):
        stacks = self.dump_stacks()  # the dead cannot answer; survivors do
        stacks.update(extra_stacks or {})
        self.kill()
        raise WorldBroken(kind, message, stacks, [outcomes[r] for r in sorted(outcomes)])

    def dump_stacks(self) -> dict[int, str]:
        rc = self.rc
        self.d.store.set(f"dump/{rc}", "1")
        t_end = time.monotonic() + DUMP_WAIT_S
        stacks: dict[int, str] = {}
        while time.monotonic() < t_end and len(stacks) < self.world_size:
            for r in range(self.world_size):
                if r not in stacks and self.d.has(f"stack/{rc}/{r}"):
                    stacks[r] = self.d.store.get(f"stack/{rc}/{r}").decode(errors="replace")
            time.sleep(0.02)
        return stacks

    def kill(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.d.store.set(f"kill/{self.rc}", "1")
        except Exception:  # noqa: BLE001
            pass
        self.d.rc = max(self.d.rc, self.rc + 1)  # torchrun restarts the group: the next generation

    def stop(self) -> None:
        self.closed = True
        self.d.stop()
