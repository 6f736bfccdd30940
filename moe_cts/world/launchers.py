"""How a fixture's worlds are made: local rank processes (device fixtures on leased device ranges), a
loopback process for CPU worlds larger than the host runs as processes, or torchrun restart generations."""
from __future__ import annotations

from moe_cts.world.fixtures import Fixture
from moe_cts.world.local import LocalWorld


class LocalLauncher:
    """Worlds on this host. CPU: a world of more than ``loopback_above`` ranks runs as threads of one process.
    Devices: one world at a time, on a device range leased across processes (xdist workers, other runs)."""

    def __init__(self, fx: Fixture, backend_spec: str, lease_dir: str | None = None):
        self.fx, self.backend_spec, self.lease_dir = fx, backend_spec, lease_dir
        self.exclusive = fx.device_type != "cpu"

    def key(self, world_size: int) -> int:
        return world_size

    def make(self, world_size: int) -> LocalWorld:
        fx = self.fx
        if fx.device_type == "cpu":
            return LocalWorld(fx, world_size, self.backend_spec, loopback=world_size > fx.loopback_above)
        if world_size > fx.devices:
            raise ValueError(f"fixture {fx.name!r} has {fx.devices} {fx.device_type} devices; "
                             f"a world of {world_size} does not fit (skip such cases)")
        from moe_cts.world.leases import acquire

        lease = acquire(world_size, fx.devices, self.lease_dir, timeout_s=fx.deadlines.start_s)
        return LocalWorld(fx, world_size, self.backend_spec, loopback=False, device_base=lease.start, lease=lease)

    def close(self) -> None:
        pass


class TorchrunLauncher:
    """One torchrun launch (every host) serves the session; a world is one restart generation of it, and a
    job of n ranks runs on ranks 0..n-1 of that generation."""

    exclusive = False

    def __init__(self, fx: Fixture, backend_spec: str):
        self.fx, self.backend_spec = fx, backend_spec
        self._driver = None

    def key(self, world_size: int) -> str:
        return "torchrun"

    def make(self, world_size: int):
        from moe_cts.world.torchrun import TorchrunDriver, TorchrunWorld

        if self._driver is None:
            self._driver = TorchrunDriver(self.fx)
            self._driver.configure(self.backend_spec, self.fx.backend_options)
        if world_size > self._driver.world_size:
            raise ValueError(f"fixture {self.fx.name!r}: a world of {world_size} does not fit the "
                             f"torchrun world of {self._driver.world_size}")
        return TorchrunWorld(self.fx, self._driver)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.stop()  # torchrun workers exit 0, torchrun with them


def launcher_for(fx: Fixture, backend_spec: str, *, lease_dir: str | None = None):
    if fx.launcher == "torchrun":
        return TorchrunLauncher(fx, backend_spec)
    return LocalLauncher(fx, backend_spec, lease_dir)
