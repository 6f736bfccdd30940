"""Performance results, read back: summaries of perf-mode runs, the slow-rank analysis of performance_info,
the text block and the bandwidth plot.

Slow-rank analysis (DeepXTrace's ``diagnose_matrix``): every rank's performance_info vector (cumulative
wait for tokens from each source rank) is stacked into a matrix ``M[dst, src]``; a column whose mean is
more than 3.0x the grand mean is a slow source rank, a row likewise (3.0) a slow receiver, a cell more
than 5.0x the mean (outside flagged rows/columns) a slow path.
"""
from __future__ import annotations

import statistics
from typing import Any

import numpy as np

THRES_COL, THRES_ROW, THRES_POINT = 3.0, 3.0, 5.0


def diagnose(matrix, thres_col: float = THRES_COL, thres_row: float = THRES_ROW,
             thres_point: float = THRES_POINT) -> dict:
    """DeepXTrace diagnose_matrix on ``M[dst, src]``: abnormal columns (slow sources), rows, cells."""
    m = np.asarray(matrix, dtype=np.float64)
    out = {"abnormal_cols": [], "abnormal_rows": [], "abnormal_points": []}
    if m.size == 0:
        return out
    mean = float(m.mean())
    if mean <= 0:
        return out
    for j, v in enumerate(m.mean(axis=0)):
        if v / mean > thres_col:
            out["abnormal_cols"].append([j, float(v), float(v / mean)])
    for i, v in enumerate(m.mean(axis=1)):
        if v / mean > thres_row:
            out["abnormal_rows"].append([i, float(v), float(v / mean)])
    cols = {c[0] for c in out["abnormal_cols"]}
    rows = {r[0] for r in out["abnormal_rows"]}
    for i, j in zip(*np.nonzero(m / mean > thres_point)):
        if int(i) not in rows and int(j) not in cols:
            out["abnormal_points"].append([int(i), int(j), float(m[i, j]), float(m[i, j] / mean)])
    return out


def slow_ranks(diag: dict) -> list[int]:
    return [int(c[0]) for c in diag.get("abnormal_cols", [])]


def _lat(per_rank: list[list[float]]) -> float:
    """Median over iterations of the slowest rank."""
    return float(statistics.median(max(col) for col in zip(*per_rank)))


def summarize(case, values: list[dict]) -> dict:
    """One perf record from every rank's perf_job result."""
    rec: dict[str, Any] = {"case": case.id, "world_size": case.params.world_size, "h": case.params.h,
                           "bs": case.params.bs, "k": case.params.k, "timer": values[0]["timer"],
                           "iters": len(values[0]["dispatch_s"])}
    for what in ("dispatch", "combine"):
        total = sum(v[f"{what}_bytes"] for v in values)
        lat = _lat([v[f"{what}_s"] for v in values])
        a2a = _lat([v[f"a2a_{what}_s"] for v in values])
        rec[what] = {"bytes": total, "latency_s": lat, "algbw_GBps": total / lat / 1e9 if lat > 0 else 0.0,
                     "alltoall_latency_s": a2a, "alltoall_algbw_GBps": total / a2a / 1e9 if a2a > 0 else 0.0,
                     "ratio": (a2a / lat) if lat > 0 else 0.0}
    infos = [v.get("performance_info") for v in values]
    if all(i is not None for i in infos) and infos:
        W = case.params.ep_world_size
        m = np.asarray(infos[:W], dtype=np.float64)  # M[dst, src]: rank dst's wait for tokens from src
        rec["perf_matrix"] = m.tolist()
        rec["diagnosis"] = diagnose(m)
        rec["slow_ranks"] = slow_ranks(rec["diagnosis"])
    return rec


def text(rec: dict) -> str:
    lines = [f"perf {rec['case']} ({rec['timer']} timer, {rec['iters']} iterations, backend {rec.get('backend')})"]
    for what in ("dispatch", "combine"):
        r = rec[what]
        lines.append(f"  {what:8s} {r['latency_s'] * 1e6:10.1f} us  {r['algbw_GBps']:8.3f} GB/s  "
                     f"| bare all_to_all {r['alltoall_latency_s'] * 1e6:10.1f} us  {r['alltoall_algbw_GBps']:8.3f} GB/s"
                     f"  | ratio {r['ratio']:.3f}  ({r['bytes']} B)")
    if "diagnosis" in rec:
        d = rec["diagnosis"]
        lines.append(f"  slow-rank analysis (thresholds {THRES_COL}/{THRES_ROW}/{THRES_POINT}): "
                     f"abnormal cols {[c[0] for c in d['abnormal_cols']]}, rows {[r[0] for r in d['abnormal_rows']]}, "
                     f"points {[(p[0], p[1]) for p in d['abnormal_points']]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- plots
def plot_bandwidth(records: list[dict], out_png) -> str | None:
    """Algorithmic bandwidth against message size, one line per (backend, op) plus the bare all-to-all."""
    recs = [r for r in records if r.get("dispatch") and not r.get("slow")]  # injected delays are not bandwidth
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("dispatch", "combine")):
        by_backend: dict[str, list] = {}
        for r in recs:
            by_backend.setdefault(r.get("backend") or "?", []).append(r)
        for be, rs in sorted(by_backend.items()):
            rs = sorted(rs, key=lambda r: r[what]["bytes"])
            xs = [r[what]["bytes"] for r in rs]
            ax.plot(xs, [r[what]["algbw_GBps"] for r in rs], "o-", label=f"{be} {what}")
            ax.plot(xs, [r[what]["alltoall_algbw_GBps"] for r in rs], "x--", label=f"{be} bare all_to_all")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes moved (all ranks)")
        ax.set_ylabel("algorithmic bandwidth (GB/s)")
        ax.set_title(what)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return str(out_png)
