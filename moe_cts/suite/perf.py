"""Performance mode: timed dispatch / combine next to a bare all-to-all of the same bytes, slow-rank analysis.

Method (nccl-tests / pplx bench pattern): per case, ``warmup`` untimed iterations, then ``iters`` timed
ones, each started from a barrier of the EP group; device events where the backend's device has them
(cuda / npu), host ``perf_counter`` after a synchronise otherwise (sim on CPU). Per iteration the op's
latency is the slowest rank's; the reported latency is the median over iterations. Algorithmic
bandwidth = bytes moved by all ranks / latency. In the same world, right after the op, a bare
``all_to_all_single`` of the same per-rank bytes is timed the same way: ``ratio`` = op bandwidth /
bare all-to-all bandwidth is the number to compare across runs (absolute times are not).

The slow-rank analysis of performance_info and the plots are moe_cts.report.perf.

Fault injection: :class:`SlowRankBackend` wraps any backend and sleeps ``delay_s`` on one rank before
dispatch. The sim backend adds the same elapsed time to every entry of performance_info (it cannot
tell sources apart inside one gloo all_to_all), so the wrapper also records what the kernel records
per source: after the injected delay, every rank stamps its arrival (one all_gather of wall-clock ns
in the EP group, one host) and adds ``max(0, arrival[src] - arrival[me])`` to entry ``src``. On NPUs the
kernel fills these entries itself; the wrapper's attribution is for backends without it (``attribute``).
Load it as ``--backend moe_cts.suite.perf:slow_factory`` with MOE_CTS_SLOW_RANK / MOE_CTS_SLOW_DELAY_S.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from moe_cts.backends.base import load_backend
from moe_cts.cases import BASES, Case, checked_violations, stable_seed
from moe_cts.report.perf import summarize
from moe_cts.spec import DEFAULT_PROFILE, hccl_buffsize_min_mb

JOB = "moe_cts.suite.perf:perf_job"


# ----------------------------------------------------------------------------------------- fault injection
class SlowRankBackend:
    """Any backend, with ``delay_s`` of sleep on global rank ``rank`` before every dispatch."""

    def __init__(self, inner, rank: int, delay_s: float, attribute: bool = True):
        self.inner = inner
        self.rank = int(rank)
        self.delay_s = float(delay_s)
        self.attribute = attribute
        self.name = f"{getattr(inner, 'name', 'backend')}+slow-rank{self.rank}"

    def dispatch(self, ctx, **kw):
        if ctx.rank == self.rank and self.delay_s > 0:
            time.sleep(self.delay_s)
        perf = kw.get("performance_info")
        if perf is not None and self.attribute and ctx.transport is not None:
            import torch

            group = ctx.groups.get(kw["group_ep"])
            W = int(kw["ep_world_size"])
            stamps = [torch.zeros(1, dtype=torch.int64, device=ctx.device) for _ in range(W)]
            ctx.transport.all_gather(stamps, torch.tensor([time.time_ns()], dtype=torch.int64, device=ctx.device), group)
            arr = torch.cat(stamps)
            me = int(kw["ep_rank_id"])
            late = torch.clamp(arr - arr[me], min=0).to(perf.device)
            out = self.inner.dispatch(ctx, **kw)
            perf.add_(late[: perf.numel()])
            return out
        return self.inner.dispatch(ctx, **kw)

    def combine(self, ctx, **kw):
        return self.inner.combine(ctx, **kw)

    def combine_add_rms_norm(self, ctx, **kw):
        return self.inner.combine_add_rms_norm(ctx, **kw)


def slow_factory(**options):
    """``--backend moe_cts.suite.perf:slow_factory``: sim (or MOE_CTS_SLOW_INNER) slowed on MOE_CTS_SLOW_RANK."""
    inner = load_backend(os.environ.get("MOE_CTS_SLOW_INNER", "sim"), **options)
    return SlowRankBackend(inner, int(os.environ.get("MOE_CTS_SLOW_RANK", "1")),
                           float(os.environ.get("MOE_CTS_SLOW_DELAY_S", "0.05")))


# ----------------------------------------------------------------------------------------- the world job
class _Timer:
    """Device events where the device has them, host perf_counter after a synchronise otherwise."""

    def __init__(self, device: str):
        import torch

        self.kind, self.mod = "host", None
        if device.startswith("cuda") and torch.cuda.is_available():
            self.kind, self.mod = "events", torch.cuda
        elif device.startswith("npu") and hasattr(torch, "npu"):
            self.kind, self.mod = "events", torch.npu

    def time(self, fn):
        if self.mod is not None:
            a, b = self.mod.Event(enable_timing=True), self.mod.Event(enable_timing=True)
            a.record()
            r = fn()
            b.record()
            b.synchronize()
            return r, a.elapsed_time(b) / 1e3
        t0 = time.perf_counter()
        r = fn()
        return r, time.perf_counter() - t0


def perf_job(ctx, backend, payload: dict) -> dict:
    """World job: payload {"case": Case.to_dict(), "warmup": int, "iters": int, "perf_info": bool,
    "slow": {"rank": R, "delay_s": d} | None}."""
    import torch

    from moe_cts.cases import Case
    from moe_cts.cases.experts import apply_experts
    from moe_cts.cases.inputs import rank_inputs
    from moe_cts.suite.rank import combine_kwargs, dispatch_kwargs, to_numpy, valid_rows_from

    case = Case.from_dict(payload["case"])
    p = case.params.replace(performance_info=bool(payload.get("perf_info")))
    slow = payload.get("slow")
    if slow:
        backend = SlowRankBackend(backend, slow["rank"], slow["delay_s"])
    env = dict(ctx.env)
    env.update(case.env_dict())
    ctx.env = env
    inp = rank_inputs(p, case.seed, ctx.rank, case.routing)
    tr, group = ctx.transport, ctx.groups.get(ctx.ep_group)
    timer = _Timer(ctx.device)
    W = p.ep_world_size
    perf = torch.zeros(W, dtype=torch.int64, device=ctx.device) if p.performance_info else None

    def one(timed: bool):
        kw = dispatch_kwargs(p, inp, ctx)
        if perf is not None:
            kw["performance_info"] = perf if timed else torch.zeros_like(perf)
        tr.barrier(group)
        d, td = timer.time(lambda: backend.dispatch(ctx, **kw))
        out = {n: to_numpy(t) for n, t in zip(("expand_x", "dynamic_scales", "a", "expert_token_nums"), d[:4])}
        valid = valid_rows_from(p, out["expert_token_nums"])
        eo = apply_experts(p, ctx.rank, out["expand_x"], out["dynamic_scales"], out["expert_token_nums"], valid)
        ckw = combine_kwargs(p, inp, ctx, d, eo)
        tr.barrier(group)
        if p.combine_kind == "add_rms_norm":
            _, tc = timer.time(lambda: backend.combine_add_rms_norm(ctx, **ckw))
        else:
            _, tc = timer.time(lambda: backend.combine(ctx, **ckw))
        return td, tc, valid, out

    for _ in range(int(payload.get("warmup", 2))):
        one(False)
    res: dict[str, Any] = {"rank": ctx.rank, "dispatch_s": [], "combine_s": [], "timer": timer.kind}
    valid, out = 0, None
    for _ in range(int(payload.get("iters", 5))):
        td, tc, valid, out = one(True)
        res["dispatch_s"].append(td)
        res["combine_s"].append(tc)
    # bytes this rank receives in dispatch and sends back in combine (the valid rows; sim on CPU moves
    # exactly these, a kernel moves these plus fixed-size headers)
    ex = np.asarray(out["expand_x"])
    row_d = ex.dtype.itemsize * p.h + (4 if p.quant_mode == 2 else 0)
    xbytes = 2  # x is bfloat16 or float16
    res["dispatch_bytes"] = int(valid * row_d)
    res["combine_bytes"] = int(valid * p.h * xbytes)
    # the bare all-to-all of the same bytes, same world, same timer
    for what in ("dispatch", "combine"):
        mine = torch.tensor([res[f"{what}_bytes"]], dtype=torch.int64, device=ctx.device)
        allb = [torch.zeros(1, dtype=torch.int64, device=ctx.device) for _ in range(W)]
        tr.all_gather(allb, mine, group)
        allb = [int(t.item()) for t in allb]
        me = p.ep_rank(ctx.rank)
        send = [allb[me] // W + (1 if s < allb[me] % W else 0) for s in range(W)]
        recv = [allb[s] // W + (1 if me < allb[s] % W else 0) for s in range(W)]
        src = torch.ones(sum(send), dtype=torch.uint8, device=ctx.device)
        dst = torch.empty(sum(recv), dtype=torch.uint8, device=ctx.device)
        for _ in range(int(payload.get("warmup", 2))):
            tr.all_to_all_single(dst, src, recv, send, group)
        ts = []
        for _ in range(int(payload.get("iters", 5))):
            tr.barrier(group)
            _, t = timer.time(lambda: tr.all_to_all_single(dst, src, recv, send, group))
            ts.append(t)
        res[f"a2a_{what}_s"] = ts
    res["performance_info"] = None if perf is None else to_numpy(perf).tolist()
    return res


# ----------------------------------------------------------------------------------------- parent side
def perf_info_allowed(case) -> bool:
    return not checked_violations(case.params.replace(performance_info=True), profile=case.profile)


def run(st, case, *, warmup: int = 2, iters: int = 5, slow: dict | None = None, deadline_s: float | None = None) -> dict:
    """Run perf_job for ``case`` on the session's world pool; returns the summary record."""
    p = case.params
    outcomes = st.pool.run(p.world_size, JOB, {"case": case.to_dict(), "warmup": warmup, "iters": iters,
                                                "perf_info": perf_info_allowed(case), "slow": slow},
                           layout=(p.ep_world_size, p.tp), product=p.product,
                           deadline_s=deadline_s or st.deadline())
    errs = [o for o in outcomes if o.error is not None]
    if errs:
        raise RuntimeError(f"perf {case.id}: rank {errs[0].rank} failed: {errs[0].error}")
    rec = summarize(case, [o.value for o in sorted(outcomes, key=lambda o: o.rank)])
    rec["backend"] = st.backend_spec
    rec["slow"] = slow
    return rec


