"""Illegal parameters: every rank raises AclnnError with the documented status, before any communication.

The base call is legal on A3 (W=2, M=2, bs=2, K=1, H=1024); each case breaks one thing.
"""
from __future__ import annotations

import time

import pytest
import torch

from moe_cts.backends.sim import SimBackend
from moe_cts.backends.sim_world import run_dist, run_loopback
from moe_cts.model import AclnnError, BindingError

BF = torch.bfloat16
H = 1024


def _legal(r):
    x = torch.ones(2, H, dtype=BF)
    ids = torch.tensor([[r], [1 - r]], dtype=torch.int32)
    return x, ids


def _try_dispatch(ctx, change):
    sim = SimBackend()  # checks on, profile v4-doc
    r = ctx.rank
    x, ids = _legal(r)
    kw = {"group_ep": ctx.ep_group}
    kw.update(change)
    if "x_dtype_" in kw:
        x = x.to(kw.pop("x_dtype_"))
    if "H_" in kw:
        x = torch.ones(2, kw.pop("H_"), dtype=BF)
    group = kw.pop("group_ep")
    try:
        out = sim.dispatch(ctx, x, ids, group, 2, r, 2, **kw)
    except AclnnError as exc:
        return ("aclnn", exc.status, exc.constraint)
    except BindingError as exc:
        return ("binding", exc.code, None)
    return ("ok", tuple(out[0].shape), None)


ILLEGAL = [
    ({"group_ep": ""}, 161001),
    ({"group_ep": "g" * 200}, 161001),  # dispatch: >= 128 chars is 161001 (combine says 161002)
    ({"x_dtype_": torch.float32}, 161002),
    ({"quant_mode": 1}, 561002),
    ({"H_": 64}, 561002),
    ({"scales": torch.ones(2, H)}, 561002),  # scales with quant_mode 0
    ({"expert_token_nums_type": 0, "expert_shard_type": 1}, 561002),
]


@pytest.mark.parametrize("change,status", ILLEGAL, ids=[f"{s}-{i}" for i, (_, s) in enumerate(ILLEGAL)])
def test_illegal_dispatch_loopback_every_rank(change, status):
    t0 = time.monotonic()
    res = run_loopback(2, _try_dispatch, change, timeout_s=10)
    assert time.monotonic() - t0 < 5
    assert [r[0] for r in res] == ["aclnn", "aclnn"], res
    assert [r[1] for r in res] == [status, status], res
    assert res[0][2] == res[1][2] and res[0][2]  # the same constraint names the failure on both ranks


def test_legal_base_passes_checks():
    res = run_loopback(2, _try_dispatch, {})
    assert res == [("ok", (4, H), None)] * 2


def test_binding_rejects_bad_rank():
    def fn(ctx):
        x, ids = _legal(ctx.rank)
        with pytest.raises(BindingError):
            SimBackend().dispatch(ctx, x, ids, ctx.ep_group, 2, 2, 2)
        return True
    assert run_loopback(2, fn) == [True, True]


def _try_combine(ctx, change):
    sim = SimBackend()
    r = ctx.rank
    x, ids = _legal(r)
    out = sim.dispatch(ctx, x, ids, ctx.ep_group, 2, r, 2)
    kw = dict(change)
    group = kw.pop("group_ep", ctx.ep_group)
    try:
        sim.combine(ctx, out[0], ids, out[2], out[4], torch.ones(2, 1), group, 2, r, 2, **kw)
    except AclnnError as exc:
        return exc.status
    return "ok"


@pytest.mark.parametrize("change,status", [
    ({}, "ok"),
    ({"group_ep": ""}, 161001),
    ({"group_ep": "g" * 200}, 161002),
    ({"comm_quant_mode": 1}, 561002),
    ({"copy_expert_num": 1}, 561002),  # ori_x required
])
def test_illegal_combine(change, status):
    assert run_loopback(2, _try_combine, change, timeout_s=10) == [status, status]


def test_unknown_group_name_fails_alike():
    def fn(ctx):
        x, ids = _legal(ctx.rank)
        try:
            SimBackend().dispatch(ctx, x, ids, "no-such-group", 2, ctx.rank, 2)
        except AclnnError as exc:
            return exc.status
    assert run_loopback(2, fn, timeout_s=10) == [561000, 561000]


def _gloo_illegal(rank, tr):
    from moe_cts.backends.sim_world import make_context

    ctx = make_context(tr, 4)
    x = torch.ones(2, H, dtype=BF)
    ids = torch.tensor([[rank], [(rank + 1) % 4]], dtype=torch.int32)
    sim = SimBackend()
    out = sim.dispatch(ctx, x, ids, ctx.ep_group, 4, rank, 4)  # legal call first: the world works
    try:
        sim.dispatch(ctx, x, ids, "", 4, rank, 4)
    except AclnnError as exc:
        return out[4].tolist(), exc.status
    return out[4].tolist(), None


def test_illegal_on_gloo_every_rank_no_hang(tmp_path):
    t0 = time.monotonic()
    res = run_dist(4, _gloo_illegal, store_dir=str(tmp_path), deadline_s=40)
    assert time.monotonic() - t0 < 40
    assert [r[1] for r in res] == [161001] * 4
    assert all(r[0][-1] == 2 for r in res)  # each expert got 2 rows in the legal call


# ------------------------------------------------------------------ ranks that disagree (undefined by the doc)
def _mismatch(ctx, tp):
    from moe_cts.backends.sim import SimWorldMismatch

    g = ctx.rank
    T = 2 if tp else 1
    e = g // T
    M = 4 if g == 2 else 2  # global rank 2 alone disagrees
    x = torch.ones(2, 8, dtype=BF)
    ids = torch.tensor([[e], [1 - e]], dtype=torch.int32)
    kw = dict(group_tp=ctx.tp_group, tp_world_size=2, tp_rank_id=g % 2) if tp else {}
    try:
        SimBackend(check=False).dispatch(ctx, x, ids, ctx.ep_group, 2 if tp else 4, e, M, **kw)
    except SimWorldMismatch:
        return "mismatch"
    return "ok"


@pytest.mark.parametrize("tp", [False, True])
def test_disagreeing_ranks_all_raise(tp):
    t0 = time.monotonic()
    res = run_loopback(2 if tp else 4, _mismatch, tp, tp_world_size=2 if tp else 0, timeout_s=10)
    assert res == ["mismatch"] * 4 and time.monotonic() - t0 < 5


def test_disagreeing_ranks_all_raise_on_gloo(tmp_path):
    from moe_cts.backends.sim_world import make_context

    def fn(rank, tr):
        return _mismatch(make_context(tr, 4), False)

    assert run_dist(4, fn, store_dir=str(tmp_path), deadline_s=40) == ["mismatch"] * 4
