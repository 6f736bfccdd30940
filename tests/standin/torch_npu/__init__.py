"""A stand-in ``torch_npu`` for the npu backend's contract test (never importable by default).

It binds every call exactly as the real torch_npu does: the ops are defined from the REAL schema strings
of the torch-npu 2.13.0/2.14.0 wheel (moe_cts/binding/torch_npu_schemas.yaml, docs/torch-npu-api.md §1a) with
``torch.library.Library("npu", "DEF")``, and ``torch_npu.npu_moe_distribute_dispatch_v2`` IS
``torch.ops.npu.npu_moe_distribute_dispatch_v2`` (as in torch_npu/utils/custom_ops.py). So torch's
dispatcher enforces names, positional vs keyword-only, types and defaults; output order is the schema's.

Behind the schema, each call

1. binds the received arguments against the schema (every default filled in),
2. makes the binding's own checks (RuntimeError ``... ERR01001 OPS invalid parameter``),
3. checks input dtypes against the GE IR contract (aclnn 161002),
4. maps the HCCL communicator names it receives back to this rank's groups,
5. answers from the sim backend (``moe_cts.backends.sim.SimBackend``, options by
   ``_standin_configure(check=...)``; a shape-only fake when ``MOE_CTS_STANDIN_FAKE=1``), turning its AclnnError into torch_npu's error text
   (``call aclnnMoeDistributeDispatchV4 failed, error code is N``), and
6. returns outputs allocated as moe_cts.binding says the real binding allocates them (``_meta.py``), with sim's values
   copied in; a shape sim disagrees on is logged in ``_standin_log`` (never silently hidden).

Rank context: ``_standin_set_context(ctx)`` (thread-local: loopback worlds run ranks on threads).
Groups: ``_standin_group(handle, ranks, tag)`` gives a fake ProcessGroup whose
``_get_backend(torch.device("npu")).get_hccl_comm_name(global_rank)`` returns ``hccl_<tag>_<ranks>``.
``torch.npu`` (set_device, current_device, device_count, ...) reports devices only with
``MOE_CTS_NPU_STANDIN=1``.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import types
from dataclasses import replace

import torch

from . import _meta

_MOE_CTS_STANDIN = True
__version__ = "2.13.0+moe-cts-standin"

from moe_cts import binding  # noqa: E402 - the schemas, allocation and checks the suite models

# the verbatim schema strings of torch_npu (moe_cts/binding/torch_npu_schemas.yaml)
SCHEMAS = binding.schemas()
ACLNN_API = binding.ACLNN_API  # the kernel the v2 op picks on a current CANN (the highest version present)

_standin_log: list[str] = []  # sim/meta disagreements and other notes for the contract test
_calls: list[tuple[int, str, dict]] = []  # (rank, op, fully bound arguments) of every call, for assertions
_tls = threading.local()
_default_ctx = None
_comm_lock = threading.Lock()
_comms: dict[str, dict] = {}  # hccl comm name -> {"ranks":..., "buffsize":...}


# =========================================================================== torch.npu stand-in
def _register_device():
    if getattr(torch, "npu", None) is not None and getattr(torch.npu, "_MOE_CTS_STANDIN", False):
        return
    try:
        torch.utils.rename_privateuse1_backend("npu")  # what the real torch_npu does
    except RuntimeError:
        pass  # already renamed in this process
    mod = types.ModuleType("torch_npu.npu")
    mod._MOE_CTS_STANDIN = True

    def device_count() -> int:
        if os.environ.get("MOE_CTS_NPU_STANDIN") != "1":
            return 0
        return int(os.environ.get("MOE_CTS_STANDIN_DEVICES", "16"))

    def _index(device) -> int:
        if isinstance(device, int):
            idx = device
        else:
            d = torch.device(device)
            if d.type != "npu":
                raise RuntimeError(f"Invalid device, must be npu device, but got {device!r}")
            idx = d.index if d.index is not None else 0
        if not 0 <= idx < max(device_count(), 1):
            raise RuntimeError(f"Invalid device id {idx}: {device_count()} npu devices")
        return idx

    def set_device(device) -> None:
        _tls.device = _index(device)

    def current_device() -> int:
        return getattr(_tls, "device", 0)

    mod.device_count = device_count
    mod.set_device = set_device
    mod.current_device = current_device
    mod.is_available = lambda: device_count() > 0
    mod.synchronize = lambda device=None: None
    mod._is_in_bad_fork = lambda: False  # torch.manual_seed consults these on a registered device module
    mod.manual_seed_all = lambda seed: None
    mod.manual_seed = lambda seed: None
    sys.modules["torch_npu.npu"] = mod
    torch._register_device_module("npu", mod)
    globals()["npu"] = mod


_register_device()


# =========================================================================== ranks and groups
def _standin_set_context(ctx) -> None:
    """The calling rank's RankContext (thread-local; also the default for threads that set none)."""
    global _default_ctx
    _tls.ctx = ctx
    _default_ctx = ctx


