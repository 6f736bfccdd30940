"""Contract scenarios for the npu backend, run against the stand-in torch_npu in a SEPARATE process.

``python tests/standin/contract_driver.py [ids...]`` (with tests/standin first on PYTHONPATH and
MOE_CTS_NPU_STANDIN=1) runs each scenario on a loopback world (one thread per rank) through
``NpuBackend`` -> stand-in ``torch_npu`` (real schema strings) -> sim, and prints one JSON object:
``{scenario id: result}``. tests/test_npu_contract.py launches it and asserts per scenario.

This module's top level is pure data (SCENARIOS) so the test can import it without importing the stand-in.
"""
from __future__ import annotations

import json
import sys
import traceback

BASE = dict(ep_world_size=2, moe_expert_num=4, bs=4, h=1024, k=2, x_dtype="bfloat16")

# id -> (params, mutant, expectation). expectation: "ok" | ["aclnn", status] | ["binding", code] | ["raw", text]
# Error scenarios run sim WITH its spec parameter checks (the statuses come from them); legal and mutant
# scenarios run sim without them, so the contract of the binding does not hinge on the checker's state.
SCENARIOS: dict[str, tuple[dict, str | None, object]] = {
    # ---- legal calls: every keyword group the suite uses, accepted by the real schema
    "base": (dict(), None, "ok"),
    "fp16_quant2_smooth_scales": (dict(x_dtype="float16", quant_mode=2, scales=True), None, "ok"),
    "quant2_no_scales_token_nums_cumsum": (dict(quant_mode=2, expert_token_nums_type=0), None, "ok"),
    "tp2": (dict(tp_world_size=2, moe_expert_num=2), None, "ok"),
    "tp1_explicit": (dict(tp_world_size=1), None, "ok"),
    "shared_experts": (dict(ep_world_size=3, shared_expert_num=1, shared_expert_rank_num=1, moe_expert_num=4,
                            shared_expert_x=True), None, "ok"),
    "special_experts": (dict(zero_expert_num=1, copy_expert_num=1, const_expert_num=1), None, "ok"),
    "performance_info": (dict(performance_info=True), None, "ok"),
    "mask_1d": (dict(x_active_mask="1d"), None, "ok"),
    "mask_2d": (dict(x_active_mask="2d"), None, "ok"),
    "expert_scales_to_dispatch": (dict(expert_scales=True), None, "ok"),
    "global_bs_comm_alg": (dict(global_bs=8, comm_alg="fullmesh_v1"), None, "ok"),
    "comm_quant_mode2": (dict(comm_quant_mode=2), None, "ok"),
    "add_rms_norm": (dict(combine_kind="add_rms_norm"), None, "ok"),
    "add_rms_norm_perf_tp2": (dict(combine_kind="add_rms_norm", tp_world_size=2, moe_expert_num=2), None, "ok"),
    # ---- errors travel back with their status / code
    "binding_check_err01": (dict(expert_token_nums_type=2), None, ["binding", "ERR01001"]),
    "illegal_group_empty": (dict(group_ep=""), None, ["aclnn", 161001]),
    "illegal_group_too_long": (dict(group_ep="g" * 130), None, ["aclnn", 161001]),
    "x_float32_dtype": (dict(x_dtype="float32"), None, ["aclnn", 161002]),
    "h_out_of_range": (dict(h=1000), None, ["aclnn", 561002]),
    # ---- mutants: argument-mapping mistakes the contract must catch loudly
    "mut_misspelled_keyword": (dict(), "misspelled_keyword", ["binding", "schema"]),
    "mut_keyword_positionally": (dict(performance_info=True), "keyword_positionally", ["binding", "schema"]),
    "mut_unresolved_group": (dict(), "unresolved_group", ["binding", "schema"]),
    "mut_wrong_output_order": (dict(), "wrong_output_order", ["aclnn", 161002]),
    "mut_group_local_rank": (dict(tp_world_size=2, moe_expert_num=2), "group_local_rank", ["raw", "not a member"]),
    "mut_group_key_not_comm_name": (dict(), "group_key_not_comm_name", ["aclnn", 561000]),
}


