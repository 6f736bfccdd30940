"""WorldPool: warm worlds for one fixture, at most one live world per key, and every deadline.

``run`` hands a job to the world that serves its size (started on first use, restarted after it broke)
and returns one :class:`RankOutcome` per rank, or raises :class:`WorldBroken` after killing that world;
the next ``run`` starts a fresh one. How worlds are made is the launcher's business (``launchers``), so
the pool treats a process world, a loopback world and a torchrun generation alike.
"""
from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any

from moe_cts.world.base import Launcher, World
from moe_cts.world.fixtures import Fixture
from moe_cts.world.launchers import launcher_for
from moe_cts.world.outcome import RankOutcome, WorldBroken
from moe_cts.world.worker import layout_groups

_live_pools: "weakref.WeakSet[WorldPool]" = weakref.WeakSet()


def _close_all() -> None:
    for p in list(_live_pools):
        try:
            p.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all)


class WorldPool:
    """Warm worlds for one fixture.

    ``run(world_size, job, payload, layout=(ep_world_size, tp), product="A3", deadline_s=None)``
    returns one :class:`RankOutcome` per rank, or raises :class:`WorldBroken` after killing the world.
    """

    def __init__(self, fx: Fixture, backend_spec: str | None = None, *, lease_dir: str | None = None,
                 launcher: Launcher | None = None):
        self.fx = fx
        self.backend_spec = backend_spec or fx.backend
        self.launcher = launcher or launcher_for(fx, self.backend_spec, lease_dir=lease_dir)
        self._worlds: dict[Any, World] = {}
        self._lock = threading.RLock()
        self.stats = {"worlds_started": 0, "broken": 0, "runs": 0}
        self.last_start_s: float | None = None
        self._closed = False
        _live_pools.add(self)

    def _world(self, world_size: int) -> World:
        key = self.launcher.key(world_size)
        w = self._worlds.get(key)
        if w is not None and not w.is_alive():
            w.kill()  # died between runs (after its last results): start afresh
            self._worlds.pop(key, None)
            w = None
        if w is None:
            if self.launcher.exclusive:
                for other in list(self._worlds.values()):
                    other.stop()
                self._worlds.clear()
            w = self.launcher.make(world_size)
            w.start()
            self.stats["worlds_started"] += 1
            self.last_start_s = w.started_s
            self._worlds[key] = w
        return w

    def run(self, world_size: int, job: str, payload: Any = None, *, layout: tuple[int, int] | None = None,
            product: str = "A3", deadline_s: float | None = None) -> list[RankOutcome]:
        if self._closed:
            raise RuntimeError("WorldPool is closed")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(job, str) or ":" not in job:
            raise ValueError(f"job must be 'package.module:function', got {job!r}")
        layout_groups(world_size, layout)  # ValueError on a layout that does not fit
        deadline = float(deadline_s if deadline_s is not None else self.fx.deadlines.case_s)
        with self._lock:
            self.stats["runs"] += 1
            key = self.launcher.key(world_size)
            try:
                return self._world(world_size).run(job, payload, layout, product, deadline, n=world_size)
            except WorldBroken:
                self.stats["broken"] += 1
                w = self._worlds.pop(key, None)
                if w is not None:
                    w.kill()
                raise
            except BaseException:
                # ^C or an error in the parent mid-run: the ranks may still be busy with this job,
                # so the world cannot take the next one; kill it (the next run starts afresh).
                # Before anything was sent (an unpicklable payload) the world is still good.
                w = self._worlds.get(key)
                if w is not None and getattr(w, "in_flight", True):
                    self._worlds.pop(key, None)
                    w.kill()
                raise

    def warm(self, world_size: int) -> float:
        """Start (if needed) the world of this size now; returns its start time in seconds."""
        with self._lock:
            before = self.stats["worlds_started"]
            w = self._world(world_size)
            return w.started_s if self.stats["worlds_started"] > before else 0.0

    def discard(self, world_size: int) -> None:
        with self._lock:
            w = self._worlds.pop(self.launcher.key(world_size), None)
            if w is not None:
                w.stop()

    @property
    def pids(self) -> list[int]:
        return [pid for w in self._worlds.values() for pid in w.pids]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for w in list(self._worlds.values()):
                try:
                    w.stop()
                except Exception:  # noqa: BLE001
                    w.kill()
            self._worlds.clear()
            self.launcher.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