def _standin_context():
    ctx = getattr(_tls, "ctx", None) or _default_ctx
    if ctx is None:
        raise RuntimeError("torch_npu stand-in: no rank context (call torch_npu._standin_set_context(ctx))")
    return ctx


class _FakeHcclBackend:
    def __init__(self, pg: "FakeProcessGroup"):
        self.pg = pg

    def get_hccl_comm_name(self, rankid: int, init_comm: bool = True) -> str:
        # torch_npu's doc: rankid is the GLOBAL rank of the caller; the comm is created on first use
        # (HCCL reads HCCL_BUFFSIZE at that moment).
        if not isinstance(rankid, int) or rankid not in self.pg.ranks:
            raise RuntimeError(f"get_hccl_comm_name: rank {rankid!r} is not a member of group {list(self.pg.ranks)}"
                               " (pass the global rank)\n[ERROR] ERR02001 DIST invalid parameter.")
        name = self.pg.comm_name
        with _comm_lock:
            if name not in _comms:
                _comms[name] = {"ranks": self.pg.ranks, "buffsize": os.environ.get("HCCL_BUFFSIZE"),
                                "handle": self.pg.handle}
        return name


class FakeProcessGroup:
    """Looks like a ProcessGroup made by dist.new_group on hccl, as far as the npu backend uses one."""

    def __init__(self, handle, ranks, tag: str = "g"):
        self.handle = handle
        self.ranks = tuple(int(r) for r in ranks)
        self.comm_name = f"hccl_{tag}_" + "_".join(map(str, self.ranks))

    def _get_backend(self, device):
        if not isinstance(device, torch.device) or device.type != "npu":
            raise RuntimeError(f"No backend type associated with device type {device}")
        return _FakeHcclBackend(self)

    def size(self) -> int:
        return len(self.ranks)

    def __repr__(self):
        return f"FakeProcessGroup({self.comm_name})"


def _standin_group(handle, ranks, tag: str = "g") -> FakeProcessGroup:
    return FakeProcessGroup(handle, ranks, tag)


def _standin_reset() -> None:
    _standin_log.clear()
    _calls.clear()
    with _comm_lock:
        _comms.clear()


# =========================================================================== error texts (torch_npu's format)
def _stamp(ctx) -> str:
    ts = time.strftime("%Y-%m-%d-%H:%M:%S")
    return f"[ERROR] {ts} (PID:{os.getpid()}, Device:{npu.current_device()}, RankID:{getattr(ctx, 'rank', -1)})"


def _aclnn_error(op: str, status: int, msg: str, ctx) -> RuntimeError:
    return RuntimeError(
        f"{op}:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:111 NPU function error: call {ACLNN_API[op]} "
        f"failed, error code is {status}\n{_stamp(ctx)} ERR00100 PTA call acl api failed.\nEZ9999: Inner Error!\n"
        f"{msg}")


def _binding_error(op: str, msg: str, ctx, code: str = "ERR01001") -> RuntimeError:
    return RuntimeError(f"{op}:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:52 {msg}\n{_stamp(ctx)} "
                        f"{code} OPS invalid parameter.")


# =========================================================================== the op implementations
_SCHEMA_OBJ: dict[str, torch._C.FunctionSchema] = {}


def _bind(op: str, args, kwargs) -> dict:
    """The arguments as the kernel sees them: every schema argument by name, defaults filled in."""
    schema = _SCHEMA_OBJ[op]
    out = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(args):  # the dispatcher hands the kernel a prefix positionally
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:  # the dispatcher guarantees this never happens
            raise RuntimeError(f"stand-in bind: no value for {arg.name}")
    return out


_SIM_OPTIONS: dict = {}  # keyword options for SimBackend (e.g. check=False), set by _standin_configure


def _standin_configure(**sim_options) -> None:
    """Options for the SimBackend that answers the calls (applies to calls made after this)."""
    _SIM_OPTIONS.clear()
    _SIM_OPTIONS.update(sim_options)


def _sim_backend():
    if os.environ.get("MOE_CTS_STANDIN_FAKE") == "1":
        return None
    key = tuple(sorted(_SIM_OPTIONS.items()))
    cached = getattr(_tls, "sim", None)
    if cached is None or cached[0] != key:
        try:
            from moe_cts.backends.sim import SimBackend
        except ImportError:
            return None
        cached = _tls.sim = (key, SimBackend(**_SIM_OPTIONS))
    return cached[1]


