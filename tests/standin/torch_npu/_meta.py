"""Output allocation and binding-level checks of the stand-in: moe_cts.binding, adapted to the bound arguments.

The stand-in allocates and checks exactly what moe_cts.binding says torch_npu does, so the npu backend meets
the same surface the rest of the suite models (tests/test_binding.py pins moe_cts.binding to values read off
the real meta functions).
"""
from __future__ import annotations

import torch

from moe_cts import binding


class BindingCheckFailed(Exception):
    """A check the binding makes before any aclnn call (RuntimeError ... ERR01001 on real torch_npu)."""


def _dt(t) -> str | None:
    return None if t is None else str(t.dtype).replace("torch.", "")


def _fail_if(why: str | None) -> None:
    if why:
        raise BindingCheckFailed(why)


def dispatch_checks(a: dict) -> None:
    _fail_if(binding.dispatch_rejection(a["x"].dim(), a["expert_ids"].dim(), a["ep_world_size"], a["ep_rank_id"],
                                        a["shared_expert_num"], a["shared_expert_rank_num"],
                                        a["expert_token_nums_type"]))


def combine_checks(a: dict) -> None:
    _fail_if(binding.combine_rejection(_dt(a["expand_x"]), _dt(a["expert_ids"]), a["ep_world_size"], a["ep_rank_id"],
                                       a["shared_expert_num"], a["shared_expert_rank_num"]))


def _torch(outs):
    return [(tuple(shape), getattr(torch, dt)) for shape, dt in outs]


def dispatch_outputs(a: dict):
    x, ids, scales = a["x"], a["expert_ids"], a["scales"]
    return _torch(binding.dispatch_outputs(
        tuple(x.shape), _dt(x), ids.shape[1], a["ep_world_size"], a["ep_rank_id"], a["moe_expert_num"],
        scales_shape=None if scales is None else tuple(scales.shape), expert_scales=a["expert_scales"] is not None,
        elastic_info=a["elastic_info"] is not None, tp_world_size=a["tp_world_size"],
        expert_shard_type=a["expert_shard_type"], shared_expert_num=a["shared_expert_num"],
        shared_expert_rank_num=a["shared_expert_rank_num"], quant_mode=a["quant_mode"], global_bs=a["global_bs"],
        y_dtype=a["y_dtype"]))


def combine_outputs(op: str, a: dict):
    return _torch(binding.combine_outputs(op, a["expert_ids"].shape[0], a["expand_x"].shape[1], _dt(a["expand_x"])))


def dtype_violation(op: str, a: dict) -> str | None:
    return binding.dtype_violation(op, {k: _dt(v) for k, v in a.items() if isinstance(v, torch.Tensor)})