# =========================================================================== runtime (subprocess only)
def _mutant_backend(kind):
    import torch
    import torch_npu  # the stand-in
    from moe_cts.backends import npu as npu_mod
    from moe_cts.backends.npu import NpuBackend

    class Mutant(NpuBackend):
        def _call(self, ctx, op_name, positional, kw):
            if kind == "misspelled_keyword":
                kw = dict(kw)
                kw["expert_tokens_num_type"] = kw.pop("expert_token_nums_type", 1)
            if kind == "keyword_positionally" and op_name == npu_mod.DISPATCH_OP:
                # what a hand-written call `op(x, ids, g, W, r, M, performance_info)` would do
                args = [positional[p] for p in npu_mod.positional(op_name)]
                args[2] = self.group_name(ctx, args[2])
                try:
                    return getattr(torch_npu, op_name)(*args, kw["performance_info"])
                except RuntimeError as exc:
                    raise npu_mod.classify_npu_error(exc) from exc
            if kind == "unresolved_group":
                positional = dict(positional, group_ep=ctx.groups[positional["group_ep"]])
                self.group_name = lambda ctx, name: name
            return super()._call(ctx, op_name, positional, kw)

        def group_name(self, ctx, name):
            if kind == "group_local_rank" and name in ctx.groups:
                pg = ctx.groups[name]
                return pg._get_backend(torch.device("npu")).get_hccl_comm_name(pg.ranks.index(ctx.rank))
            if kind == "group_key_not_comm_name":
                return name
            return super().group_name(ctx, name)

    return Mutant() if kind else NpuBackend()


def _inputs(p, rank, ep_rank):
    import torch
    g = torch.Generator().manual_seed(1000 + rank)
    bs, h, k = p["bs"], p["h"], p["k"]
    dt = getattr(__import__("torch"), p["x_dtype"])
    x = (torch.randn(bs, h, generator=g) * 0.5).to(dt)
    n_ids = p["moe_expert_num"] + p.get("zero_expert_num", 0) + p.get("copy_expert_num", 0) + \
        p.get("const_expert_num", 0)
    ids = torch.stack([torch.randperm(n_ids, generator=g)[:k] for _ in range(bs)]).to(torch.int32)
    scales = torch.rand(bs, k, generator=g).float()
    return x, ids, scales


