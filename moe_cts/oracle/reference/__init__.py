"""numpy golden model of aclnnMoeDistributeDispatchV4 / CombineV4 (+ CombineAddRmsNormV2).

numpy + ml_dtypes only: no torch, no backends. See docs/reference.md for what is modelled, and
moe_cts/oracle/reference/dispatch.py, combine.py for the exact formulas (kernel-behaviour.md §1-§4).

Variants: ``"doc"`` follows the operator document where it and the shipped kernel differ; ``"kernel"``
follows the kernel. Differences modelled:
* shared-expert rank A (rows of expand_x, ...): doc ``Bs*W*SE/S``; kernel/torch_npu ``maxBs*ceil(W/rpse)``.
Everything else is identical in both, because the documents agree or the doc is silent (then the
kernel's behaviour is used): e.g. shared rows are added unweighted in combine, a 1-D mask is read as a
count, const alphas follow the shape of the tensors given (params.const_alpha).

Output dicts carry two extra ints: ``valid_rows`` (defined rows of expand_x / dynamic_scales /
expand_scales) and ``valid_assist`` (defined leading entries of assist_info_for_combine: 3*own rows on
A3 — TP peers' rows have no triples — or Bs*K sender-side slots on A2).
"""
from __future__ import annotations

import numpy as np

from moe_cts.model import OpParams
from moe_cts.oracle.reference.combine import positions, returned_rows, token_outputs
from moe_cts.oracle.reference.dispatch import Group, group_from_inputs, group_from_seed, rank_outputs
from moe_cts.oracle.reference.geometry import VARIANTS, geo

__all__ = ["dispatch", "dispatch_rank", "combine", "VARIANTS"]


def _groups(g, inputs):
    return {t: group_from_inputs(g, inputs, t) for t in range(g.T)}


def _plans(g, groups):
    for grp in groups.values():
        grp.sorted_entries()  # one stable sort serves every destination
    return {(t, d): groups[t].plan(d) for t in groups for d in range(g.W)}


def dispatch(params: OpParams, inputs: list[dict], *, variant: str = "doc") -> list[dict]:
    """Every global rank's 7 dispatch outputs (+ valid_rows, valid_assist); inputs[g] = rank g's inputs."""
    g = geo(params, variant)
    groups = _groups(g, inputs)
    plans = _plans(g, groups)
    return [rank_outputs(g, groups, r, plans) for r in range(params.world_size)]


_GROUP_CACHE: dict = {}


def _seed_group(g, seed, t, routing):
    """Routing of an EP group (ids, masks: small) cached for the last case, so the goldens of several
    ranks of one case share it; x rows are never cached."""
    key = (g.p, g.variant, int(seed), t, routing)
    grp = _GROUP_CACHE.get(key)
    if grp is None:
        if len(_GROUP_CACHE) >= 2:
            _GROUP_CACHE.clear()
        grp = _GROUP_CACHE[key] = group_from_seed(g, seed, t, routing)
    return grp


def dispatch_rank(params: OpParams, seed: int, rank: int, routing: str = "uniform", *, variant: str = "doc") -> dict:
    """One global rank's dispatch outputs from the seed; only the x rows that reach it are generated.

    Every source's expert_ids / mask of the rank's EP group(s) are generated (cheap, cached for the
    last case); x rows only for the tokens that reach this rank.
    """
    g = geo(params, variant)
    t = rank % g.T
    ts = [t, 1 - t] if g.merge else [t]
    groups = {u: _seed_group(g, seed, u, routing) for u in ts}
    return rank_outputs(g, groups, rank)


def combine(params: OpParams, inputs: list[dict], expert_out: list[np.ndarray], *, variant: str = "doc") -> list[dict]:
    """Every global rank's combine result: {"x", "active"} (+ "y", "rstd" for add_rms_norm).

    expert_out[g] has the row layout of rank g's expand_x (x dtype): what its experts returned.
    """
    g = geo(params, variant)
    groups = _groups(g, inputs)
    plans = _plans(g, groups)
    ret = returned_rows(g, groups, plans, expert_out)
    res = [None] * params.world_size
    bufs: dict = {}
    for t, grp in groups.items():
        pos = positions(g, grp, plans)
        for s in range(g.W):
            r = s * g.T + t
            res[r] = token_outputs(g, grp, s, inputs[r], ret, pos, bufs)
    return res
