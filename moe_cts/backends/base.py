"""The backend protocol: how one rank runs dispatch / combine on whatever the fixture names.

A backend receives exactly the arguments torch_npu's ``npu_moe_distribute_dispatch_v2`` /
``npu_moe_distribute_combine_v2`` / ``npu_moe_distribute_combine_add_rms_norm`` receive (same keyword
names, same tensors), plus the rank's :class:`RankContext`. It returns the same outputs in the same
order, or raises :class:`moe_cts.model.AclnnError` (status 161001 / 161002 / 561002 ...) or
:class:`moe_cts.model.BindingError`.

Loading: ``load_backend("sim")`` / ``load_backend("npu")`` for the built-ins, or
``load_backend("package.module:factory")`` for anything else (a vendor's kernel, a mutant); the
factory is called with the keyword options from the fixture (``backend_options``) and returns a
Backend.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

BUILTIN = {
    "sim": "moe_cts.backends.sim:SimBackend",
    "npu": "moe_cts.backends.npu:NpuBackend",
}


@dataclass
class RankContext:
    """What a rank knows about itself and its world for one case.

    ``groups`` maps a group name (what is passed as ``group_ep`` / ``group_tp``) to the handle the
    backend's transport understands (a torch.distributed ProcessGroup for sim over gloo/nccl, a
    loopback group for the in-process transport; the npu backend resolves HCCL names itself).
    ``ep_group`` / ``tp_group`` are the names of this rank's EP and TP groups for the current case.
    """

    rank: int  # global rank
    world_size: int
    device: str  # "cpu", "cuda:1", "npu:3"
    ep_group: str
    tp_group: str = ""
    groups: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # HCCL_BUFFSIZE etc. as the fixture sets them
    product: str = "A3"
    transport: Any = None  # the communication object of the world (sim)
    profile: str | None = None  # the spec profile of the current case (what sim checks by, unless told otherwise)


@runtime_checkable
class Backend(Protocol):
    name: str

    def dispatch(self, ctx: RankContext, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num, **kw):
        """Returns (expand_x, dynamic_scales, assist_info_for_combine, expert_token_nums,
        ep_recv_counts, tp_recv_counts, expand_scales) as torch tensors."""

    def combine(self, ctx: RankContext, expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                expert_scales, group_ep, ep_world_size, ep_rank_id, moe_expert_num, **kw):
        """Returns x (Bs, H)."""

    def combine_add_rms_norm(self, ctx: RankContext, expand_x, expert_ids, expand_idx, ep_send_counts,
                             expert_scales, residual_x, gamma, group_ep, ep_world_size, ep_rank_id,
                             moe_expert_num, **kw):
        """Returns (y (Bs,1,H), rstd (Bs,1,1), x (Bs,1,H))."""


class BackendLoadError(ValueError):
    pass


def load_backend(spec: str, **options) -> Backend:
    """Resolve ``spec`` ("sim", "npu" or "package.module:factory") to a Backend instance."""
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise BackendLoadError(
            f"unknown backend {spec!r}: expected one of {sorted(BUILTIN)} or 'package.module:factory'")
    modname, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise BackendLoadError(f"backend {spec!r}: cannot import module {modname!r} ({exc})") from None
    try:
        factory = getattr(mod, attr)
    except AttributeError:
        raise BackendLoadError(f"backend {spec!r}: module {modname!r} has no attribute {attr!r}") from None
    backend = factory(**options)
    for meth in ("dispatch", "combine"):
        if not callable(getattr(backend, meth, None)):
            raise BackendLoadError(f"backend {spec!r}: {type(backend).__name__} has no {meth}() method")
    return backend
