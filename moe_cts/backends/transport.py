"""Transports for the sim backend: one small collective interface, two implementations.

* :class:`DistTransport` -- over ``torch.distributed`` (gloo on CPU, nccl on CUDA, hccl on NPU).
  A group handle is a ``ProcessGroup`` (``None`` = the default world group).
* :class:`LoopbackWorld` / :class:`LoopbackTransport` -- ``n`` thread-ranks inside ONE process, for
  worlds larger than the machine can hold as processes. Collectives are a shared slot per rank plus
  two ``threading.Barrier`` phases (publish, then copy out). A barrier that times out raises
  ``TimeoutError`` naming the collective and the ranks that did not arrive.

Both expose the same methods::

    rank, world_size
    new_group(ranks) -> handle                  # collective: every rank calls it, same order
    all_to_all_single(output, input, output_split_sizes, input_split_sizes, group)
    all_gather(tensor_list, tensor, group)
    all_reduce(tensor, group, op="sum"|"max")
    barrier(group)
    group_rank(group) ; group_size(group)
"""
from __future__ import annotations

import itertools
import threading
import traceback
from typing import Any, Callable, Sequence

import torch

__all__ = ["DistTransport", "LoopbackWorld", "LoopbackTransport", "LoopbackGroup"]


def _splits(n_rows: int, sizes: Sequence[int] | None, group_size: int) -> list[int]:
    if sizes is None or len(sizes) == 0:
        if n_rows % group_size:
            raise ValueError(f"dim 0 ({n_rows}) is not divisible by the group size ({group_size})")
        return [n_rows // group_size] * group_size
    sizes = [int(s) for s in sizes]
    if len(sizes) != group_size:
        raise ValueError(f"{len(sizes)} split sizes for a group of {group_size}")
    if sum(sizes) != n_rows:
        raise ValueError(f"split sizes sum to {sum(sizes)}, tensor has {n_rows} rows")
    return sizes


# --------------------------------------------------------------------------- torch.distributed
class DistTransport:
    """The collective interface over an initialised ``torch.distributed`` default group."""

    def __init__(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("DistTransport needs torch.distributed.init_process_group() first")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def new_group(self, ranks: list[int]):
        return self._dist.new_group(ranks=list(ranks))

    def all_to_all_single(self, output, input, output_split_sizes=None, input_split_sizes=None, group=None):
        self._dist.all_to_all_single(
            output, input,
            output_split_sizes=None if output_split_sizes is None else [int(s) for s in output_split_sizes],
            input_split_sizes=None if input_split_sizes is None else [int(s) for s in input_split_sizes],
            group=group)

    def all_gather(self, tensor_list, tensor, group=None):
        self._dist.all_gather(tensor_list, tensor, group=group)

    def all_reduce(self, tensor, group=None, op: str = "sum"):
        ops = {"sum": self._dist.ReduceOp.SUM, "max": self._dist.ReduceOp.MAX}
        self._dist.all_reduce(tensor, op=ops[op], group=group)

    def barrier(self, group=None):
        self._dist.barrier(group=group)

    def group_rank(self, group=None) -> int:
        return self._dist.get_rank(group) if group is not None else self.rank

    def group_size(self, group=None) -> int:
        return self._dist.get_world_size(group) if group is not None else self.world_size


# --------------------------------------------------------------------------- loopback
class _Aborted(RuntimeError):
    """A collective was abandoned because another rank of the loopback world failed."""


class LoopbackGroup:
    """A group of thread-ranks: global ranks in group-rank order, one slot per member."""

    def __init__(self, world: "LoopbackWorld", ranks: Sequence[int]):
        self.world = world
        self.ranks = tuple(int(r) for r in ranks)
        if len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"duplicate ranks in group {self.ranks}")
        self.index = {r: i for i, r in enumerate(self.ranks)}
        self.slots: list[Any] = [None] * len(self.ranks)
        self.calls = [0] * len(self.ranks)  # collectives entered, per member
        self._barrier = threading.Barrier(len(self.ranks), action=self._run_action)
        self._lock = threading.Lock()
        self._action: Callable[[list[Any]], Any] | None = None  # run ONCE when every member has arrived
        self.shared: Any = None  # what the action computed (read by every member in the body)
        self._action_error: BaseException | None = None

    def __repr__(self):
        return f"LoopbackGroup{list(self.ranks)}"

    def _wait(self, gi: int, what: str):
        try:
            self._barrier.wait(timeout=self.world.timeout_s)
        except threading.BrokenBarrierError:
            if self.world.aborted:
                raise _Aborted(f"loopback {what} on {self!r} abandoned: another rank failed") from None
            mine = self.calls[gi]
            missing = [r for r, c in zip(self.ranks, self.calls) if c < mine]
            self.world.abort()
            raise TimeoutError(
                f"loopback collective {what} on group {list(self.ranks)} timed out after "
                f"{self.world.timeout_s}s; ranks that did not arrive: {missing}") from None

    def _run_action(self):
        act, self._action = self._action, None
        self.shared, self._action_error = None, None
        if act is not None:
            try:
                self.shared = act(self.slots)
            except BaseException as exc:  # noqa: BLE001 - re-raised by every member
                self._action_error = exc

    def collective(self, rank: int, what: str, payload: Any, body: Callable[[list[Any], int], Any],
                   action: Callable[[list[Any]], Any] | None = None):
        """Publish ``payload``; once every member has, run ``action(slots)`` once (if given; its result is
        ``self.shared``), then ``body(slots, group_rank)`` on every member; then release."""
        gi = self.index.get(rank)
        if gi is None:
            raise RuntimeError(f"rank {rank} called {what} on {self!r}, which it is not a member of")
        with self._lock:
            self.calls[gi] += 1
        self.slots[gi] = payload
        if action is not None:
            self._action = action  # every member sets an equivalent one; the last arrival runs it
        self._wait(gi, what + " (enter)")
        try:
            if self._action_error is not None:
                raise RuntimeError(f"loopback {what} on {self!r} failed: {self._action_error}") from self._action_error
            result = body(self.slots, gi)
        finally:
            self._wait(gi, what + " (exit)")
        return result


class LoopbackWorld:
    """``n`` thread-ranks in one process sharing memory; ``transport(rank)`` gives each its view."""

    def __init__(self, n: int, timeout_s: float = 60.0):
        if n < 1:
            raise ValueError("a loopback world needs at least one rank")
        self.n = int(n)
        self.timeout_s = float(timeout_s)
        self.aborted = False
        self._lock = threading.Lock()
        self._groups: dict[int, LoopbackGroup] = {}  # new_group call number -> group
        self._all: list[LoopbackGroup] = []
        self.world_group = self._make(range(self.n))
        self._transports = [LoopbackTransport(self, r) for r in range(self.n)]

    def _make(self, ranks) -> LoopbackGroup:
        g = LoopbackGroup(self, ranks)
        self._all.append(g)
        return g

    def _group_for_call(self, seq: int, ranks: Sequence[int]) -> LoopbackGroup:
        with self._lock:
            g = self._groups.get(seq)
            if g is None:
                for r in ranks:
                    if not 0 <= int(r) < self.n:
                        raise ValueError(f"rank {r} is outside the loopback world of {self.n}")
                g = self._groups[seq] = self._make(ranks)
            elif tuple(int(r) for r in ranks) != g.ranks:
                raise RuntimeError(
                    f"new_group call #{seq} disagrees between ranks: {list(ranks)} vs {list(g.ranks)} "
                    "(every rank must create every group in the same order)")
            return g

    def abort(self):
        """Break every barrier so that ranks blocked in a collective fail fast."""
        self.aborted = True
        for g in list(self._all):
            g._barrier.abort()

    def transport(self, rank: int) -> "LoopbackTransport":
        return self._transports[rank]

    def run(self, fn: Callable, *args, timeout_s: float | None = None) -> list:
        """Run ``fn(rank, transport, *args)`` on ``n`` threads; return per-rank results.

        The first exception (in time) is re-raised with its rank; the others are abandoned fast.
        """
        results: list[Any] = [None] * self.n
        errors: list[tuple[int, BaseException, str]] = []
        elock = threading.Lock()

        def target(r):
            try:
                results[r] = fn(r, self._transports[r], *args)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                with elock:
                    errors.append((r, exc, traceback.format_exc()))
                self.abort()

        threads = [threading.Thread(target=target, args=(r,), name=f"loopback-rank{r}", daemon=True)
                   for r in range(self.n)]
        for t in threads:
            t.start()
        deadline = (timeout_s if timeout_s is not None else 2 * self.timeout_s + 5)
        import time as _time

        end = _time.monotonic() + deadline
        for t in threads:
            t.join(max(0.0, end - _time.monotonic()))
        alive = [r for r, t in enumerate(threads) if t.is_alive()]
        if alive:
            self.abort()
            raise TimeoutError(f"loopback world: ranks {alive} still running after {deadline}s")
        if errors:
            real = [e for e in errors if not isinstance(e[1], _Aborted)] or errors
            r, exc, tb = real[0]
            try:
                exc.add_note(f"(raised on loopback rank {r})")
            except AttributeError:  # pragma: no cover - python < 3.11
                pass
            exc.rank = r
            raise exc
        return results


class LoopbackTransport:
    """One thread-rank's view of a :class:`LoopbackWorld` (same methods as :class:`DistTransport`)."""

    def __init__(self, world: LoopbackWorld, rank: int):
        self.world = world
        self.rank = int(rank)
        self.world_size = world.n
        self._ngroups = 0

    def _g(self, group) -> LoopbackGroup:
        return self.world.world_group if group is None else group

    def new_group(self, ranks: list[int]) -> LoopbackGroup:
        seq = self._ngroups
        self._ngroups += 1
        return self.world._group_for_call(seq, ranks)

    def group_rank(self, group=None) -> int:
        g = self._g(group)
        return g.index.get(self.rank, -1)

    def group_size(self, group=None) -> int:
        return len(self._g(group).ranks)

    def all_to_all_single(self, output, input, output_split_sizes=None, input_split_sizes=None, group=None):
        g = self._g(group)
        n = len(g.ranks)
        if output_split_sizes is None and input_split_sizes is None:
            # equal splits (fixed-size count exchanges): one stacked transpose for the whole group
            _splits(input.shape[0], None, n)
            _splits(output.shape[0], None, n)

            per = input.numel() // n  # elements each source sends each destination

            def action(slots):
                stacked = torch.stack(list(slots))  # (src, n*c, ...)
                return stacked.reshape(n, n, per).transpose(0, 1)  # (dst, src, c*...)

            def body_eq(slots, me):
                output.copy_(g.shared[me].reshape(output.shape))

            g.collective(self.rank, "all_to_all_single", input, body_eq, action)
            return
        isz = _splits(input.shape[0], input_split_sizes, n)
        osz = _splits(output.shape[0], output_split_sizes, n)
        ioff = [0, *itertools.accumulate(isz)][:n]

        def body(slots, me):
            pos = 0
            for src in range(n):
                inp, sizes, offs = slots[src]
                cnt = sizes[me]
                if cnt != osz[src]:
                    raise RuntimeError(
                        f"all_to_all_single: rank {g.ranks[src]} sends {cnt} rows to rank {self.rank}, "
                        f"which expects {osz[src]}")
                if cnt:
                    output[pos:pos + cnt].copy_(inp[offs[me]:offs[me] + cnt])
                pos += cnt

        g.collective(self.rank, "all_to_all_single", (input, isz, ioff), body)

    def all_gather(self, tensor_list, tensor, group=None):
        g = self._g(group)
        if len(tensor_list) != len(g.ranks):
            raise ValueError(f"all_gather: {len(tensor_list)} outputs for a group of {len(g.ranks)}")

        def body(slots, me):
            for i, t in enumerate(slots):
                tensor_list[i].copy_(t)

        g.collective(self.rank, "all_gather", tensor, body)

    def all_reduce(self, tensor, group=None, op: str = "sum"):
        g = self._g(group)
        if op not in ("sum", "max"):
            raise ValueError(f"all_reduce: unsupported op {op!r}")

        def action(slots):
            acc = slots[0].clone()
            for t in slots[1:]:  # group-rank order, computed once: every rank gets the same bits
                acc = acc + t if op == "sum" else torch.maximum(acc, t)
            return acc

        res = g.collective(self.rank, "all_reduce", tensor, lambda slots, me: g.shared, action)
        tensor.copy_(res)

    def barrier(self, group=None):
        self._g(group).collective(self.rank, "barrier", None, lambda slots, me: None)
