"""How much a warm world saves: per-case overhead of a warm N-rank sim world vs a world per case.

    .venv/bin/python benchmarks/bench_world.py [--ranks 8] [--cases 50] [--cold-cases 5] [--fixture fixtures/sim.yaml]

Measured in one run, on the fixture's start method (fork on the sim fixture):
* world start: time from ``WorldPool.run`` on a cold pool until the world is ready (processes,
  init_process_group over a FileStore, backend load), median of ``--cold-cases`` starts;
* warm per-case overhead: wall time of ``pool.run`` of a job that only does one all_to_all of rank
  ids (the cheapest multi-rank case) on the warm world, median over ``--cases``;
* cold per-case: the same job with a fresh world per case (start + run + close);
* a loopback world of 2x the fixture's process limit, warm, for comparison.
The job lives in this file; the backend is a stub (the world never calls it), so the numbers are the
world's overhead, not the operator's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moe_cts.world.fixtures import load_fixture  # noqa: E402
from moe_cts.world import WorldPool  # noqa: E402

HERE = "bench_world"





def _ms(xs):
    return f"{statistics.median(xs) * 1e3:8.2f} ms (min {min(xs) * 1e3:.2f}, max {max(xs) * 1e3:.2f}, n={len(xs)})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=os.path.join(ROOT, "fixtures", "sim.yaml"))
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--cold-cases", type=int, default=5)
    a = ap.parse_args(argv)
    fx = load_fixture(a.fixture)
    spec = "moe_cts.world.jobs:null_backend"
    n = a.ranks
    job = "moe_cts.world.jobs:alltoall_ranks"
    expect = list(range(n))  # alltoall_ranks: every rank receives each rank id once

    # warm up the parent's imports so the first cold start is not charged for them
    with WorldPool(fx, backend_spec=spec) as p:
        p.run(2, job)

    starts, cold = [], []
    for _ in range(a.cold_cases):
        t0 = time.perf_counter()
        with WorldPool(fx, backend_spec=spec) as p:
            starts.append(p.warm(n))
            assert all(o.value["ep"] == expect for o in p.run(n, job))
        cold.append(time.perf_counter() - t0)

    warm = []
    with WorldPool(fx, backend_spec=spec) as p:
        p.run(n, job)  # start + first case (groups) not counted
        for _ in range(a.cases):
            t0 = time.perf_counter()
            outs = p.run(n, job)
            warm.append(time.perf_counter() - t0)
            assert all(o.value["ep"] == expect for o in outs)
        big = 2 * fx.loopback_above if fx.device_type == "cpu" else None
        lb_start, lb = None, []
        if big:
            lb_start = p.warm(big)
            p.run(big, job)
            for _ in range(max(5, a.cases // 5)):
                t0 = time.perf_counter()
                p.run(big, job)
                lb.append(time.perf_counter() - t0)

    print(f"fixture {fx.name}: start_method={fx.start_method} dist_backend={fx.dist_backend} "
          f"cores={os.cpu_count()} python={sys.version.split()[0]}")
    print(f"world start ({n} ranks)                 : {_ms(starts)}")
    print(f"cold: world per case ({n} ranks)        : {_ms(cold)}")
    print(f"warm: per-case overhead ({n} ranks)     : {_ms(warm)}")
    print(f"speed-up warm vs world-per-case        : {statistics.median(cold) / statistics.median(warm):8.1f}x")
    if lb:
        print(f"loopback world start ({big} thread-ranks): {lb_start * 1e3:8.2f} ms")
        print(f"loopback warm per case ({big} ranks)     : {_ms(lb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