def _rank(rank, tr, sid, p, mutant):
    import torch
    import torch_npu
    from moe_cts.backends.base import RankContext

    W = p["ep_world_size"]
    tpw = p.get("tp_world_size", 0)
    T = 2 if tpw == 2 else 1
    ep_rank, tp_rank = rank // T, rank % T
    groups = {}
    for t in range(T):  # the doc's layout: device = ep*T + tp; every rank makes every group in one order
        ranks = [e * T + t for e in range(W)]
        hnd = tr.new_group(ranks)
        if rank in ranks:
            groups[f"ep{t}"] = torch_npu._standin_group(hnd, ranks, "ep")
    if T > 1:
        for e in range(W):
            ranks = [e * T + t for t in range(T)]
            hnd = tr.new_group(ranks)
            if rank in ranks:
                groups[f"tp{e}"] = torch_npu._standin_group(hnd, ranks, "tp")
    ctx = RankContext(rank=rank, world_size=W * T, device="cpu", ep_group=f"ep{tp_rank}",
                      tp_group=f"tp{ep_rank}" if T > 1 else "", groups=groups, env={"HCCL_BUFFSIZE": "200"},
                      product="A3", transport=tr)
    torch_npu._standin_set_context(ctx)
    be = _mutant_backend(mutant)

    x, ids, ex_scales = _inputs(p, rank, ep_rank)
    bs, h, k, M = p["bs"], p["h"], p["k"], p["moe_expert_num"]
    group_ep = p.get("group_ep", ctx.ep_group)
    kw = {}
    for name in ("shared_expert_num", "shared_expert_rank_num", "quant_mode", "global_bs", "expert_token_nums_type",
                 "comm_alg", "zero_expert_num", "copy_expert_num", "const_expert_num"):
        if name in p:
            kw[name] = p[name]
    if tpw:
        kw.update(tp_world_size=tpw, tp_rank_id=tp_rank if T > 1 else 0)
        if T > 1:
            kw["group_tp"] = ctx.tp_group
    if p.get("scales"):
        kw["scales"] = torch.rand(M, h).float() + 0.5
    if p.get("x_active_mask") == "1d":
        kw["x_active_mask"] = torch.arange(bs) < bs - 1
    elif p.get("x_active_mask") == "2d":
        m = torch.ones(bs, k, dtype=torch.bool)
        m[0, -1] = False
        kw["x_active_mask"] = m
    if p.get("expert_scales"):
        kw["expert_scales"] = ex_scales
    if p.get("performance_info"):
        kw["performance_info"] = torch.zeros(W, dtype=torch.int64)

    outs = be.dispatch(ctx, x, ids, group_ep, W, ep_rank, M, **kw)
    disp = [r for r in torch_npu._calls if r[0] == rank and r[1] == "npu_moe_distribute_dispatch_v2"][-1][2]
    # every keyword the backend was given reached the binding under its own name with its own value
    for name, v in kw.items():
        got = disp[name]
        want = ctx.groups[v]._get_backend(torch.device("npu")).get_hccl_comm_name(rank) if name == "group_tp" else v
        same = (got is want) or (isinstance(want, torch.Tensor) and torch.equal(got, want)) or got == want
        if not same:
            raise AssertionError(f"keyword {name}: binding received {got!r}, backend was given {want!r}")
    names = ("expand_x", "dynamic_scales", "assist_info_for_combine", "expert_token_nums", "ep_recv_counts",
             "tp_recv_counts", "expand_scales")
    if mutant == "wrong_output_order":  # a consumer that believes assist_info comes second
        names = ("expand_x", "assist_info_for_combine", "dynamic_scales") + names[3:]
    o = dict(zip(names, outs))

    ex = o["expand_x"]
    if ex.dtype == torch.int8:  # the "expert": dequantise (identity expert)
        ex = (ex.float() * o["dynamic_scales"].reshape(-1)[: ex.shape[0]].unsqueeze(1)).to(x.dtype)
    ckw = {n: kw[n] for n in ("shared_expert_num", "shared_expert_rank_num", "global_bs", "comm_alg",
                              "zero_expert_num", "copy_expert_num", "const_expert_num", "tp_world_size",
                              "tp_rank_id", "group_tp", "x_active_mask", "performance_info") if n in kw}
    if T > 1:
        ckw["tp_send_counts"] = o["tp_recv_counts"]
    if p.get("expert_scales"):
        ckw["expand_scales"] = o["expand_scales"]
    if p.get("comm_quant_mode"):
        ckw["comm_quant_mode"] = p["comm_quant_mode"]
    if p.get("shared_expert_x"):
        ckw["shared_expert_x"] = torch.zeros(bs, h, dtype=x.dtype)
    if p.get("copy_expert_num") or p.get("const_expert_num"):
        ckw["ori_x"] = x
    if p.get("const_expert_num"):
        q = p["const_expert_num"]
        ckw.update(const_expert_alpha_1=torch.ones(q, dtype=x.dtype), const_expert_alpha_2=torch.zeros(q, dtype=x.dtype),
                   const_expert_v=torch.zeros(q, h, dtype=x.dtype))
    if p.get("combine_kind") == "add_rms_norm":
        ckw.pop("performance_info", None)  # not in that op's schema
        y = be.combine_add_rms_norm(ctx, ex, ids, o["assist_info_for_combine"], o["ep_recv_counts"], ex_scales,
                                    torch.zeros(bs, 1, h, dtype=x.dtype), torch.ones(h, dtype=x.dtype), group_ep, W,
                                    ep_rank, M, **ckw)
        comb = [tuple(t.shape) for t in y]
        y0 = y[2].reshape(bs, h)
    else:
        y0 = be.combine(ctx, ex, ids, o["assist_info_for_combine"], o["ep_recv_counts"], ex_scales, group_ep, W,
                        ep_rank, M, **ckw)
        comb = [tuple(y0.shape)]
    numeric = None
    plain = not any(p.get(n) for n in ("zero_expert_num", "copy_expert_num", "const_expert_num", "x_active_mask",
                                       "quant_mode", "shared_expert_rank_num", "comm_quant_mode"))
    if plain:  # identity experts: combine(dispatch(x)) == x * sum_k scale (x2 with TP=2: the two TP halves add)
        ref = x.float() * ex_scales.sum(1, keepdim=True) * T
        numeric = float((y0.float() - ref).abs().max() / (ref.abs().max() + 1e-6))
    return dict(rank=rank, dispatch=[[list(t.shape), str(t.dtype)] for t in outs], combine=comb, numeric=numeric,
                keywords=sorted(kw), combine_keywords=sorted(ckw))


