"""Device leases: disjoint device ranges for concurrent test processes on one host.

pytest-xdist workers (or two pytest runs) on one host must never put two worlds on one device.
``acquire(n, total, lock_dir)`` takes an exclusive ``fcntl.flock`` on one lock file per device
(``<lock_dir>/device-<i>.lock``) for a contiguous range ``[start, start + n)`` of ``total`` devices
and returns a :class:`Lease`; rank ``r`` of the world then uses device ``start + r``. Locks belong to
open file descriptions: they vanish when the process that holds them dies, so a crashed worker never
leaks a device. ``lock_dir`` defaults to ``$MOE_CTS_LEASE_DIR`` or ``/tmp/moe-cts-leases-<uid>``; every
process sharing a host's devices must use the same directory.
"""
from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field


class LeaseTimeout(TimeoutError):
    pass


def default_lock_dir() -> str:
    return os.environ.get("MOE_CTS_LEASE_DIR") or f"/tmp/moe-cts-leases-{os.getuid()}"


@dataclass
class Lease:
    start: int
    n: int
    lock_dir: str
    _fds: list = field(default_factory=list, repr=False)

    @property
    def devices(self) -> range:
        return range(self.start, self.start + self.n)

    def release(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass


def _try_range(lock_dir: str, start: int, n: int) -> list | None:
    fds = []
    for i in range(start, start + n):
        fd = os.open(os.path.join(lock_dir, f"device-{i}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            for f in fds:
                fcntl.flock(f, fcntl.LOCK_UN)
                os.close(f)
            return None
        fds.append(fd)
    return fds


def acquire(n_devices: int, total: int, lock_dir: str | None = None, *, timeout_s: float = 60.0,
            poll_s: float = 0.05) -> Lease:
    """Lease ``n_devices`` contiguous devices of ``total``; waits up to ``timeout_s`` for a free range."""
    if not 1 <= n_devices <= total:
        raise ValueError(f"cannot lease {n_devices} of {total} devices")
    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, exist_ok=True)
    t_end = time.monotonic() + timeout_s
    # aligned starts first (0, n, 2n ...) so small worlds pack without fragmenting the host
    starts = list(range(0, total - n_devices + 1, n_devices))
    starts += [s for s in range(total - n_devices + 1) if s not in starts]
    while True:
        for s in starts:
            fds = _try_range(lock_dir, s, n_devices)
            if fds is not None:
                return Lease(s, n_devices, lock_dir, fds)
        if time.monotonic() >= t_end:
            raise LeaseTimeout(f"no {n_devices} free devices of {total} in {lock_dir} within {timeout_s:g} s")
        time.sleep(poll_s)
