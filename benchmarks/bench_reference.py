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


def _timed(fn, reps):
    """min over reps of (wall, cpu) seconds."""
    best_w = best_c = 1e9
    out = None
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_w = min(best_w, time.perf_counter() - w0)
        best_c = min(best_c, time.process_time() - c0)
    return out, best_w, best_c


def _child(kind: str, extra: dict) -> dict:
    import resource

    import numpy as np

    from moe_cts.model import OpParams

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res: dict = {}
    if kind == "rank":
        from moe_cts.oracle import reference as R

        p = OpParams(**{**BIG, **extra})
        R.dispatch_rank(p, 0, 3)  # warm the value pool (per seed/h/dtype), not timed
        seeds = iter(range(1, 100))

        def cold_call():
            R._GROUP_CACHE.clear()  # first rank of a case: routing of all 256 sources generated
            return R.dispatch_rank(p, next(seeds), 77)

        out, cold_w, cold_c = _timed(cold_call, 3)
        R.dispatch_rank(p, 1000, 5)
        ranks = iter(range(6, 100))
        out, warm_w, warm_c = _timed(lambda: R.dispatch_rank(p, 1000, next(ranks)), 3)
        n = out["valid_rows"]
        res.update(cold=(cold_w, cold_c), warm=(warm_w, warm_c), valid_rows=n, out_bytes=int(out["expand_x"][:n].nbytes))
        # bare numpy gather of the same output bytes, same process
        src = np.ones((p.bs * 16, p.h), out["expand_x"].dtype)
        idx = np.random.default_rng(0).integers(0, len(src), n)
        _, gw, gc = _timed(lambda: src[idx], 5)
        res["gather"] = (gw, gc)
        # the same rows gathered from 16-bit inputs (what a quantising dispatch must at least read)
        src16 = np.ones((p.bs * 16, p.h), np.float16)
        _, gw, gc = _timed(lambda: src16[idx], 5)
        res["gather16"] = (gw, gc)
    elif kind == "world":
        from moe_cts.oracle import reference as R
        from moe_cts.cases.inputs import rank_inputs

        p = OpParams(**{**WORLD16, **extra})
        t0 = time.perf_counter()
        ins = [rank_inputs(p, 1, g) for g in range(p.world_size)]
        res["inputs_seconds"] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        d = R.dispatch(p, ins)
        t1, c1 = time.perf_counter(), time.process_time()
        from moe_cts.cases.experts import apply_experts

        eo = [apply_experts(p, g, o["expand_x"], o["dynamic_scales"], o["expert_token_nums"], o["valid_rows"])
              for g, o in enumerate(d)]
        t1b, c1b = time.perf_counter(), time.process_time()
        R.combine(p, ins, eo)
        t2, c2 = time.perf_counter(), time.process_time()
        res.update(dispatch_seconds=t1 - t0, experts_seconds=t1b - t1, combine_seconds=t2 - t1b,
                   seconds=(t1 - t0) + (t2 - t1b), cpu_seconds=(c1 - c0) + (c2 - c1b))
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
            ms = lambda v: f"{v[0]*1e3:.0f} ms wall / {v[1]*1e3:.0f} ms cpu"
            print(f"{name}: valid_rows {d['valid_rows']} ({d['out_bytes']/2**20:.1f} MiB), peak RSS {d['peak_rss_mb']:.0f} MiB\n"
                  f"    first rank of a case {ms(d['cold'])}; further ranks {ms(d['warm'])}\n"
                  f"    bare gather of the output bytes {ms(d['gather'])}; of the 16-bit input rows {ms(d['gather16'])}\n"
                  f"    ratio (cpu) first/further vs output gather {d['cold'][1]/d['gather'][1]:.1f}x / {d['warm'][1]/d['gather'][1]:.1f}x;"
                  f" vs 16-bit gather {d['cold'][1]/d['gather16'][1]:.1f}x / {d['warm'][1]/d['gather16'][1]:.1f}x")
        else:
            print(f"{name}: dispatch {d['dispatch_seconds']*1e3:.0f} ms + combine {d['combine_seconds']*1e3:.0f} ms = "
                  f"{d['seconds']*1e3:.0f} ms wall, {d['cpu_seconds']*1e3:.0f} ms cpu (not counted: inputs {d['inputs_seconds']*1e3:.0f} ms, "
                  f"expert function {d['experts_seconds']*1e3:.0f} ms), peak RSS {d['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
