"""sim allocates outputs exactly as torch_npu's meta function does (torch-npu-api.md §1b, measured examples)."""
from __future__ import annotations

import torch

from moe_cts.backends.sim import dispatch_meta

BF = torch.bfloat16


def _fmt(meta):
    return [(tuple(s), d) for s, d in meta]


def test_meta_examples_from_the_wheel():
    # bs=8, h=7168, k=8, E=16, W=4, every rank
    common = [((16384,), torch.int32), ((4,), torch.int64), ((16,), torch.int32), ((0,), torch.int32),
              ((0,), torch.float32)]
    m0 = dispatch_meta((8, 7168), BF, 8, 4, 1, 16)
    assert _fmt(m0) == [((128, 7168), BF), ((128,), torch.float32)] + common
    m2 = dispatch_meta((8, 7168), BF, 8, 4, 1, 16, quant_mode=2)
    assert _fmt(m2) == [((128, 7168), torch.int8), ((128,), torch.float32)] + common
    ms = dispatch_meta((8, 7168), BF, 8, 4, 0, 16, shared_expert_num=1, shared_expert_rank_num=1, expert_scales=True)
    assert _fmt(ms) == [((32, 7168), BF), ((32,), torch.float32), ((4096,), torch.int32), ((1,), torch.int64),
                        ((4,), torch.int32), ((0,), torch.int32), ((32,), torch.float32)]
    # expert_shard_type != 0: the meta quirk gives an empty expand_x
    assert dispatch_meta((8, 7168), BF, 8, 4, 1, 16, expert_shard_type=1)[0][0] == (0, 7168)


def test_meta_tp2_and_y_dtype():
    m = dispatch_meta((8, 1024), BF, 1, 4, 1, 4, tp_world_size=2)
    assert m[0][0] == (64, 1024) and m[1][0] == (64,) and m[4][0] == (8,) and m[5][0] == (2,)
    assert dispatch_meta((8, 1024), BF, 1, 4, 1, 4, y_dtype=5)[0][1] == torch.float16
    assert dispatch_meta((8, 1024), BF, 1, 4, 1, 4, quant_mode=0, scales_shape=(4, 1024))[1][0] == (32, 1024)
