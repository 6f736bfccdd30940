"""The reference model's answer for a whole case: every rank's inputs, dispatch outputs and combine outputs.

Recomputed from the case's seed alone (moe_cts.cases.inputs), through the same expert functions the ranks
apply between dispatch and combine (moe_cts.cases.experts).
"""
from __future__ import annotations

from dataclasses import dataclass

from moe_cts.cases import Case
from moe_cts.cases.experts import apply_experts
from moe_cts.cases.inputs import rank_inputs
from moe_cts.oracle import reference


@dataclass
class Oracle:
    inputs: list
    dispatch: list
    combine: list | None


def compute(case: Case) -> Oracle:
    p = case.params
    inputs = [rank_inputs(p, case.seed, g, case.routing) for g in range(p.world_size)]
    disp = reference.dispatch(p, inputs)
    expert_out = [apply_experts(p, g, d["expand_x"], d["dynamic_scales"], d["expert_token_nums"], d["valid_rows"])
                  for g, d in enumerate(disp)]
    return Oracle(inputs, disp, reference.combine(p, inputs, expert_out))
