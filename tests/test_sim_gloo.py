"""The sim backend over real torch.distributed (gloo, fork-started processes, FileStore, deadlines)."""
from __future__ import annotations

import torch

from moe_cts.backends.sim import SimBackend
from moe_cts.backends.sim_world import make_context, run_dist

BF = torch.bfloat16


def _ring(rank, tr):
    """Same routing as test_sim_dispatch.test_ring_w4_rows_triples_counts, over gloo."""
    ctx = make_context(tr, 4)
    sim = SimBackend(check=False)
    W, bs, K, M, H = 4, 3, 2, 4, 8
    x = (16.0 * rank + torch.arange(bs, dtype=torch.float32))[:, None].expand(bs, H).to(BF).contiguous()
    ids = torch.tensor([[(rank + b) % M, (rank + b + 1) % M] for b in range(bs)], dtype=torch.int32)
    out = sim.dispatch(ctx, x, ids, ctx.ep_group, W, rank, M, quant_mode=2)
    out0 = sim.dispatch(ctx, x, ids, ctx.ep_group, W, rank, M)
    y = sim.combine(ctx, out0[0], ids, out0[2], out0[4], torch.full((bs, K), 0.5), ctx.ep_group, W, rank, M)
    return out[2][:18].tolist(), out[4].tolist(), out[0][:6, 0].tolist(), out0[0][:6, 0].float().tolist(), \
        torch.equal(y, x)


def test_gloo_w4_ring(tmp_path):
    res = run_dist(4, _ring, store_dir=str(tmp_path), deadline_s=40)
    tri0, epc0, q0, v0, ok0 = res[0]
    assert [tuple(tri0[i:i + 3]) for i in range(0, 18, 3)] == [
        (0, 0, 0), (1, 2, 1), (2, 1, 1), (2, 2, 0), (3, 0, 1), (3, 1, 0)]
    assert epc0 == [1, 2, 4, 6]
    assert v0 == [0, 18, 33, 34, 48, 49]
    assert q0 == [0] + [127] * 5  # constant rows quantise to 127; the all-zero row (amax 0) gives 0 here
    assert all(r[4] for r in res)


def _tp(rank, tr):
    ctx = make_context(tr, 2, 2)
    sim = SimBackend(check=False)
    ids = torch.tensor([[0], [0]] if rank == 3 else [[(rank + b) % 2] for b in range(2)], dtype=torch.int32)
    x = (16.0 * rank + torch.arange(2, dtype=torch.float32))[:, None].expand(2, 4).to(BF).contiguous()
    kw = dict(group_tp=ctx.tp_group, tp_world_size=2, tp_rank_id=rank % 2)
    out = sim.dispatch(ctx, x, ids, ctx.ep_group, 2, rank // 2, 2, **kw)
    y = sim.combine(ctx, out[0], ids, out[2], out[4], torch.ones(2, 1), ctx.ep_group, 2, rank // 2, 2,
                    tp_send_counts=out[5], **kw)
    return out[0][:5, 0].float().tolist(), out[5].tolist(), torch.equal(y, (2 * x.float()).to(BF))


def test_gloo_tp2(tmp_path):
    res = run_dist(4, _tp, store_dir=str(tmp_path), deadline_s=40)
    assert res[0][:2] == ([0, 32, 17, 48, 49], [2, 3])
    assert res[1][:2] == ([17, 48, 49, 0, 32], [2, 3])
    assert all(r[2] for r in res)
