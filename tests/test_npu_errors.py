"""The npu backend's error mapping and call plumbing, in-process with a fake ``torch_npu`` module.

Error texts are the real formats quoted in docs/torch-npu-api.md §1d and docs/kernel-behaviour.md §7
(``NPU_CHECK_ERROR(status, "call aclnnX failed")`` of op_plugin's op_api_common.h, the binding's
``ERR%02d%03d`` suffixes, torch's dispatcher messages), and the two public variants seen on hardware: the
asynchronous ``operator():`` form (task queue on) and ``HCCL function error`` (not an aclnn status).
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from moe_cts.backends import npu
from moe_cts.backends.base import RankContext
from moe_cts.model import AclnnError, BindingError

STAMP = "[ERROR] 2026-01-07-03:16:09 (PID:13817, Device:2, RankID:-1)"

# kernel-behaviour.md §7, "How an aclnn error surfaces"
V4_TILING = (
    "npu_moe_distribute_dispatch_v2:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:161 NPU function error: "
    "call aclnnMoeDistributeDispatchV4 failed, error code is 561002\n"
    f"{STAMP} ERR00100 PTA call acl api failed.\n"
    "EZ9999: Inner Error!\n"
    "EZ9999 ... epWorldSize is invalid, only support [2, 768], but got epWorldSize=1."
    "[FUNC:CheckAttrs][FILE:moe_distribute_dispatch_v2_tiling.cc][LINE:585]\n"
    "        TraceBack (most recent call last):\n"
    "        MoeDistributeDispatchV2 do tiling failed, ret is -1.\n"
    "        Check NnopbaseExecutorDoTiling(executor) failed\n"
    "        Check NnopbaseRunForWorkspace failed\n"
    "        Check NnopbaseExecutorGetWorkspaceSize failed\n"
    "        Check aclnnInnerMoeDistributeDispatchV4GetWorkspaceSize failed\n")
V2_TILING = ("npu_moe_distribute_dispatch_v2:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:128 NPU function error: "
             "call aclnnMoeDistributeDispatchV2 failed, error code is 561002")
ASYNC_561000 = (
    "operator():build/CMakeFiles/torch_npu.dir/compiler_depend.ts:161 NPU function error: call "
    "aclnnMoeDistributeDispatchV3 failed, error code is 561000\n"
    f"{STAMP} ERR00100 PTA call acl api failed.\n"
    "Allocation_Failure(EI0007): Failed to allocate resource[qp]. Reason: Memory resources are exhausted.")
COMBINE_161002 = (
    "npu_moe_distribute_combine_v2:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:99 NPU function error: "
    "call aclnnMoeDistributeCombineV4 failed, error code is 161002\n"
    f"{STAMP} ERR00100 PTA call acl api failed.")
HCCL_INIT = (
    "create_config:build/CMakeFiles/torch_npu.dir/compiler_depend.ts:149 HCCL function error: "
    "hcclCommInitRootInfoConfig(numRanks, &rootInfo, rank, config, &(comm->hcclComm_)), error code is 7\n"
    f"{STAMP} ERR02200 DIST call hccl api failed.")
NO_STATUS = ("npu_moe_distribute_dispatch_v2:third_party/op-plugin/op_plugin/ops/opapi/"
             "MoeDistributeDispatchV2KernelOpApi.cpp:194 NPU function error: call aclnnMoeDistributeDispatchV2 "
             f"failed\n{STAMP} ERR00100 PTA call acl api failed.")
# torch-npu-api.md §1b: the meta check, as it reads with torch_npu's error helpers stubbed out
META_RANK = "ep_rank_id should be in [0, ep_world_size), but got ep_world_size=4, ep_rank_id=4.."
META_RANK_CODED = META_RANK + f"\n{STAMP} ERR01001 OPS invalid parameter."
# torch-npu-api.md §1a: strings in libtorch_npu.so
PERF_V4 = ("The performance_info is not supported in this CANN version, aclnnMoeDistributeDispatchV4 is not "
           "available, please update CANN version.")
V3_MISSING = "The aclnnMoeDistributeDispatchV3 is not supported"
INTERNAL_FORMAT = "Current operator npu_moe_distribute_dispatch_v2 do not support internal format."
# torch's dispatcher (identical for the real binding: torch_npu.X is torch.ops.npu.X)
SCHEMA_UNKNOWN_KW = ("Unknown keyword argument 'expert_tokens_num_type' for operator "
                     "'npu::npu_moe_distribute_dispatch_v2'. Schema: npu::npu_moe_distribute_dispatch_v2(...)")
SCHEMA_POSITIONAL = ("npu::npu_moe_distribute_dispatch_v2() takes 6 positional argument(s) but 7 was/were given.  "
                     "Declaration: npu::npu_moe_distribute_dispatch_v2(Tensor x, ...)")
SCHEMA_TYPE = ("npu::npu_moe_distribute_combine_v2() Expected a value of type 'str' for argument 'group_ep' but "
               "instead found type 'int'.\nPosition: 5\nValue: 2")
SCHEMA_MISSING = "npu::npu_moe_distribute_combine_v2() is missing value for argument 'moe_expert_num'. Declaration: x"


@pytest.mark.parametrize("text, status, api", [
    (V4_TILING, 561002, "aclnnMoeDistributeDispatchV4"),
    (V2_TILING, 561002, "aclnnMoeDistributeDispatchV2"),
    (ASYNC_561000, 561000, "aclnnMoeDistributeDispatchV3"),
    (COMBINE_161002, 161002, "aclnnMoeDistributeCombineV4"),
])
def test_aclnn_status_parsed(text, status, api):
    err = npu.classify_npu_error(RuntimeError(text))
    assert isinstance(err, AclnnError)
    assert err.status == status and err.api == api
    assert err.message.splitlines()[0] == text.splitlines()[0]
    assert len(err.message.splitlines()) <= 8  # first lines only, the EZ9999 tiling reason included
    assert npu.parse_aclnn_status(text) == status


def test_tiling_reason_kept():
    err = npu.classify_npu_error(RuntimeError(V4_TILING))
    assert "epWorldSize is invalid" in err.message


def test_async_report_is_flagged():
    assert npu.classify_npu_error(RuntimeError(ASYNC_561000)).asynchronous is True
    assert npu.classify_npu_error(RuntimeError(V4_TILING)).asynchronous is False


@pytest.mark.parametrize("text", [HCCL_INIT, NO_STATUS, "something else entirely"])
def test_not_an_aclnn_status_passes_through(text):
    exc = RuntimeError(text)
    assert npu.classify_npu_error(exc) is exc
    assert npu.parse_aclnn_status(text) is None


def test_hccl_error_code_is_not_a_status():
    assert npu.parse_aclnn_status(HCCL_INIT) is None


@pytest.mark.parametrize("text, code", [
    (META_RANK_CODED, "ERR01001"),
    (PERF_V4 + f"\n{STAMP} ERR01007 OPS feature not supported.", "ERR01007"),
    (META_RANK, "binding"),
    (PERF_V4, "binding"),
    (V3_MISSING, "binding"),
    (INTERNAL_FORMAT, "binding"),
])
def test_binding_rejection(text, code):
    err = npu.classify_npu_error(RuntimeError(text))
    assert isinstance(err, BindingError) and err.code == code


@pytest.mark.parametrize("text", [SCHEMA_UNKNOWN_KW, SCHEMA_POSITIONAL, SCHEMA_TYPE, SCHEMA_MISSING])
def test_schema_rejection(text):
    err = npu.classify_npu_error(RuntimeError(text))
    assert isinstance(err, BindingError) and err.code == "schema"


def test_other_exceptions_untouched():
    exc = KeyError("x")
    assert npu.classify_npu_error(exc) is exc
    a = AclnnError(161001, "m")
    assert npu.classify_npu_error(a) is a


# ------------------------------------------------------------------------------ call plumbing (fake module)
class _Backend:
    def __init__(self, pg):
        self.pg = pg

    def get_hccl_comm_name(self, rank):
        self.pg.asked.append(rank)
        return f"comm-{'-'.join(map(str, self.pg.ranks))}"


class _PG:
    def __init__(self, ranks):
        self.ranks = ranks
        self.asked = []

    def _get_backend(self, device):
        assert device == "NPU"
        return _Backend(self)


@pytest.fixture(autouse=True)
def _private_environ(monkeypatch):
    """The backend exports HCCL_* / TASK_QUEUE_ENABLE into os.environ: keep that inside each test."""
    import os
    monkeypatch.setattr(os, "environ", dict(os.environ))


@pytest.fixture
def fake(monkeypatch):
    """A fake torch_npu whose ops record their arguments (or raise a given text)."""
    mod = types.ModuleType("torch_npu")
    mod.calls = []
    mod.raise_text = None

    def make(name, nout):
        def op(*args, **kwargs):
            mod.calls.append((name, args, kwargs))
            if mod.raise_text:
                raise RuntimeError(mod.raise_text)
            return tuple(torch.zeros(1) for _ in range(nout)) if nout > 1 else torch.zeros(1)
        return op

    mod.npu_moe_distribute_dispatch_v2 = make("dispatch", 7)
    mod.npu_moe_distribute_combine_v2 = make("combine", 1)
    mod.npu_moe_distribute_combine_add_rms_norm = make("add_rms_norm", 3)
    monkeypatch.setitem(sys.modules, "torch_npu", mod)
    monkeypatch.setattr(npu, "_npu_device", lambda: "NPU")
    return mod


def _ctx(env=None):
    groups = {"ep0": _PG((0, 2)), "tp1": _PG((2, 3))}
    return RankContext(rank=2, world_size=4, device="cpu", ep_group="ep0", tp_group="tp1", groups=groups,
                       env=dict(env or {"HCCL_BUFFSIZE": "200"}))


def test_dispatch_argument_mapping(fake):
    ctx = _ctx()
    be = npu.NpuBackend()
    x, ids = torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32)
    out = be.dispatch(ctx, x, ids, "ep0", 2, 1, 4, group_tp="tp1", tp_world_size=2, tp_rank_id=0, scales=None,
                      quant_mode=2, performance_info=torch.zeros(2, dtype=torch.int64))
    assert len(out) == 7
    name, args, kwargs = fake.calls[-1]
    assert args[:2] == (x, ids) and args[2:] == ("comm-0-2", 2, 1, 4)  # positional part, HCCL name resolved
    assert kwargs["group_tp"] == "comm-2-3" and kwargs["tp_world_size"] == 2 and kwargs["quant_mode"] == 2
    assert "scales" not in kwargs  # None = not set: the binding's default applies
    assert "performance_info" in kwargs
    assert ctx.groups["ep0"].asked == [2]  # the GLOBAL rank
    import os
    assert os.environ["HCCL_BUFFSIZE"] == "200"  # exported before the communicator was created


def test_group_names_cached_and_illegal_names_passed_as_given(fake):
    ctx = _ctx()
    be = npu.NpuBackend()
    x, ids = torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32)
    be.dispatch(ctx, x, ids, "ep0", 2, 1, 4)
    be.dispatch(ctx, x, ids, "ep0", 2, 1, 4)
    assert ctx.groups["ep0"].asked == [2]
    for illegal in ("", "g" * 200, "no_such_group"):
        be.dispatch(ctx, x, ids, illegal, 2, 1, 4)
        assert fake.calls[-1][1][2] == illegal


def test_buffsize_change_needs_a_new_group(fake):
    be = npu.NpuBackend()
    ctx = _ctx()
    x, ids = torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32)
    be.dispatch(ctx, x, ids, "ep0", 2, 1, 4)
    ctx2 = RankContext(**{**ctx.__dict__, "env": {"HCCL_BUFFSIZE": "150"}})
    with pytest.raises(RuntimeError, match="HCCL_BUFFSIZE=200"):
        be.dispatch(ctx2, x, ids, "ep0", 2, 1, 4)


def test_combine_positional_order(fake):
    ctx = _ctx()
    be = npu.NpuBackend()
    t = [torch.full((1,), float(i)) for i in range(7)]
    be.combine(ctx, t[0], t[1], t[2], t[3], t[4], "ep0", 2, 1, 4, comm_quant_mode=2)
    _, args, kwargs = fake.calls[-1]
    assert args[:5] == tuple(t[:5]) and args[5:] == ("comm-0-2", 2, 1, 4) and kwargs == {"comm_quant_mode": 2}
    be.combine_add_rms_norm(ctx, *t, "ep0", 2, 1, 4, norm_eps=1e-5)
    _, args, kwargs = fake.calls[-1]
    assert args[:7] == tuple(t) and args[7:] == ("comm-0-2", 2, 1, 4) and kwargs == {"norm_eps": 1e-5}


@pytest.mark.parametrize("text, kind", [(V4_TILING, AclnnError), (META_RANK_CODED, BindingError),
                                        (SCHEMA_UNKNOWN_KW, BindingError)])
def test_call_raises_mapped_error_with_cause(fake, text, kind):
    fake.raise_text = text
    with pytest.raises(kind) as ei:
        npu.NpuBackend().dispatch(_ctx(), torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32), "ep0", 2, 1, 4)
    assert isinstance(ei.value.__cause__, RuntimeError)  # the torch_npu text stays attached


def test_runtime_failure_is_reraised_unchanged(fake):
    fake.raise_text = HCCL_INIT
    with pytest.raises(RuntimeError) as ei:
        npu.NpuBackend().dispatch(_ctx(), torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32), "ep0", 2, 1, 4)
    assert type(ei.value) is RuntimeError and "HCCL function error" in str(ei.value)


def test_task_queue_mismatch_refused(fake, monkeypatch):
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "2")
    with pytest.raises(RuntimeError, match="TASK_QUEUE_ENABLE"):
        npu.NpuBackend().prepare_rank(_ctx())


def test_task_queue_checked_at_first_call_too(fake, monkeypatch):
    monkeypatch.setenv("TASK_QUEUE_ENABLE", "1")
    with pytest.raises(RuntimeError, match="TASK_QUEUE_ENABLE='1'"):
        npu.NpuBackend().dispatch(_ctx(), torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32), "ep0", 2, 1, 4)
    assert not fake.calls  # refused before the op ran
    monkeypatch.delenv("TASK_QUEUE_ENABLE")
    npu.NpuBackend().dispatch(_ctx(), torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.int32), "ep0", 2, 1, 4)
    import os
    assert os.environ["TASK_QUEUE_ENABLE"] == "0"


def test_required_env():
    assert npu.NpuBackend.required_env() == {"TASK_QUEUE_ENABLE": "0"}
