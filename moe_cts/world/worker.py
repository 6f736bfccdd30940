"""The rank side of a world: long-lived workers that run job after job.

Two entry points, both started by :mod:`moe_cts.world.pool` through ``multiprocessing``:

* :func:`rank_main` -- ONE rank per process, torch.distributed (gloo / nccl / hccl) over a FileStore,
  the collectives through :class:`moe_cts.backends.transport.DistTransport`.
* :func:`loopback_main` -- a whole world of N thread-ranks inside ONE process on
  :class:`moe_cts.backends.transport.LoopbackWorld` (worlds larger than the host runs as processes).

Protocol (pickled tuples over a duplex Pipe, ``send_bytes``/``recv_bytes`` with the plain pickler so
torch tensors are copied, never shared)::

    parent -> child   ("job", seq, job, payload_bytes, layout, product)  |  ("stop",)
    child  -> parent  ("ready", rank, info) | ("init_error", rank, text)
                      ("result", seq, rank, ok, blob)   ok: blob = pickled value, else packed exception
                      ("infra", seq, rank, text)        groups could not be made: the world is unusable

Every worker: becomes its own process-group leader (the parent kills whole groups), dies with its
parent (PR_SET_PDEATHSIG when started from the main thread, plus a getppid check while idle),
registers faulthandler on SIGUSR1 (all threads) and for fatal signals, writing to a per-rank file
the parent reads before it kills a hung or crashed world.
"""
from __future__ import annotations

import faulthandler
import importlib
import os
import pickle
import signal
import sys
import threading
import traceback
from datetime import timedelta
from typing import Any, Callable

from moe_cts.backends.base import RankContext, load_backend
from moe_cts.world.outcome import pack_exception

DUMP_SIGNAL = signal.SIGUSR1
_keep: list = []  # file objects faulthandler writes to must stay open


# ----------------------------------------------------------------------------- layout
def layout_groups(world_size: int, layout: tuple[int, int] | None) -> tuple[int, int, list[tuple[str, tuple[int, ...]]]]:
    """(E, T, [(name, ranks), ...]) in creation order: EP groups t=0..T-1, then TP groups e=0..E-1.

    ``layout = (ep_world_size, tp)``; ``T = max(tp, 1)``; ``E * T`` must be ``world_size``. EP group t is
    ``[e*T + t for e]``, TP group e is ``[e*T + t for t]`` (moe_cts.model). With T == 1 there is one EP
    group (the whole world) and no TP group.
    """
    if layout is None:
        layout = (world_size, 1)
    E, tp = (int(v) for v in layout)
    T = max(tp, 1)
    if E < 1 or E * T != world_size:
        raise ValueError(f"layout (ep_world_size={E}, tp={tp}) needs {E * max(T, 1)} ranks, world has {world_size}")
    groups = [(f"ep{E}x{T}_ep{t}", tuple(e * T + t for e in range(E))) for t in range(T)]
    if T > 1:
        groups += [(f"ep{E}x{T}_tp{e}", tuple(e * T + t for t in range(T))) for e in range(E)]
    return E, T, groups


def rank_group_names(rank: int, E: int, T: int) -> tuple[str, str]:
    ep = f"ep{E}x{T}_ep{rank % T}"
    tp = f"ep{E}x{T}_tp{rank // T}" if T > 1 else ""
    return ep, tp


class Groups:
    """Per-rank cache: layout -> {name: handle} of this rank's groups, made with transport.new_group."""

    def __init__(self, transport, world_size: int, total: int | None = None):
        self.transport = transport
        self.world_size = world_size  # ranks of the case's world (0..world_size-1)
        self.total = total or world_size  # ranks of the transport's world: all of them make every group
        self.cache: dict[tuple[int, int], tuple[str, str, dict[str, Any]]] = {}

    def get(self, rank: int, layout) -> tuple[str, str, dict[str, Any]]:
        E, T, groups = layout_groups(self.world_size, layout)
        key = (E, T)
        hit = self.cache.get(key)
        if hit is None:
            ep_name, tp_name = rank_group_names(rank, E, T)
            mine: dict[str, Any] = {}
            for name, ranks in groups:
                if len(ranks) == self.total:
                    handle = None  # the whole world: the transport's default group
                else:
                    handle = self.transport.new_group(list(ranks))  # collective: every rank, same order
                if rank in ranks:
                    mine[name] = handle
            hit = self.cache[key] = (ep_name, tp_name, mine)
        return hit


