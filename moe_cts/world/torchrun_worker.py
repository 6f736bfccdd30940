"""A rank worker launched by torchrun, driven by the pytest process through a TCPStore.

On every host (docs/worlds.md has the full commands)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST0:29400 \\
             --max-restarts 3 --monitor-interval 0.5 \\
             -m moe_cts.world.torchrun_worker --driver DRIVER_HOST:29555

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT and TORCHELASTIC_RESTART_COUNT (rc).
The driver (``WorldPool`` for a fixture with ``launcher: torchrun``) hosts the TCPStore; keys:

    config                     pickled worker config (backend spec/options, env, dist backend ...)
    joined/{rc}                counter: workers of restart generation rc that are ready
    worker/{rc}/{rank}         pid, host, device of that worker
    job/{rc}/{seq}             pickled ("job", seq, job, payload, layout, product, n)  (n: ranks taking part)
    res/{rc}/{seq}/{rank}      pickled ("result", ok, blob) | ("infra", text)
    hb/{rc}/{rank}             heartbeat counter (every HEARTBEAT_S)
    dump/{rc}  kill/{rc}       driver -> workers: post your stacks to stack/{rc}/{rank}; exit now
    stop                       the driver is done: exit 0 (torchrun then exits 0)

A killed generation exits non-zero, torchrun restarts the group (rc + 1) and the driver waits for
``joined/{rc+1}``: that is the "fresh world" of a torchrun fixture. Workers exit 0 when the driver's
store goes away, so one torchrun launch serves one pytest session.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta

HEARTBEAT_S = 0.2


def _connect(host: str, port: int, timeout_s: float):
    import torch.distributed as dist

    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))


def _control(host: str, port: int, rc: int, rank: int, timeout_s: float) -> None:
    """Heartbeats, and the driver's dump / kill / stop orders (on its own store connection)."""
    try:
        store = _connect(host, port, timeout_s)
    except Exception:  # noqa: BLE001
        os._exit(0)
    dumped = False
    while True:
        try:
            store.add(f"hb/{rc}/{rank}", 1)
            if not dumped and store.check([f"dump/{rc}"]):
                with tempfile.TemporaryFile("w+") as f:  # unlinked: nothing is left behind
                    faulthandler.dump_traceback(file=f, all_threads=True)
                    f.seek(0)
                    store.set(f"stack/{rc}/{rank}", f.read())
                dumped = True
            if store.check([f"kill/{rc}"]):
                os._exit(17)  # torchrun restarts the group: the driver's fresh world
            if store.check(["stop"]):
                os._exit(0)
        except Exception:  # noqa: BLE001 - the driver is gone: this session is over
            os._exit(0)
        time.sleep(HEARTBEAT_S)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moe_cts.world.torchrun_worker")
    ap.add_argument("--driver", default=os.environ.get("MOE_CTS_DRIVER", ""),
                    help="HOST:PORT of the driver's TCPStore (the fixture's torchrun.store_host/store_port)")
    ap.add_argument("--connect-timeout", type=float, default=600.0, help="seconds to wait for the driver")
    a = ap.parse_args(argv)
    if not a.driver or ":" not in a.driver:
        ap.error("--driver HOST:PORT (or MOE_CTS_DRIVER) is required")
    host, _, port = a.driver.rpartition(":")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    rc = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    import torch.distributed as dist

    from moe_cts.backends.base import load_backend
    from moe_cts.world.worker import DUMP_SIGNAL

    # fatal signals and SIGUSR1 dump to stderr, which torchrun collects per rank (--log-dir / -r / -t)
    faulthandler.enable(all_threads=True)
    faulthandler.register(DUMP_SIGNAL, all_threads=True, chain=False)
    try:
        store = _connect(host, int(port), a.connect_timeout)
        cfg = pickle.loads(store.get("config"))
    except Exception as exc:  # noqa: BLE001
        print(f"torchrun_worker rank {rank}: cannot reach the driver at {a.driver}: {exc}", file=sys.stderr)
        return 0  # nothing to do without a driver; 0 so torchrun does not restart in a loop
    os.environ.update(cfg.get("env") or {})
    try:
        dt = cfg["device_type"]
        device = "cpu"
        if dt == "cuda":
            import torch

            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        elif dt == "npu":
            import torch
            import torch_npu  # noqa: F401

            torch.npu.set_device(local_rank)
            device = f"npu:{local_rank}"
        elif cfg.get("torch_threads"):
            import torch

            torch.set_num_threads(int(cfg["torch_threads"]))
        # the process group meets in the DRIVER's store under a per-generation prefix: torchrun's own
        # store keeps the previous generation's gloo addresses, which a restarted group would read
        pg_store = dist.PrefixStore(f"pg/{cfg.get('session', '')}/{rc}/", _connect(host, int(port), a.connect_timeout))
        dist.init_process_group(cfg["dist_backend"], store=pg_store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=float(cfg["dist_timeout_s"])))
        from moe_cts.backends.transport import DistTransport

        transport = DistTransport()
        backend = load_backend(cfg["backend_spec"], **(cfg.get("backend_options") or {}))
    except BaseException:  # noqa: BLE001
        store.set(f"init_error/{rc}/{rank}", traceback.format_exc())
        return 4
    threading.Thread(target=_control, args=(host, int(port), rc, rank, a.connect_timeout),
                     name="moe-cts-control", daemon=True).start()
    store.set(f"worker/{rc}/{rank}", json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "device": device}))
    store.add(f"joined/{rc}", 1)

    try:
        _serve(store, transport, backend, cfg, rc, rank, world, device)
    except Exception:  # noqa: BLE001 - the driver's store went away: the session is over
        traceback.print_exc()
    os._exit(0)


def _serve(store, transport, backend, cfg, rc, rank, world, device) -> None:
    import torch.distributed as dist

    from moe_cts.backends.base import RankContext
    from moe_cts.world.worker import Groups, run_job

    groups: dict[int, Groups] = {}
    seq = 0
    while True:
        seq += 1
        key = f"job/{rc}/{seq}"
        sleep = 0.001
        while not store.check([key]):
            if store.check(["stop"]):
                try:
                    dist.destroy_process_group()
                finally:
                    os._exit(0)
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.02)
        _, _, job, payload_blob, layout, product, n = pickle.loads(store.get(key))
        g = groups.get(n)
        if g is None:
            g = groups[n] = Groups(transport, n, total=world)
        try:
            ep_name, tp_name, mine = g.get(rank, layout)
        except BaseException:  # noqa: BLE001
            store.set(f"res/{rc}/{seq}/{rank}", pickle.dumps(("infra", traceback.format_exc())))
            continue
        if rank >= n:
            continue  # not part of this (smaller) world: it only helped make the groups
        ctx = RankContext(rank=rank, world_size=n, device=device, ep_group=ep_name, tp_group=tp_name,
                          groups=dict(mine), env=dict(cfg.get("env") or {}), product=product, transport=transport)
        ok, blob = run_job(job, payload_blob, ctx, backend)
        store.set(f"res/{rc}/{seq}/{rank}", pickle.dumps(("result", ok, blob), protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    sys.exit(main())
