"""Self-tests of moe_cts.cases.inputs: determinism, shapes, routing patterns, tags (also through int8)."""
from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np
import pytest

from moe_cts.cases.inputs import ROUTINGS, decode_tag, decode_tag_quant, rank_inputs, scales_tensor, x_rows
from moe_cts.model import OpParams
from moe_cts.oracle.reference.quant import dynamic_quant

BASE = OpParams(product="A3", ep_world_size=4, moe_expert_num=6, bs=40, h=32, k=3, shared_expert_rank_num=1,
                zero_expert_num=1, copy_expert_num=1, const_expert_num=2)


def _digest(d: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(d):
        v = d[k]
        h.update(k.encode())
        if v is not None:
            a = np.ascontiguousarray(v)
            h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


def test_deterministic_and_rank_local():
    p = BASE.replace(x_active_mask="2d", scales=True, shared_expert_x=True, combine_kind="add_rms_norm")
    a = rank_inputs(p, 7, 2, "hot_expert")
    b = rank_inputs(p, 7, 2, "hot_expert")
    assert _digest(a) == _digest(b)
    assert _digest(rank_inputs(p, 8, 2, "hot_expert")) != _digest(a)
    assert _digest(rank_inputs(p, 7, 3, "hot_expert")) != _digest(a)


def test_pinned_values():
    """Frozen digests: a change here means every stored golden changes (numpy upgrade, generator edit)."""
    p = BASE.replace(x_active_mask="2d", scales=True)
    got = {r: _digest(rank_inputs(p, 1, 1, r)) for r in ROUTINGS}
    assert got == PINNED, got


PINNED = {"uniform": "5def03ed304360b0", "hot_expert": "30e61b5e5a090fd4", "empty_ranks": "2ba9e591ce5bf240",
          "special_heavy": "71503f0282e98087", "shared_only": "5666b625992dc242"}


def test_keys_shapes_dtypes():
    for xd, npd in (("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)):
        for cal in ("scalar", "vector"):
            p = BASE.replace(x_dtype=xd, scales=True, x_active_mask="1d", shared_expert_x=True,
                             combine_kind="add_rms_norm", const_alpha=cal, bs_per_rank=(40, 3, 17, 40))
            d = rank_inputs(p, 3, 2)
            bs = 17
            assert d["x"].dtype == npd and d["x"].shape == (bs, 32)
            assert d["expert_ids"].dtype == np.int32 and d["expert_ids"].shape == (bs, 3)
            assert d["scales"].dtype == np.float32 and d["scales"].shape == (1 + 6, 32)
            assert d["x_active_mask"].shape == (bs,) and d["x_active_mask"].all()  # uneven Bs: all active
            assert d["expert_scales"].dtype == np.float32 and d["expert_scales"].shape == (bs, 3)
            assert d["shared_expert_x"].shape == (bs, 32) and d["shared_expert_x"].dtype == npd
            assert d["ori_x"] is d["x"]
            qshape = (2,) if cal == "scalar" else (2, 32)
            assert d["const_expert_alpha_1"].shape == qshape and d["const_expert_alpha_2"].shape == qshape
            assert d["const_expert_v"].shape == (2, 32)
            assert d["residual_x"].shape == (bs, 1, 32) and d["gamma"].shape == (32,)
    p = BASE.replace(shared_expert_rank_num=0, zero_expert_num=0, copy_expert_num=0, const_expert_num=0, scales=True)
    d = rank_inputs(p, 3, 0)
    assert d["scales"].shape == (6, 32)  # SE normalised to 0 when S == 0
    assert d["ori_x"] is None and d["const_expert_v"] is None and d["x_active_mask"] is None
    assert d["residual_x"] is None and d["shared_expert_x"] is None


@pytest.mark.parametrize("routing", ROUTINGS)
def test_expert_ids_valid(routing):
    for p in (BASE, BASE.replace(zero_expert_num=0, copy_expert_num=0, const_expert_num=0), BASE.replace(k=6)):
        N = p.moe_expert_num + p.special_expert_num
        for g in range(p.world_size):
            ids = rank_inputs(p, 11, g, routing)["expert_ids"]
            assert ids.min() >= 0 and ids.max() < N
            assert all(len(set(r)) == len(r) for r in ids.tolist())
            if p.special_expert_num == 0:
                assert ids.max() < p.moe_expert_num


def test_routing_patterns():
    p = BASE.replace(ep_world_size=5, moe_expert_num=8, bs=64, k=2)  # 4 MoE ranks, L=2
    M = p.moe_expert_num
    ids = np.concatenate([rank_inputs(p, 5, g, "empty_ranks")["expert_ids"] for g in range(5)])
    moe_ranks = set((ids[ids < M] // 2).tolist())
    assert len(moe_ranks) < 4  # some MoE ranks receive nothing
    ids = np.concatenate([rank_inputs(p, 5, g, "shared_only")["expert_ids"] for g in range(5)])
    assert (ids >= M).all()
    ids = np.concatenate([rank_inputs(p, 5, g, "special_heavy")["expert_ids"] for g in range(5)])
    assert (ids >= M).mean() >= 0.5
    ids = np.concatenate([rank_inputs(p, 5, g, "hot_expert")["expert_ids"] for g in range(5)])
    counts = np.bincount(ids.reshape(-1), minlength=M + 4)
    assert counts.max() >= 0.6 * len(ids)
    with pytest.raises(ValueError):
        rank_inputs(p, 5, 0, "nope")


def test_masks():
    p = BASE.replace(bs=64, x_active_mask="2d")
    m = np.stack([rank_inputs(p, 2, g)["x_active_mask"] for g in range(4)])
    assert m.dtype == bool and m.shape == (4, 64, 3)
    dead = ~m.any(-1)
    assert 0 < dead.mean() < 0.5
    p = BASE.replace(bs=16, x_active_mask="1d")
    for g in range(4):
        for seed in range(6):
            mm = rank_inputs(p, seed, g)["x_active_mask"]
            c = int(mm.sum())
            assert mm[:c].all() and not mm[c:].any()  # prefix


@pytest.mark.parametrize("xd", ["bfloat16", "float16"])
def test_tags_exact_and_rows_nonzero(xd):
    p = BASE.replace(x_dtype=xd, bs=300, h=16)
    for g in (0, 3, 130):
        x = x_rows(p, 4, g, np.arange(300))
        assert (np.abs(x.astype(np.float32)).max(axis=1) > 0).all()
        assert np.abs(x.astype(np.float32)).max() <= 100
        for t in (0, 1, 63, 64, 299):
            assert decode_tag(x[t]) == (g, t)
    d = rank_inputs(p.replace(ep_world_size=200, moe_expert_num=199, shared_expert_rank_num=1), 4, 130)
    assert decode_tag(d["x"][299]) == (130, 299)


@pytest.mark.parametrize("xd", ["bfloat16", "float16"])
def test_tags_survive_int8(xd):
    p = BASE.replace(x_dtype=xd, bs=256, h=64, scales=True)
    sc = scales_tensor(p, 9)
    assert (sc[:, :4] == 1).all() and sc.min() >= 0.5 and sc.max() <= 1.2
    x = x_rows(p, 9, 77, np.arange(256)).astype(np.float32)
    for row in (0, 3, 6):
        xf = (x * sc[row]).astype(np.float32)
        q, s = dynamic_quant(xf)
        for t in range(256):
            assert decode_tag_quant(q[t], s[t]) == (77, t)
        # varied magnitudes: quantisation actually rounds
        assert np.abs(np.rint(xf * (127 / np.abs(xf).max(1, keepdims=True))) - xf * (127 / np.abs(xf).max(1, keepdims=True))).max() > 0.4


def test_decode_tag_refuses_rows_that_are_not_payload_rows():
    import pytest as _pytest

    from moe_cts.cases.inputs import decode_tag

    with _pytest.raises(ValueError, match="not a payload row"):
        decode_tag(np.zeros(16, np.float32))  # a zeroed row must not read as (rank 0, token 0)