def run(sid):
    import torch_npu
    from moe_cts.backends.transport import LoopbackWorld
    from moe_cts.model import AclnnError, BindingError

    base, mutant, _ = SCENARIOS[sid]
    p = dict(BASE, **base)
    n = p["ep_world_size"] * (2 if p.get("tp_world_size") == 2 else 1)
    torch_npu._standin_reset()
    import os
    force = os.environ.get("MOE_CTS_CONTRACT_SIM_CHECK")  # "1"/"0": every scenario with/without sim's checks
    check = (SCENARIOS[sid][2] != "ok" and mutant is None) if force is None else force == "1"
    torch_npu._standin_configure(check=check)
    try:
        ranks = LoopbackWorld(n, timeout_s=30).run(_rank, sid, p, mutant)
        return dict(outcome="ok", ranks=ranks, log=list(torch_npu._standin_log))
    except AclnnError as exc:
        return dict(outcome="aclnn", status=exc.status, api=getattr(exc, "api", None), message=exc.message,
                    cause=type(exc.__cause__).__name__, log=list(torch_npu._standin_log))
    except BindingError as exc:
        return dict(outcome="binding", code=exc.code, message=exc.message, cause=type(exc.__cause__).__name__,
                    log=list(torch_npu._standin_log))
    except Exception as exc:  # noqa: BLE001 - reported as data
        return dict(outcome="raw", type=type(exc).__name__, message=str(exc)[:2000],
                    traceback=traceback.format_exc()[-3000:])


def main(argv):
    import os
    if os.environ.get("MOE_CTS_NPU_STANDIN") != "1":
        raise SystemExit("contract_driver: set MOE_CTS_NPU_STANDIN=1 and put tests/standin first on PYTHONPATH")
    import torch_npu
    if not getattr(torch_npu, "_MOE_CTS_STANDIN", False):
        raise SystemExit(f"contract_driver: imported a real torch_npu ({torch_npu.__file__}), refusing")
    if argv[:1] == ["--suite"]:  # --suite MAX_WORLD MAX_H LIMIT [PRODUCTS,...]
        mw, mh, lim = (int(v) for v in (argv[1:4] + ["4", "2048", "1000"][len(argv[1:4]):]))
        prods = tuple(argv[4].split(",")) if len(argv) > 4 else ("A2", "A3")
        print(json.dumps({"suite": run_suite(mw, mh, lim, prods)}, default=str))
        return
    extra = {}
    from moe_cts.backends.npu import npu_available, NpuBackend
    from moe_cts.backends.base import RankContext
    extra["npu_available"] = list(npu_available())
    be = NpuBackend()
    be.prepare_rank(RankContext(rank=3, world_size=4, device="npu:3", ep_group="ep0"))
    extra["current_device_after_prepare"] = torch_npu.npu.current_device()
    extra["task_queue_enable"] = os.environ.get("TASK_QUEUE_ENABLE")
    extra["ops"] = sorted(torch_npu.SCHEMAS)
    from moe_cts.backends import npu as npu_mod
    from moe_cts import binding
    extra["positional"] = {  # what the backend passes positionally vs the dispatcher's non-keyword-only arguments
        op: [[a.name for a in torch_npu._SCHEMA_OBJ[op].arguments if not a.kwarg_only], list(binding.positional(op))]
        for op in binding.OPS}
    ids = argv or list(SCENARIOS)
    res = {sid: run(sid) for sid in ids}
    print(json.dumps({"scenarios": res, "extra": extra}))



# =========================================================================== the suite's own cases
def _suite_rank(rank, tr, case_dict, use_npu):
    import torch_npu
    from moe_cts.backends.base import RankContext
    from moe_cts.backends.npu import NpuBackend
    from moe_cts.backends.sim import SimBackend
    from moe_cts.cases import Case
    from moe_cts.suite.rank import run_case_on_rank

    p = Case.from_dict(case_dict).params
    W, T = p.ep_world_size, p.tp
    groups = {}
    for t in range(T):
        ranks = [e * T + t for e in range(W)]
        hnd = tr.new_group(ranks)
        if rank in ranks:
            groups[f"ep{t}"] = torch_npu._standin_group(hnd, ranks, "ep") if use_npu else hnd
    if T > 1:
        for e in range(W):
            ranks = [e * T + t for t in range(T)]
            hnd = tr.new_group(ranks)
            if rank in ranks:
                groups[f"tp{e}"] = torch_npu._standin_group(hnd, ranks, "tp") if use_npu else hnd
    ctx = RankContext(rank=rank, world_size=W * T, device="cpu", ep_group=f"ep{rank % T}",
                      tp_group=f"tp{rank // T}" if T > 1 else "", groups=groups, env={"HCCL_BUFFSIZE": "200"},
                      product=p.product, transport=tr)
    torch_npu._standin_set_context(ctx)
    backend = NpuBackend() if use_npu else SimBackend()
    return run_case_on_rank(ctx, backend, {"case": case_dict})


