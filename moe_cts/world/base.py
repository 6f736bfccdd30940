"""The World protocol: what every kind of world (local processes, a loopback process, torchrun workers)
offers the pool, so the pool never branches on the kind (the nccl-tests ``testColl`` idea: one small
protocol, several implementations).

A *launcher* knows how a fixture's worlds are made: which world serves a job of ``n`` ranks (``key``),
how to make it (``make``), whether its devices are exclusive (then at most one world is alive at a time),
and what to shut down when the pool closes.
"""
from __future__ import annotations

from typing import Any, Hashable, Protocol

from moe_cts.world.outcome import RankOutcome

DUMP_WAIT_S = 5.0  # the most a world waits for its ranks' stack dumps before the kill (usually ms)


class World(Protocol):
    world_size: int
    started_s: float  # how long start() took
    in_flight: bool  # a job was handed out and not all outcomes are in

    def start(self) -> None:
        """Bring every rank up; raise WorldBroken("infra", ...) if they do not come up in time."""

    def run(self, job: str, payload: Any, layout, product: str, deadline_s: float,
            n: int | None = None) -> list[RankOutcome]:
        """Run ``job`` on ranks 0..n-1 (default: all); one outcome per rank, or raise WorldBroken."""

    def is_alive(self) -> bool: ...

    def kill(self) -> None:
        """Kill every rank now. Always safe, also twice."""

    def stop(self) -> None:
        """Polite shutdown, then kill whatever is left."""

    @property
    def pids(self) -> list[int]: ...


class Launcher(Protocol):
    exclusive: bool  # devices cannot be shared: stop every other world before making one

    def key(self, world_size: int) -> Hashable:
        """Which world serves a job of ``world_size`` ranks (worlds are cached by this key)."""

    def make(self, world_size: int) -> World:
        """A new, not yet started world for jobs of ``world_size`` ranks (ValueError if none fits)."""

    def close(self) -> None:
        """Release what the launcher holds beyond its worlds."""
