"""Perf mode outside pytest: the size sweep on one fixture/backend, plus the slow-rank injection check.

    .venv/bin/python benchmarks/bench_perf.py [--fixture fixtures/sim.yaml] [--backend sim] [--product A3]
                                              [--iters 5] [--warmup 2] [--slow-rank 5 --slow-delay 0.3]
                                              [--out reports/html/perf]

Prints one line per case (latency, algorithmic bandwidth, the bare all_to_all of the same bytes and the
ratio op / all_to_all, which is what is compared across runs), writes perf.json and bandwidth.png into
--out, and with --slow-rank reports which rank the DeepXTrace analysis flags (the one injected, if the
analysis works). Same world job as `moe-cts perf` (moe_cts.suite.perf:perf_job).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from moe_cts.report import perf as perf_report  # noqa: E402
from moe_cts.suite import perf  # noqa: E402
from moe_cts.world.fixtures import load_fixture  # noqa: E402
from moe_cts.world import WorldPool  # noqa: E402


class _State:
    def __init__(self, fixture, backend, deadline):
        self.fixture = load_fixture(fixture)
        self.backend_spec = backend or self.fixture.backend
        self.pool = WorldPool(self.fixture, backend_spec=self.backend_spec)
        self._deadline = deadline

    def deadline(self):
        return self._deadline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default=os.path.join(ROOT, "fixtures", "sim.yaml"))
    ap.add_argument("--backend", default=None)
    ap.add_argument("--product", default="A3")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--slow-rank", type=int, default=None)
    ap.add_argument("--slow-delay", type=float, default=0.3)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "reports", "html", "perf"))
    a = ap.parse_args(argv)
    st = _State(a.fixture, a.backend, a.deadline)
    recs = []
    t0 = time.perf_counter()
    try:
        for c in perf.perf_cases(product=a.product):
            rec = perf.run(st, c, warmup=a.warmup, iters=a.iters)
            recs.append(rec)
            print(perf_report.text(rec), flush=True)
        if a.slow_rank is not None:
            c = perf.slow_case()
            rec = perf.run(st, c, warmup=1, iters=3, slow={"rank": a.slow_rank, "delay_s": a.slow_delay})
            recs.append(rec)
            print(perf_report.text(rec))
            print(f"injected rank {a.slow_rank} ({a.slow_delay:g} s): flagged {rec.get('slow_ranks')}")
    finally:
        st.pool.close()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "perf.json"), "w") as f:
        json.dump(recs, f, indent=1, default=str)
    png = perf_report.plot_bandwidth(recs, os.path.join(a.out, "bandwidth.png"))
    print(f"{len(recs)} cases in {time.perf_counter() - t0:.1f} s; {a.out}/perf.json" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