def _outcome_of(fn):
    from moe_cts.model import AclnnError, BindingError
    try:
        return ("ok", fn())
    except AclnnError as exc:
        return ("aclnn", exc.status)
    except BindingError as exc:
        return ("binding", exc.code)
    except Exception as exc:  # noqa: BLE001
        return ("raw", f"{type(exc).__name__}: {str(exc)[:300]}")


def _same_results(a, b, path="") -> str | None:
    import numpy as np
    if isinstance(a, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            if k == "timings":
                continue
            d = _same_results(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _same_results(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        return None if np.array_equal(a.view(np.uint8), b.view(np.uint8)) else f"{path}: values differ"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


_ROW_DEFINED = ("expand_x", "dynamic_scales", "expand_scales")  # rows past the valid count are undefined
_EXACT = ("expert_token_nums", "ep_recv_counts", "tp_recv_counts")


def _same_case_results(a_ranks, b_ranks) -> str | None:
    """Per rank: the defined part of every dispatch output (assist_info's padding is undefined and skipped),
    and every combine output, bit for bit."""
    for r, (a, b) in enumerate(zip(a_ranks, b_ranks)):
        valid = a.get("expert_out_rows")
        if valid != b.get("expert_out_rows"):
            return f"rank {r}: valid rows {valid} vs {b.get('expert_out_rows')}"
        for i, (ra, rb) in enumerate(zip(a["runs"], b["runs"])):
            da, db = ra["dispatch"], rb["dispatch"]
            for name in _EXACT:
                d = _same_results(da[name], db[name], f"rank {r} run {i} {name}")
                if d:
                    return d
            for name in _ROW_DEFINED:
                n = valid if valid is not None else len(da[name])
                x, y = da[name], db[name]
                if x.shape != y.shape or x.dtype != y.dtype:
                    return f"rank {r} {name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
                d = _same_results(x[:n], y[:n], f"rank {r} run {i} {name}[:{n}]")
                if d:
                    return d
        d = _same_results(a.get("combine"), b.get("combine"), f"rank {r} combine")
        if d:
            return d
    return None


def run_suite(max_world: int, max_h: int, limit: int, products: tuple[str, ...] = ("A2", "A3")):
    """Each small A3 case of the suite's generator, run by the suite's own runner twice: on sim directly,
    and on NpuBackend -> stand-in torch_npu (real schema) -> sim. Results and errors must agree."""
    import torch_npu
    from moe_cts.backends.transport import LoopbackWorld
    from moe_cts.binding import unreachable
    from moe_cts.cases import generate

    cases = [c for c in generate() if c.params.world_size <= max_world and c.params.h <= max_h
             and c.params.product in products][:limit]
    out = {}
    torch_npu._standin_configure()  # sim with its parameter checks, as the suite runs it
    for c in cases:
        d = c.to_dict()
        n = c.params.world_size
        torch_npu._standin_reset()
        sim = _outcome_of(lambda: LoopbackWorld(n, timeout_s=30).run(_suite_rank, d, False))
        npu = _outcome_of(lambda: LoopbackWorld(n, timeout_s=30).run(_suite_rank, d, True))
        diff = None
        if sim[0] != npu[0]:
            diff = f"sim {sim[0]} {sim[1] if sim[0] != 'ok' else ''} vs npu {npu[0]} {npu[1] if npu[0] != 'ok' else ''}"
        elif sim[0] == "ok":
            diff = _same_case_results(sim[1], npu[1])
        elif sim[0] == "aclnn" and sim[1] != npu[1]:
            diff = f"status {sim[1]} vs {npu[1]}"
        out[c.id] = dict(legal=c.legal, sim=sim[0] if sim[0] == "ok" else list(sim),
                         npu=npu[0] if npu[0] == "ok" else list(npu), diff=diff,
                         unreachable=unreachable(c.overrides_dict()),
                         log=list(torch_npu._standin_log))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
