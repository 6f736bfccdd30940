"""The ``npu`` backend: torch_npu's MoE dispatch/combine ops on real Ascend NPUs over HCCL.

Calls exactly the Python API of docs/torch-npu-api.md §1a (schemas in moe_cts/binding)::

    torch_npu.npu_moe_distribute_dispatch_v2(x, expert_ids, group_ep, ep_world_size, ep_rank_id,
                                             moe_expert_num, *, scales=None, ..., performance_info=None, ...)
    torch_npu.npu_moe_distribute_combine_v2(expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                                            expert_scales, group_ep, ep_world_size, ep_rank_id, moe_expert_num, *, ...)
    torch_npu.npu_moe_distribute_combine_add_rms_norm(expand_x, expert_ids, expand_idx, ep_send_counts,
                                                      expert_scales, residual_x, gamma, group_ep, ..., *, ...)

The first arguments go positionally (as the schema names them), every keyword-only argument by its
keyword; optional keywords the case does not set are simply not passed, so the binding's own defaults
apply. ``performance_info`` is passed only when the case gives it (it is what makes torch_npu select
``aclnnMoeDistributeDispatchV4``).

Rules this module keeps:

* ``torch_npu`` is imported ONLY inside functions here (:func:`_torch_npu`), never at import time: on a
  host without CANN an installed torch_npu breaks ``import torch`` itself (torch-npu-api.md §1c).
  :func:`npu_available` says whether this backend can run, and why not, so the suite can *skip*.
* ``TASK_QUEUE_ENABLE=0`` (:meth:`NpuBackend.required_env`), so an aclnn error is raised by the call that
  caused it, not at a later sync point. The world applies it before torch_npu is imported in a rank.
* Group names: a ``group_ep`` / ``group_tp`` that is a key of ``ctx.groups`` (a ProcessGroup the world made
  with ``dist.new_group`` on hccl) is replaced by its HCCL communicator name
  ``pg._get_backend(torch.device("npu")).get_hccl_comm_name(global_rank)`` (cached per group); any other
  string is passed as given (the illegal-name cases).
* Errors: a RuntimeError from the op is parsed (:func:`classify_npu_error`): ``error code is N`` ->
  :class:`AclnnError` (status N); a binding check ``ERR01xxx`` with no aclnn status -> :class:`BindingError`
  with that code; the dispatcher's own schema rejections (unknown keyword, too many positionals, wrong
  type, missing argument) -> ``BindingError("schema", ...)``. Anything else is re-raised unchanged (broken).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import threading
from typing import Any

import torch

from moe_cts.backends.base import RankContext
from moe_cts.binding import COMBINE_ADD_RMS_NORM_OP, COMBINE_OP, DISPATCH_OP, positional
from moe_cts.model import AclnnError, BindingError

__all__ = [
    "NpuBackend",
    "npu_available",
    "classify_npu_error",
    "parse_aclnn_status",
    "STANDIN_ENV",
    "DISPATCH_OP",
    "COMBINE_OP",
    "COMBINE_ADD_RMS_NORM_OP",
]

# The stand-in torch_npu of tests/standin counts as "available" only when this is "1".
STANDIN_ENV = "MOE_CTS_NPU_STANDIN"

# Environment keys of ctx.env that HCCL reads when a communicator is created.
_HCCL_ENV_PREFIXES = ("HCCL_",)

# --------------------------------------------------------------------------- error parsing
# An aclnn status is what NPU_CHECK_ERROR(status, "call aclnnX failed") prints (op_plugin op_api_common.h):
#   "<op>:<file>:<line> NPU function error: call aclnnMoeDistributeDispatchV4 failed, error code is 561002"
# HCCL / ACL runtime failures print "HCCL function error: ..., error code is 7" etc.: those are NOT aclnn
# statuses (a communicator or device fault: the runner records them as broken), so they are not matched.
_ACLNN_RE = re.compile(r"call (aclnn\w+) failed, error code is (\d+)")
_NPU_STATUS_RE = re.compile(r"NPU function error:[^\n]*?error code is (\d+)")
_ERR_RE = re.compile(r"\bERR(\d{2})(\d{3})\b")
# What torch's dispatcher says when the arguments do not fit the schema (same text for the real
# binding: torch_npu.npu_moe_... IS torch.ops.npu.npu_moe_...).
_SCHEMA_PATTERNS = (
    re.compile(r"Unknown keyword argument '[^']*' for operator"),
    re.compile(r"takes \d+ positional argument\(s\) but \d+ was/were given"),
    re.compile(r"Expected a value of type '[^']*' for argument '[^']*'"),
    re.compile(r"is missing value for argument '[^']*'"),
    re.compile(r"got multiple values for argument '[^']*'"),
    re.compile(r"No overload|not a valid overload|no overload", re.I),
)
# Binding-level rejections whose text may reach us without its ERR01xxx suffix (meta functions run with
# stubbed error helpers, older builds): the phrases of torch-npu-api.md §1a/§1b and kernel-behaviour.md §7.
_BINDING_PHRASES = (
    re.compile(r"should be in \[0, ep_world_size\)"),
    re.compile(r"is not supported in this CANN version"),
    re.compile(r"The aclnn\w+ is not supported"),
    re.compile(r"do not support internal format"),
    re.compile(r"do not support time_out and elastic_info"),
    re.compile(r"expert_token_nums_type should be"),
)
_MESSAGE_LINES = 8  # how many lines of the torch_npu text an AclnnError keeps


def parse_aclnn_status(text: str) -> int | None:
    """The aclnn status in a torch_npu error text (``... call aclnnX failed, error code is 561002``), or None.

    Only NPU function errors carry an aclnn status; an ``HCCL function error: ..., error code is N`` does not.
    """
    m = _ACLNN_RE.search(text)
    if m:
        return int(m.group(2))
    m = _NPU_STATUS_RE.search(text)
    return int(m.group(1)) if m else None


def _head(text: str, n: int = _MESSAGE_LINES) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[:n])


def classify_npu_error(exc: BaseException) -> BaseException:
    """Map an exception raised by a torch_npu op call to the suite's vocabulary.

    Returns an :class:`AclnnError` (aclnn status present; ``.api`` = the aclnn kernel named in the text, e.g.
    ``aclnnMoeDistributeDispatchV4``; ``.asynchronous`` = reported from the task queue's worker, i.e. at a
    later call than the one that caused it), a :class:`BindingError` (binding check ``ERR01xxx`` without
    status -> that code; a known binding phrase without code -> "binding"; a schema rejection by torch's
    dispatcher -> "schema"), or ``exc`` itself when it is none of these (HCCL/ACL runtime failure: broken).
    """
    if isinstance(exc, (AclnnError, BindingError)):
        return exc
    if not isinstance(exc, (RuntimeError, TypeError, ValueError)):
        return exc
    text = str(exc)
    status = parse_aclnn_status(text)
    if status is not None:
        err = AclnnError(status, _head(text))
        m = _ACLNN_RE.search(text)
        err.api = m.group(1) if m else None
        err.asynchronous = text.lstrip().startswith("operator()") or "operator():" in text.split("NPU function", 1)[0]
        return err
    for pat in _SCHEMA_PATTERNS:
        if pat.search(text):
            return BindingError("schema", _head(text, 3))
    if "HCCL function error" in text or "ACL function error" in text:
        return exc
    for m in _ERR_RE.finditer(text):
        if m.group(1) == "01":  # OPS submodule: the op binding's own parameter checks
            return BindingError(f"ERR{m.group(1)}{m.group(2)}", _head(text))
    if not _ERR_RE.search(text) and any(p.search(text) for p in _BINDING_PHRASES):
        return BindingError("binding", _head(text))
    if isinstance(exc, TypeError):  # pybind argument conversion failures
        return BindingError("schema", _head(text, 3))
    return exc


# --------------------------------------------------------------------------- torch_npu import
_lock = threading.Lock()
_avail: tuple[bool, str] | None = None


def _torch_npu():
    """Import torch_npu (lazily, once). Raises ImportError/RuntimeError/OSError when it cannot load."""
    mod = sys.modules.get("torch_npu")
    if mod is not None:
        return mod
    # TASK_QUEUE_ENABLE is read by torch_npu when it starts: set it before the first import unless the
    # world already did (required_env()).
    for k, v in NpuBackend.required_env().items():
        os.environ.setdefault(k, v)
    return importlib.import_module("torch_npu")


def _npu_device():
    return torch.device("npu")  # parses only once torch_npu has renamed the privateuse1 backend


def _is_standin(mod) -> bool:
    return bool(getattr(mod, "_MOE_CTS_STANDIN", False))


def npu_available(refresh: bool = False) -> tuple[bool, str]:
    """(True, "") when torch_npu loads and sees at least one NPU, else (False, reason).

    Reasons: ``"torch_npu not importable: <why>"`` or ``"no NPU devices"``. The moe-cts stand-in
    torch_npu (tests/standin) counts only with ``MOE_CTS_NPU_STANDIN=1``. The result is cached.
    """
    global _avail
    with _lock:
        if _avail is not None and not refresh:
            return _avail
        _avail = _probe()
        return _avail


def _probe() -> tuple[bool, str]:
    if "torch_npu" not in sys.modules and importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu not importable: not installed (pip install torch_npu on a host with CANN)"
    try:
        mod = _torch_npu()
    except (ImportError, OSError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ""
        if "libhccl" in first or "libascendcl" in first or "backend extension" in first:
            hint = " (CANN is not installed or not sourced; where torch_npu is installed without CANN, " \
                   "every process needs TORCH_DEVICE_BACKEND_AUTOLOAD=0 even to import torch)"
        return False, f"torch_npu not importable: {type(exc).__name__}: {first}{hint}"
    if _is_standin(mod) and os.environ.get(STANDIN_ENV) != "1":
        return False, f"torch_npu not importable: the moe-cts stand-in is on sys.path ({STANDIN_ENV}=1 enables it)"
    try:
        n = int(torch.npu.device_count())  # torch.npu is installed by torch_npu
    except Exception as exc:  # noqa: BLE001 - any failure here means: cannot run
        return False, f"no NPU devices (torch.npu.device_count() failed: {type(exc).__name__}: {exc})"
    if n < 1:
        return False, "no NPU devices"
    return True, ""


# --------------------------------------------------------------------------- the backend
class NpuBackend:
    """torch_npu ``npu_moe_distribute_*`` on HCCL, one instance per rank process.

    Options (fixture ``backend_options``): ``check_task_queue`` (default True: refuse to run when
    ``TASK_QUEUE_ENABLE`` is not "0", because statuses would then surface at a later call).
    """

    name = "npu"

    def __init__(self, check_task_queue: bool = True, **options: Any):
        self.check_task_queue = bool(check_task_queue)
        self.options = dict(options)
        # (group key, id(pg)) -> (hccl comm name, HCCL_BUFFSIZE in force when the comm was created, pg);
        # the pg is kept so that its id cannot be reused by another group while cached
        self._names: dict[tuple[str, int], tuple[str, str | None, Any]] = {}
        self._env_checked = False

    # ---- world hooks ------------------------------------------------------------------------
    @classmethod
    def required_env(cls) -> dict[str, str]:
        """Environment every rank process needs before torch_npu is imported."""
        return {"TASK_QUEUE_ENABLE": "0"}

    def prepare_rank(self, ctx: RankContext) -> None:
        """Per rank process, before any case: check the env, import torch_npu, select the device."""
        self._check_env()
        _torch_npu()
        self._apply_env(ctx)
        torch.npu.set_device(ctx.device)

    def _check_env(self) -> None:
        """TASK_QUEUE_ENABLE must be "0". Absent: set here, which helps only if torch_npu has not read it yet
        (the world sets it from the fixture's env before torch_npu is imported)."""
        if self._env_checked:
            return
        for k, v in self.required_env().items():
            cur = os.environ.get(k)
            if cur is None:
                os.environ[k] = v
            elif cur != v and self.check_task_queue:
                raise RuntimeError(
                    f"{k}={cur!r} in this rank, the npu backend needs {k}={v!r} (aclnn errors would otherwise "
                    "surface at a later call); start ranks with NpuBackend.required_env() / the fixture's env")
        self._env_checked = True

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _apply_env(ctx: RankContext) -> None:
        """HCCL reads HCCL_BUFFSIZE & co. when a communicator is created: export the fixture's values."""
        for k, v in (ctx.env or {}).items():
            if k.startswith(_HCCL_ENV_PREFIXES) and v is not None:
                os.environ[k] = str(v)

    def group_name(self, ctx: RankContext, name: str) -> str:
        """The string to pass as group_ep / group_tp for ``name``."""
        if not isinstance(name, str) or name not in (ctx.groups or {}):
            return name  # illegal-name cases: passed exactly as given
        pg = ctx.groups[name]
        if isinstance(pg, str):  # the world resolved it already
            return pg
        key = (name, id(pg))
        want = (ctx.env or {}).get("HCCL_BUFFSIZE")
        hit = self._names.get(key)
        if hit is not None:
            comm, made_with, _ = hit
            if want is not None and made_with is not None and str(want) != made_with:
                raise RuntimeError(
                    f"group {name!r}: its HCCL communicator was created with HCCL_BUFFSIZE={made_with}, "
                    f"this case needs {want}; the world must make a new group for a new buffer size")
            return comm
        self._apply_env(ctx)  # the communicator is created (lazily) by get_hccl_comm_name below
        _torch_npu()
        backend = pg._get_backend(_npu_device())
        comm = backend.get_hccl_comm_name(ctx.rank)  # the GLOBAL rank, as torch_npu's doc requires
        self._names[key] = (comm, os.environ.get("HCCL_BUFFSIZE"), pg)
        return comm

    @staticmethod
    def _to(ctx: RankContext, value):
        if isinstance(value, torch.Tensor) and ctx.device and value.device != torch.device(ctx.device):
            return value.to(ctx.device)
        return value

    def _call(self, ctx: RankContext, op_name: str, positional_args: dict[str, Any], kw: dict[str, Any]):
        self._check_env()  # also when the world did not call prepare_rank()
        tnpu = _torch_npu()
        op = getattr(tnpu, op_name)
        names = positional(op_name)
        args = [self._to(ctx, positional_args[p]) for p in names]
        i = names.index("group_ep")
        args[i] = self.group_name(ctx, args[i])
        kwargs = {}
        for k, v in kw.items():
            if v is None:
                continue  # not set by the case: the binding's default (None) applies
            if k == "group_tp":
                v = self.group_name(ctx, v)
            kwargs[k] = self._to(ctx, v)
        try:
            return op(*args, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:
            mapped = classify_npu_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    # ---- the operators -----------------------------------------------------------------------
    def dispatch(self, ctx: RankContext, x, expert_ids, group_ep, ep_world_size, ep_rank_id, moe_expert_num,
                 **kw):
        """-> (expand_x, dynamic_scales, assist_info_for_combine, expert_token_nums, ep_recv_counts,
        tp_recv_counts, expand_scales), on the NPU, exactly as torch_npu returns them."""
        return tuple(self._call(ctx, DISPATCH_OP, dict(
            x=x, expert_ids=expert_ids, group_ep=group_ep, ep_world_size=ep_world_size,
            ep_rank_id=ep_rank_id, moe_expert_num=moe_expert_num), kw))

    def combine(self, ctx: RankContext, expand_x, expert_ids, assist_info_for_combine, ep_send_counts,
                expert_scales, group_ep, ep_world_size, ep_rank_id, moe_expert_num, **kw):
        """-> x (Bs, H)."""
        return self._call(ctx, COMBINE_OP, dict(
            expand_x=expand_x, expert_ids=expert_ids, assist_info_for_combine=assist_info_for_combine,
            ep_send_counts=ep_send_counts, expert_scales=expert_scales, group_ep=group_ep,
            ep_world_size=ep_world_size, ep_rank_id=ep_rank_id, moe_expert_num=moe_expert_num), kw)

    def combine_add_rms_norm(self, ctx: RankContext, expand_x, expert_ids, expand_idx, ep_send_counts,
                             expert_scales, residual_x, gamma, group_ep, ep_world_size, ep_rank_id,
                             moe_expert_num, **kw):
        """-> (y (Bs,1,H), rstd (Bs,1,1), x (Bs,1,H))."""
        return tuple(self._call(ctx, COMBINE_ADD_RMS_NORM_OP, dict(
            expand_x=expand_x, expert_ids=expert_ids, expand_idx=expand_idx, ep_send_counts=ep_send_counts,
            expert_scales=expert_scales, residual_x=residual_x, gamma=gamma, group_ep=group_ep,
            ep_world_size=ep_world_size, ep_rank_id=ep_rank_id, moe_expert_num=moe_expert_num), kw))