_jobs: dict[str, Callable] = {}


def resolve_job(job: str) -> Callable:
    fn = _jobs.get(job)
    if fn is None:
        if ":" not in job:
            raise ValueError(f"job {job!r}: expected 'package.module:function'")
        mod, _, attr = job.partition(":")
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"job {job!r} is not callable")
        fn = _jobs[job] = obj
    return fn


# ----------------------------------------------------------------------------- process setup
def _parent_alive(cfg: dict) -> bool:
    """Is the pool's process still there? (forkserver: our parent is the fork server, not the pool)"""
    if cfg.get("start_method") == "forkserver":
        try:
            os.kill(cfg["parent_pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return os.getppid() == cfg["parent_pid"]


def _setup_process(cfg: dict, stack_path: str) -> None:
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    if cfg.get("pdeathsig"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - not Linux: the getppid check still applies
            pass
    if not _parent_alive(cfg):
        os._exit(3)
    f = open(stack_path, "w", buffering=1)
    _keep.append(f)
    faulthandler.enable(file=f, all_threads=True)
    faulthandler.register(DUMP_SIGNAL, file=f, all_threads=True, chain=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C in pytest is the parent's business
    os.environ.update(cfg.get("env") or {})
    threads = cfg.get("torch_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _send(conn, lock: threading.Lock | None, msg) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    if lock is None:
        conn.send_bytes(data)
    else:
        with lock:
            conn.send_bytes(data)


def _recv(conn, cfg: dict):
    """Next message from the parent; None when the parent is gone."""
    while True:
        try:
            if conn.poll(1.0):
                return pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return None
        if not _parent_alive(cfg):
            return None


def run_job(job: str, payload_blob: bytes, ctx: RankContext, backend) -> tuple[bool, bytes]:
    """Resolve ``job``, unpickle its payload and run it on this rank: (ok, pickled value or packed error).
    Shared by the local rank worker and the torchrun worker."""
    try:
        fn = resolve_job(job)
        payload = pickle.loads(payload_blob)
    except BaseException as exc:  # noqa: BLE001 - a bad job name or payload is this rank's error
        return False, pack_exception(exc)
    return _run_one(fn, ctx, backend, payload)


def _run_one(fn: Callable, ctx: RankContext, backend, payload) -> tuple[bool, bytes]:
    try:
        value = fn(ctx, backend, payload)
    except BaseException as exc:  # noqa: BLE001 - every error goes back to the parent
        return False, pack_exception(exc)
    try:
        return True, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        err = RuntimeError(f"rank {ctx.rank}: the job returned an unpicklable value "
                           f"({type(value).__name__}: {exc})")
        return False, pack_exception(err)


def _device(cfg: dict, rank: int) -> str:
    dt = cfg["device_type"]
    if dt == "cpu":
        return "cpu"
    idx = int(cfg.get("device_base", 0)) + rank
    if dt == "cuda":
        import torch

        torch.cuda.set_device(idx)
    elif dt == "npu":
        import torch
        import torch_npu  # noqa: F401 - registers the npu device (guarded: only on NPU fixtures)

        torch.npu.set_device(idx)
    return f"{dt}:{idx}"


# ----------------------------------------------------------------------------- one rank per process
def rank_main(conn, rank: int, world_size: int, cfg: dict) -> None:
    _setup_process(cfg, os.path.join(cfg["world_dir"], f"stack-{rank}.txt"))
    try:
        import torch.distributed as dist

        from moe_cts.backends.transport import DistTransport

        device = _device(cfg, rank)
        store = dist.FileStore(os.path.join(cfg["world_dir"], "store"), world_size)
        dist.init_process_group(cfg["dist_backend"], store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=float(cfg["dist_timeout_s"])))
        transport = DistTransport()
        backend = load_backend(cfg["backend_spec"], **(cfg.get("backend_options") or {}))
    except BaseException:  # noqa: BLE001
        _send(conn, None, ("init_error", rank, traceback.format_exc()))
        os._exit(4)
    _send(conn, None, ("ready", rank, {"pid": os.getpid(), "device": device}))
    groups = Groups(transport, world_size)
    while True:
        msg = _recv(conn, cfg)
        if msg is None or msg[0] == "stop":
            break
        _, seq, job, payload_blob, layout, product = msg
        try:
            ep_name, tp_name, mine = groups.get(rank, layout)
        except BaseException:  # noqa: BLE001
            _send(conn, None, ("infra", seq, rank, traceback.format_exc()))
            continue
        ctx = RankContext(rank=rank, world_size=world_size, device=device, ep_group=ep_name, tp_group=tp_name,
                          groups=dict(mine), env=dict(cfg.get("env") or {}), product=product, transport=transport)
        ok, blob = run_job(job, payload_blob, ctx, backend)
        _send(conn, None, ("result", seq, rank, ok, blob))
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass
    os._exit(0)


# ----------------------------------------------------------------------------- N thread-ranks in one process
def loopback_main(conn, world_size: int, cfg: dict) -> None:
    _setup_process(cfg, os.path.join(cfg["world_dir"], "stack-loopback.txt"))
    try:
        from moe_cts.backends.transport import LoopbackWorld

        backends = [load_backend(cfg["backend_spec"], **(cfg.get("backend_options") or {}))
                    for _ in range(world_size)]
    except BaseException:  # noqa: BLE001
        _send(conn, None, ("init_error", 0, traceback.format_exc()))
        os._exit(4)

    def fresh():
        lw = LoopbackWorld(world_size, timeout_s=float(cfg["dist_timeout_s"]))
        return lw, [Groups(lw.transport(r), world_size) for r in range(world_size)]

    lw, groups = fresh()
    lock = threading.Lock()
    _send(conn, None, ("ready", 0, {"pid": os.getpid(), "device": "cpu", "loopback": world_size}))
    threads_file = os.path.join(cfg["world_dir"], "threads.txt")
    while True:
        msg = _recv(conn, cfg)
        if msg is None or msg[0] == "stop":
            break
        _, seq, job, payload_blob, layout, product = msg
        failed = threading.Event()

        def one(r: int) -> None:
            try:
                ep_name, tp_name, mine = groups[r].get(r, layout)
            except BaseException:  # noqa: BLE001
                failed.set()
                lw.abort()
                _send(conn, lock, ("infra", seq, r, traceback.format_exc()))
                return
            ctx = RankContext(rank=r, world_size=world_size, device="cpu", ep_group=ep_name, tp_group=tp_name,
                              groups=dict(mine), env=dict(cfg.get("env") or {}), product=product,
                              transport=lw.transport(r))
            try:
                fn = resolve_job(job)
                payload = pickle.loads(payload_blob)
            except BaseException as exc:  # noqa: BLE001
                ok, blob = False, pack_exception(exc)
            else:
                ok, blob = _run_one(fn, ctx, backends[r], payload)
            if not ok:
                # fail fast: ranks blocked in a collective with this one are released (they raise)
                failed.set()
                lw.abort()
            _send(conn, lock, ("result", seq, r, ok, blob))

        threads = [threading.Thread(target=one, args=(r,), name=f"rank-{r}", daemon=True) for r in range(world_size)]
        for t in threads:
            t.start()
        with open(threads_file, "w") as f:  # thread ident -> rank, to split faulthandler dumps per rank
            f.write("".join(f"{t.ident:#x} {r}\n" for r, t in enumerate(threads)))
        for t in threads:
            t.join()
        if failed.is_set():
            lw, groups = fresh()  # an aborted loopback world cannot be reused
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("moe_cts.world.worker is started by moe_cts.world.WorldPool")
