"""The spec as data: constraint rows per profile, the checker, derived quantities and waivers.

    from moe_cts.spec import load_profile, load_waivers, Constraint, Violation, Waiver
    prof = load_profile("v4-doc"); prof.check_params(params)

See docs/spec.md for the row schema, the expression namespace, the decisions and the waiver list.
"""
from __future__ import annotations

from moe_cts.model import OpParams, TensorDesc
from moe_cts.spec.derived import (
    a_rows,
    input_descs,
    local_expert_num,
    max_bs,
    moe_local_expert_num,
    normalised_shared_expert_num,
    output_descs,
    rpse,
    server_num,
)
from moe_cts.spec.profile import (
    DEFAULT_PROFILE,
    Constraint,
    Profile,
    Violation,
    call_namespace,
    effective_alg,
    known_profiles,
    load_profile,
    make_call_desc,
    make_combine_call_desc,
)
from moe_cts.spec.waivers import Waiver, load_waivers, waiver_for


def hccl_buffsize_min_mb(params: OpParams, domain: str = "ep", *, profile: str = DEFAULT_PROFILE,
                         env: dict | None = None) -> int:
    """Minimum HCCL_BUFFSIZE (MB, rounded up) for `domain` ("ep" | "tp"), per product and comm_alg; 0 if no rule applies."""
    return load_profile(profile).hccl_buffsize_min_mb(params, domain, env=env)


__all__ = [
    "Constraint", "Profile", "Violation", "Waiver", "load_profile", "load_waivers", "waiver_for", "known_profiles",
    "local_expert_num", "moe_local_expert_num", "a_rows", "normalised_shared_expert_num", "rpse", "max_bs",
    "server_num", "output_descs", "input_descs", "hccl_buffsize_min_mb", "make_call_desc", "make_combine_call_desc", "call_namespace",
    "effective_alg", "DEFAULT_PROFILE", "OpParams", "TensorDesc",
]