def _sim_ctx(ctx, a: dict):
    """ctx for sim: groups keyed by the HCCL names torch_npu would get (unknown names stay unknown)."""
    groups = {}
    with _comm_lock:
        for name, info in _comms.items():
            if ctx.rank in info["ranks"]:
                groups[name] = info["handle"]
        ep = _comms.get(a["group_ep"])
    env = dict(ctx.env or {})
    if ep is not None and ep["buffsize"] is not None:
        env["HCCL_BUFFSIZE"] = ep["buffsize"]  # the buffer the communicator was really created with
    elif ep is not None:
        env.pop("HCCL_BUFFSIZE", None)  # created without one: HCCL's default
    return replace(ctx, groups=groups, ep_group=a["group_ep"], tp_group=a.get("group_tp", ""), env=env,
                   device="cpu")


def _conform(op: str, outs, want, ctx):
    """Outputs allocated as the real binding allocates them; sim's values copied in."""
    res = []
    for i, (t, (shape, dt)) in enumerate(zip(outs, want)):
        if tuple(t.shape) == tuple(shape) and t.dtype == dt:
            res.append(t)
            continue
        _standin_log.append(f"rank {ctx.rank} {op} output {i}: sim gave {tuple(t.shape)} {t.dtype}, "
                            f"torch_npu allocates {tuple(shape)} {dt}")
        r = torch.zeros(shape, dtype=dt)
        if t.dim() == r.dim():
            sl = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, r.shape))
            r[sl] = t[sl].to(dt)
        res.append(r)
    return res


def _run(op: str, a: dict, meta_fn, checks_fn, sim_method: str):
    ctx = _standin_context()
    _calls.append((ctx.rank, op, a))
    try:
        checks_fn(a)
    except _meta.BindingCheckFailed as exc:
        raise _binding_error(op, str(exc), ctx) from None
    bad = _meta.dtype_violation(op, a)
    if bad:
        raise _aclnn_error(op, 161002, bad, ctx)
    want = meta_fn(a)
    be = _sim_backend()
    if be is None:  # shape-only fake
        if not a["group_ep"] or len(a["group_ep"]) >= 128:
            raise _aclnn_error(op, 161001 if "dispatch" in op or not a["group_ep"] else 161002,
                               "groupEp is null, empty or too long", ctx)
        return [torch.zeros(s, dtype=d) for s, d in want]
    from moe_cts.model import AclnnError, BindingError
    try:
        outs = getattr(be, sim_method)(_sim_ctx(ctx, a), **a)
    except AclnnError as exc:
        raise _aclnn_error(op, exc.status, f"{exc.constraint or ''} {exc.message}".strip(), ctx) from None
    except BindingError as exc:
        raise _binding_error(op, exc.message, ctx, code=exc.code if exc.code.startswith("ERR") else "ERR01001") \
            from None
    if isinstance(outs, torch.Tensor):
        outs = [outs]
    return _conform(op, list(outs), want, ctx)


def _dispatch_v2(*args, **kwargs):
    op = "npu_moe_distribute_dispatch_v2"
    a = _bind(op, args, kwargs)
    return tuple(_run(op, a, _meta.dispatch_outputs, _meta.dispatch_checks, "dispatch"))


def _combine_v2(*args, **kwargs):
    op = "npu_moe_distribute_combine_v2"
    a = _bind(op, args, kwargs)
    return _run(op, a, lambda a: _meta.combine_outputs(op, a), _meta.combine_checks, "combine")[0]


def _combine_add_rms_norm(*args, **kwargs):
    op = "npu_moe_distribute_combine_add_rms_norm"
    a = _bind(op, args, kwargs)
    return tuple(_run(op, a, lambda a: _meta.combine_outputs(op, a), _meta.combine_checks, "combine_add_rms_norm"))


def _not_modelled(name):
    def impl(*args, **kwargs):
        raise RuntimeError(f"torch_npu stand-in: {name} is defined (schema) but not modelled")
    return impl


def _barrier(x_ref, group, world_size, time_out=None, elastic_info=None):
    return torch.empty_like(x_ref)


_lib = torch.library.Library("npu", "DEF")  # noqa: the real torch_npu owns this namespace
_IMPLS = {
    "npu_moe_distribute_dispatch_v2": _dispatch_v2,
    "npu_moe_distribute_combine_v2": _combine_v2,
    "npu_moe_distribute_combine_add_rms_norm": _combine_add_rms_norm,
    "_npu_distribute_barrier": _barrier,
}
for _name, _schema in SCHEMAS.items():
    _lib.define(_schema)
    _lib.impl(_name, _IMPLS.get(_name) or _not_modelled(_name), "CPU")
    _SCHEMA_OBJ[_name] = getattr(torch.ops.npu, _name).default._schema
    globals()[_name] = getattr(torch.ops.npu, _name)  # torch_npu.X = torch.ops.npu.X (custom_ops.py)
