"""Worlds on this host: rank processes started by multiprocessing (one per rank), or one process whose
threads are the ranks (loopback). The parent owns every deadline.

``LocalWorld.run`` hands the job to every rank, waits for all outcomes until the deadline, and on any
failure of the world itself (deadline passed, a rank died, groups could not be made) dumps every rank's
Python stack (faulthandler on SIGUSR1), kills the world's process groups and raises :class:`WorldBroken`.
Exceptions the job raises are outcomes, not breakage.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import tempfile
import threading
import time
from multiprocessing import connection as mpc
from typing import Any

import multiprocessing as mp

from moe_cts.backends.base import BUILTIN
from moe_cts.world.base import DUMP_WAIT_S
from moe_cts.world.fixtures import Fixture
from moe_cts.world.outcome import RankOutcome, WorldBroken, errors_note, unpack_exception
from moe_cts.world.worker import DUMP_SIGNAL, loopback_main, rank_main


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is gone"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class LocalWorld:
    """Rank processes on this host: one per rank (``loopback=False``) or one for all (``loopback=True``)."""

    def __init__(self, fx: Fixture, world_size: int, backend_spec: str, *, loopback: bool,
                 device_base: int = 0, lease=None):
        self.error_grace_s = float(fx.deadlines.error_grace_s)
        self.fx = fx
        self.world_size = world_size
        self.loopback = loopback
        self.lease = lease
        self.seq = 0
        self.dir = tempfile.mkdtemp(prefix=f"moe-cts-world{world_size}-")
        self.procs: list[mp.Process] = []
        self.conns: list[Any] = []  # parent ends, index = process index
        self.rank_of_proc: list[int | None] = []  # process index -> rank (None: loopback, all ranks)
        self.closed = False
        self.in_flight = False
        self.started_s = 0.0
        n_procs = 1 if loopback else world_size
        cores = os.cpu_count() or 1
        self.cfg = {
            "world_dir": self.dir,
            "parent_pid": os.getpid(),
            "start_method": fx.start_method,
            "pdeathsig": threading.current_thread() is threading.main_thread(),
            "env": dict(fx.env),
            "backend_spec": backend_spec,
            "backend_options": dict(fx.backend_options),
            "device_type": fx.device_type,
            "device_base": device_base,
            "dist_backend": fx.dist_backend,
            "dist_timeout_s": max(fx.deadlines.case_s, fx.deadlines.start_s) * 4 + 60,
            "torch_threads": max(1, cores // n_procs) if fx.device_type == "cpu" else None,
        }
        self.ctx = mp.get_context(fx.start_method)
        if fx.start_method == "forkserver":
            self.ctx.set_forkserver_preload(["torch", "torch.distributed", "moe_cts.world.worker"])

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        t0 = time.monotonic()
        if self.fx.start_method == "fork":
            _preimport(self.cfg["backend_spec"])
        try:
            if self.loopback:
                self._spawn(loopback_main, (self.world_size, self.cfg), None)
            else:
                for r in range(self.world_size):
                    self._spawn(rank_main, (r, self.world_size, self.cfg), r)
        except BaseException as exc:
            self.kill()
            raise WorldBroken("infra", f"could not start a world of {self.world_size}: {exc!r}") from exc
        deadline = t0 + self.fx.deadlines.start_s
        pending = set(range(len(self.procs)))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail("infra", f"world of {self.world_size} did not start within {self.fx.deadlines.start_s:g} s "
                                   f"(processes {sorted(pending)} not ready)")
            ready = mpc.wait([self.conns[i] for i in pending] + [self.procs[i].sentinel for i in pending],
                             timeout=remaining)
            for obj in ready:
                if obj in self.conns:
                    i = self.conns.index(obj)
                    msg = self._recv(i)
                    if msg is None:
                        continue
                    if msg[0] == "ready":
                        pending.discard(i)
                    elif msg[0] == "init_error":
                        self.fail("infra", f"rank {msg[1]} of a world of {self.world_size} failed to start: "
                                           + msg[2].strip().splitlines()[-1], extra_stacks={msg[1]: msg[2]})
            for i in list(pending):
                if self.procs[i].sentinel in ready:
                    # drain what it managed to send (its init_error), then it died while starting
                    while self.conns[i].poll():
                        msg = self._recv(i)
                        if msg is None:
                            break
                        if msg[0] == "init_error":
                            self.fail("infra", f"rank {msg[1]} of a world of {self.world_size} failed to start: "
                                               + msg[2].strip().splitlines()[-1], extra_stacks={msg[1]: msg[2]})
                    self.procs[i].join(1.0)  # it is dead (sentinel): reap it for its exit code
                    self.fail("infra", f"rank process {i} of a world of {self.world_size} died while starting "
                                       f"(it {_describe_exit(self.procs[i].exitcode)})")
        self.started_s = time.monotonic() - t0

    def _spawn(self, target, args, rank: int | None) -> None:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=target, args=(child_end,) + args, daemon=False,
                             name=f"moe-cts-w{self.world_size}-r{rank if rank is not None else 'L'}")
        p.start()
        child_end.close()
        self.procs.append(p)
        self.conns.append(parent_end)
        self.rank_of_proc.append(rank)

    def _recv(self, i: int):
        try:
            return pickle.loads(self.conns[i].recv_bytes())
        except (EOFError, OSError):
            return None

    # ------------------------------------------------------------------ run
    def run(self, job: str, payload: Any, layout, product: str, deadline_s: float,
            n: int | None = None) -> list[RankOutcome]:
        if n is not None and n != self.world_size:
            raise ValueError(f"a local world of {self.world_size} runs jobs of {self.world_size} ranks, not {n}")
        self.seq += 1
        seq = self.seq
        t_end = time.monotonic() + deadline_s
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        msg = pickle.dumps(("job", seq, job, blob, layout, product), protocol=pickle.HIGHEST_PROTOCOL)
        self.in_flight = True  # from here until all outcomes are in, the ranks are busy with this job
        for i, c in enumerate(self.conns):
            try:
                c.send_bytes(msg)
            except OSError:
                self.fail("crash", f"rank process {i} is gone")
        outcomes: dict[int, RankOutcome] = {}
        alive = set(range(len(self.procs)))
        graced = False
        while len(outcomes) < self.world_size:
            if not graced and any(o.error is not None for o in outcomes.values()):
                graced = True
                t_grace = time.monotonic() + self.error_grace_s
                if t_grace < t_end:
                    t_end, deadline_s = t_grace, None
            remaining = t_end - time.monotonic()
            if remaining <= 0:
                missing = [r for r in range(self.world_size) if r not in outcomes]
                why = (f"deadline of {deadline_s:g} s passed" if deadline_s is not None else
                       f"{self.error_grace_s:g} s after a rank raised, the others were still waiting")
                self.fail("hang", f"{why}; ranks {missing} did not finish"
                                  + errors_note(outcomes), outcomes=outcomes)
            ready = mpc.wait([self.conns[i] for i in alive] + [self.procs[i].sentinel for i in alive],
                             timeout=remaining)
            for obj in ready:
                if obj not in self.conns:
                    continue
                i = self.conns.index(obj)
                while self.conns[i].poll():
                    m = self._recv(i)
                    if m is None:
                        break
                    if m[0] == "result" and m[1] == seq:
                        _, _, rank, ok, data = m
                        if ok:
                            try:
                                outcomes[rank] = RankOutcome(rank, pickle.loads(data), None)
                            except Exception as exc:  # noqa: BLE001
                                outcomes[rank] = RankOutcome(rank, None, RuntimeError(
                                    f"rank {rank}: could not unpickle the job's value in the parent: {exc!r}"))
                        else:
                            outcomes[rank] = RankOutcome(rank, None, unpack_exception(data, rank))
                    elif m[0] == "infra" and m[1] == seq:
                        self.fail("infra", f"rank {m[2]} could not make the groups for layout {layout}: "
                                           + m[3].strip().splitlines()[-1], outcomes=outcomes,
                                  extra_stacks={m[2]: m[3]})
            dead = [i for i in alive if self.procs[i].sentinel in ready]
            if dead and len(outcomes) < self.world_size:
                # drain what a dying rank managed to send, then call it a crash
                self.fail("crash", "", outcomes=outcomes)
        self.in_flight = False
        return [outcomes[r] for r in range(self.world_size)]

    def is_alive(self) -> bool:
        return not self.closed and all(not mpc.wait([p.sentinel], timeout=0) for p in self.procs)

    # ------------------------------------------------------------------ breakage
    def fail(self, kind: str, message: str, outcomes: dict | None = None, extra_stacks: dict | None = None):
        dead_before = [i for i, p in enumerate(self.procs) if mpc.wait([p.sentinel], timeout=0)]
        stacks = self.dump_stacks()
        stacks.update(extra_stacks or {})
        codes = self.kill()
        if kind == "crash":
            exits = []
            for i in dead_before:
                who = (f"rank {self.rank_of_proc[i]}" if self.rank_of_proc[i] is not None
                       else f"the loopback world process (ranks 0-{self.world_size - 1})")
                exits.append(f"{who} (pid {self.procs[i].pid}) {_describe_exit(codes[i])}")
            message = "; ".join(exits) if exits else (message or "a rank process died")
        outs = [outcomes[r] for r in sorted(outcomes)] if outcomes else []
        raise WorldBroken(kind, message, stacks, outs)

    def dump_stacks(self) -> dict[int, str]:
        """Ask every live rank process for its Python stacks (faulthandler, all threads); read the files."""
        files = []
        for i, p in enumerate(self.procs):
            path = os.path.join(self.dir, "stack-loopback.txt" if self.rank_of_proc[i] is None
                                else f"stack-{self.rank_of_proc[i]}.txt")
            size0 = os.path.getsize(path) if os.path.exists(path) else 0
            alive = _unreaped(p) and not mpc.wait([p.sentinel], timeout=0)
            if alive:
                try:
                    os.kill(p.pid, DUMP_SIGNAL)
                except OSError:
                    alive = False
            files.append((i, path, size0, alive))
        t_end = time.monotonic() + DUMP_WAIT_S
        pending = {i for i, _, _, alive in files if alive}
        last: dict[int, int] = {}
        stable: dict[int, int] = {}
        while pending and time.monotonic() < t_end:
            time.sleep(0.02)
            for i, path, size0, _ in files:
                if i in pending and mpc.wait([self.procs[i].sentinel], timeout=0):
                    pending.discard(i)  # died meanwhile: nothing more will come
                if i in pending:
                    sz = os.path.getsize(path) if os.path.exists(path) else 0
                    # faulthandler writes line by line: done once the file stops growing for 100 ms
                    stable[i] = stable.get(i, 0) + 1 if (sz > size0 and last.get(i) == sz) else 0
                    if stable[i] >= 5:
                        pending.discard(i)
                    last[i] = sz
        stacks: dict[int, str] = {}
        for i, path, size0, alive in files:
            try:
                with open(path, "r", errors="replace") as f:
                    # a dead rank: its whole file (a fatal-signal dump, if any); a live one: the new part
                    f.seek(size0 if alive else 0)
                    text = f.read()
            except OSError:
                text = ""
            text = _trim_fork_history(text)
            if self.rank_of_proc[i] is None:
                stacks.update(_split_threads(text, os.path.join(self.dir, "threads.txt")))
            elif text.strip() or alive:
                stacks[self.rank_of_proc[i]] = text or "(no stack dump arrived)"
        return stacks

    def kill(self) -> list[int | None]:
        """Kill every rank's process group, reap, remove the world's directory. Always safe."""
        if self.closed:
            return [p.exitcode for p in self.procs]
        self.closed = True
        for p in self.procs:  # process groups first, before any reaping can free the pid
            # a process multiprocessing already reaped (Process.start() reaps finished children of
            # every world) has a pid the kernel may have given to someone else: never signal it
            if p.pid is not None and _unreaped(p):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except OSError:
                    pass
        codes = []
        for p in self.procs:
            p.join(timeout=5)
            codes.append(p.exitcode)
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.lease is not None:
            self.lease.release()
        return codes

    def stop(self, timeout_s: float = 2.0) -> None:
        """Polite shutdown (stop message, short join), then kill whatever is left."""
        if self.closed:
            return
        stop = pickle.dumps(("stop",))
        for c in self.conns:
            try:
                c.send_bytes(stop)
            except OSError:
                pass
        t_end = time.monotonic() + timeout_s
        for p in self.procs:
            p.join(timeout=max(0.0, t_end - time.monotonic()))
        self.kill()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]


def _unreaped(p) -> bool:
    popen = getattr(p, "_popen", None)
    return popen is not None and popen.returncode is None


_ENTRY_RE = re.compile(r"line \d+ in (rank_main|loopback_main)\s*$")


def _trim_fork_history(text: str) -> str:
    """Drop the frames below the worker's entry point: under fork they are the parent's (pytest ...)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if not line.startswith("  File "):
            skipping = False
        elif skipping:
            continue
        out.append(line)
        if _ENTRY_RE.search(line):
            skipping = True
    return "".join(out)


_THREAD_RE = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)", re.M)


def _split_threads(text: str, threads_file: str) -> dict[int, str]:
    """Split one loopback process's faulthandler dump into {rank: that rank-thread's stack}; -1: all."""
    out: dict[int, str] = {-1: text or "(no stack dump arrived)"}
    try:
        with open(threads_file) as f:
            ident_rank = {int(a, 16): int(b) for a, b in (line.split() for line in f if line.strip())}
    except (OSError, ValueError):
        return out
    marks = list(_THREAD_RE.finditer(text))
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        r = ident_rank.get(int(m.group(1), 16))
        if r is not None:
            out[r] = text[m.start():end].rstrip() + "\n"
    return out


_preimported: set[str] = set()


def _preimport(spec: str) -> None:
    """Import the backend's module once in the parent so forked ranks start with it loaded."""
    mod = BUILTIN.get(spec, spec).partition(":")[0]
    if mod and mod not in _preimported:
        _preimported.add(mod)
        try:
            import importlib

            importlib.import_module(mod)
            import torch.distributed  # noqa: F401
        except Exception:  # noqa: BLE001 - the rank reports the failure itself
            pass
