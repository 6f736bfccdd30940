"""Speed of the reference model (prints numbers; not a timed test). Run:

    .venv/bin/python benchmarks/bench_reference.py

Each measurement runs in a fresh subprocess so its peak RSS is its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

BIG = dict(product="A3", ep_world_size=256, moe_expert_num=1024, bs=512, h=7168, k=8, x_dtype="bfloat16")
WORLD16 = dict(product="A3", ep_world_size=16, moe_expert_num=64, bs=256, h=7168, k=8, x_dtype="bfloat16")


def _child(kind: str, extra: dict) -> dict:
    import resource

    import numpy as np

    from moe_cts.model import OpParams

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res: dict = {}
    if kind == "rank":
        from moe_cts import reference as R

        p = OpParams(**{**BIG, **extra})
        R.dispatch_rank(p, 0, 3)  # warm the value pool (per seed/h/dtype), not timed
        cold = 1e9
        for seed in (1, 2, 3):  # first rank of a case: routing of all 256 sources generated
            R._GROUP_CACHE.clear()
            t0 = time.perf_counter()
            out = R.dispatch_rank(p, seed, 77)
            cold = min(cold, time.perf_counter() - t0)
        best = 1e9
        for r in (78, 79, 80):  # further ranks of the same case: routing cached
            t0 = time.perf_counter()
            out = R.dispatch_rank(p, 3, r)
            best = min(best, time.perf_counter() - t0)
        res["cold_seconds"] = cold
        n = out["valid_rows"]
        res.update(seconds=best, valid_rows=n, out_bytes=int(out["expand_x"][:n].nbytes))
        # bare numpy gather of the same output bytes, same process
        src = np.zeros((p.bs * 16, p.h), out["expand_x"].dtype)
        src[:] = 1
        idx = np.random.default_rng(0).integers(0, len(src), n)
        g = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            _ = src[idx]
            g = min(g, time.perf_counter() - t0)
        res["gather_seconds"] = g
        # the same rows gathered from bf16 inputs (what a quantising dispatch must at least read)
        src16 = np.ones((p.bs * 16, p.h), np.float16)
        g2 = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            _ = src16[idx]
            g2 = min(g2, time.perf_counter() - t0)
        res["gather16_seconds"] = g2
    elif kind == "world":
        from moe_cts import reference as R
        from moe_cts.inputs import rank_inputs

        p = OpParams(**{**WORLD16, **extra})
        t0 = time.perf_counter()
        ins = [rank_inputs(p, 1, g) for g in range(p.world_size)]
        res["inputs_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = R.dispatch(p, ins)
        t1 = time.perf_counter()
        from moe_cts.experts import apply_experts

        eo = [apply_experts(p, g, o["expand_x"], o["dynamic_scales"], o["expert_token_nums"], o["valid_rows"])
              for g, o in enumerate(d)]
        t1b = time.perf_counter()
        R.combine(p, ins, eo)
        t2 = time.perf_counter()
        res.update(dispatch_seconds=t1 - t0, experts_seconds=t1b - t1, combine_seconds=t2 - t1b, seconds=(t1 - t0) + (t2 - t1b))
    res["peak_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - 0 * rss0) / 1024
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], json.loads(sys.argv[3]))))
        return
    runs = [
        ("rank W=256 L=4 M=1024 Bs=512 K=8 H=7168 bf16, quant 0", "rank", {}),
        ("rank ... quant 2 (no smooth scales)", "rank", {"quant_mode": 2}),
        ("rank ... quant 2 + smooth scales", "rank", {"quant_mode": 2, "scales": True}),
        ("world 16 ranks M=64 Bs=256 K=8 H=7168 bf16: dispatch+combine", "world", {}),
        ("world ... quant 2 + scales", "world", {"quant_mode": 2, "scales": True}),
    ]
    for name, kind, extra in runs:
        r = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(extra)], capture_output=True, text=True)
        if r.returncode:
            print(name, "FAILED\n", r.stderr)
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        if kind == "rank":
            print(f"{name}: first rank of a case {d['cold_seconds']*1e3:.0f} ms, further ranks {d['seconds']*1e3:.0f} ms, valid_rows {d['valid_rows']} ({d['out_bytes']/2**20:.1f} MiB), "
                  f"bare gather of the output bytes {d['gather_seconds']*1e3:.1f} ms -> {d['cold_seconds']/d['gather_seconds']:.1f}x / {d['seconds']/d['gather_seconds']:.1f}x "
                  f"(of the 16-bit input rows {d['gather16_seconds']*1e3:.1f} ms -> {d['cold_seconds']/d['gather16_seconds']:.1f}x / {d['seconds']/d['gather16_seconds']:.1f}x), "
                  f"peak RSS {d['peak_rss_mb']:.0f} MiB")
        else:
            print(f"{name}: dispatch {d['dispatch_seconds']*1e3:.0f} ms + combine {d['combine_seconds']*1e3:.0f} ms = "
                  f"{d['seconds']*1e3:.0f} ms (not counted: inputs {d['inputs_seconds']*1e3:.0f} ms, expert function "
                  f"{d['experts_seconds']*1e3:.0f} ms), peak RSS {d['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