SWEEP_WORLDS = (2, 8)  # device counts of the CUDA fixtures (2 GPUs now, 8 when lent)
SWEEP_BS = (1, 16, 128, 512)


def sweep_cases(profile: str = DEFAULT_PROFILE) -> list:
    """DeepSeek-like message sizes on a fixed world: A3, H=7168, K=8, Bs in SWEEP_BS, W in SWEEP_WORLDS,
    each with HCCL_BUFFSIZE set to its own minimum (the default 200 MB is too small past Bs=128)."""
    out = []
    for w in SWEEP_WORLDS:
        m = w * max(2, -(-8 // w))  # K=8 needs at least 8 experts; 2+ per rank
        for bs in SWEEP_BS:
            p = BASES["A3"].replace(ep_world_size=w, moe_expert_num=m, bs=bs, h=7168, k=8)
            env = {"HCCL_BUFFSIZE": str(max(200, hccl_buffsize_min_mb(p, "ep")))}
            if checked_violations(p, profile=profile, env={k: int(v) for k, v in env.items()}):
                continue
            cid = f"A3-perf-sweep-W{w}-bs{bs}-k8-h7168"
            out.append(Case(id=cid, params=p, tier="full", kind="perf", feature="perf-sweep", seed=stable_seed(cid),
                            profile=profile, env=tuple(sorted(env.items()))))
    return out


def perf_cases(profile: str = DEFAULT_PROFILE, product: str | None = None) -> list:
    """The perf sweep: each product's base case at several hidden sizes (legal ones only), plus the
    fixed-world sweep (sweep_cases) for device fixtures."""
    out = [] if product not in (None, "A3") else sweep_cases(profile)
    for prod, base in sorted(BASES.items()):
        if product and prod != product:
            continue
        for bs, h in ((base.bs, 1024), (base.bs, 4096), (base.bs, 7168), (8 * base.bs, 4096), (8 * base.bs, 7168)):
            p = base.replace(h=h, bs=bs)
            if checked_violations(p, profile=profile):
                continue
            cid = f"{prod}-perf-W{p.world_size}-bs{bs}-k{p.k}-h{h}"
            out.append(Case(id=cid, params=p, tier="full", kind="perf", feature="perf", seed=stable_seed(cid),
                            profile=profile))
    return out


def slow_case(profile: str = DEFAULT_PROFILE):
    """The fault-injection case: the first product whose profile takes performance_info."""
    for prod in ("A3", "A2"):
        base = BASES[prod]
        if prod == "A3":  # 8 ranks: a slow column stands out of the 3.0x threshold with room (W=4 caps it at 4x)
            base = base.replace(ep_world_size=8, moe_expert_num=16)
        cid = f"{prod}-perf-slowrank-W{base.world_size}"
        c = Case(id=cid, params=base, tier="full", kind="perf", feature="slow-rank", seed=stable_seed(cid), profile=profile)
        if perf_info_allowed(c):
            return c
    return None
