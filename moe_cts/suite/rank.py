"""What one rank does for one case: build its inputs from the seed, call the backend, hand back numpy.

``run_case_on_rank`` is the world job (``"moe_cts.suite.rank:run_case_on_rank"``): it runs inside every
rank process with that rank's RankContext and the fixture's backend. Inputs come from
(case seed, rank) alone (moe_cts.cases.inputs), so nothing but the case description crosses processes.
The case's overrides (wrong dtype, null tensor, bad shape, illegal group name ...) are applied to
the real arguments here, so an illegal case exercises the real call path.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

from moe_cts.binding import Y_DTYPE, combine_attrs, dispatch_attrs
from moe_cts.cases import Case
from moe_cts.cases.experts import apply_experts
from moe_cts.cases.inputs import rank_inputs
from moe_cts.model import DISPATCH_OUTPUTS, OpParams
from moe_cts.spec import DEFAULT_PROFILE, load_profile
from moe_cts.spec.derived import combine_op
from moe_cts.spec.profile import COMBINE_PREFIX



def _torch():
    import torch

    return torch


def to_torch(a: np.ndarray | None, device: str = "cpu"):
    """numpy (incl. ml_dtypes bfloat16) -> torch tensor on device, bit-exact."""
    if a is None:
        return None
    torch = _torch()
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device) if device != "cpu" else t


def to_numpy(t) -> np.ndarray | None:
    """torch tensor -> numpy (bf16 as ml_dtypes.bfloat16), bit-exact, on the host."""
    if t is None:
        return None
    torch = _torch()
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


_DTYPES = {
    "bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "float64": "float64", "int8": "int8",
    "int16": "int16", "int32": "int32", "int64": "int64", "bool": "bool", "uint8": "uint8",
}


def _retype(t, dtype: str):
    torch = _torch()
    return t.to(getattr(torch, _DTYPES[dtype]))


def _reshape(t, shape):
    """A tensor of the requested shape that keeps as much of t's data as fits (the rest zero)."""
    torch = _torch()
    out = torch.zeros(tuple(shape), dtype=t.dtype, device=t.device)
    if t.dim() == len(shape):
        sl = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, shape))
        out[sl] = t[sl]
    return out


def _make(desc: dict, device: str):
    torch = _torch()
    return torch.zeros(tuple(desc["shape"]), dtype=getattr(torch, _DTYPES[desc["dtype"]]), device=device)


def apply_overrides(kwargs: dict, overrides: dict, device: str) -> dict:
    """Apply CallDesc-style overrides ("tensors.x.dtype", "tensors.scales", "attrs.group_ep" ...) to real kwargs."""
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "attrs":
            kwargs[parts[1]] = value
        elif parts[0] == "tensors":
            name = parts[1]
            if len(parts) == 2:
                kwargs[name] = None if value is None else _make(value, device)
            elif kwargs.get(name) is None:
                raise ValueError(f"override {key}: tensor {name!r} is not passed in this case")
            elif parts[2] == "dtype":
                kwargs[name] = _retype(kwargs[name], value)
            elif parts[2] == "shape":
                kwargs[name] = _reshape(kwargs[name], value)
            else:
                raise ValueError(f"override {key}: unknown tensor property {parts[2]!r}")
        elif parts[0] == "env":
            continue  # applied to the rank's environment by the caller
        else:
            raise ValueError(f"override {key}: unknown section {parts[0]!r}")
    return kwargs


def dispatch_kwargs(p: OpParams, inp: dict, ctx, overrides: dict | None = None, profile: str = DEFAULT_PROFILE) -> dict:
    """One rank's dispatch call as torch_npu keywords: tensors from the inputs, scalars from moe_cts.binding;
    the case's overrides (wrong dtype, null tensor, bad shape, illegal group name ...) applied on top."""
    dev = ctx.device
    kw: dict[str, Any] = dict(
        x=to_torch(inp["x"], dev), expert_ids=to_torch(inp["expert_ids"], dev),
        scales=to_torch(inp.get("scales"), dev) if p.scales else None,
        x_active_mask=to_torch(inp.get("x_active_mask"), dev),
        expert_scales=to_torch(inp["expert_scales"], dev) if p.expert_scales else None,
        **dispatch_attrs(p, ctx.rank, ctx.ep_group, ctx.tp_group),
    )
    if p.performance_info:
        torch = _torch()
        kw["performance_info"] = torch.zeros(p.ep_world_size, dtype=torch.int64, device=dev)
    overrides = {k: v for k, v in (overrides or {}).items() if not k.startswith(COMBINE_PREFIX)}
    if overrides:
        y = overrides.pop("tensors.expand_x.dtype", None)
        if y is not None:
            kw["y_dtype"] = Y_DTYPE[y]
        _materialise_absent(kw, p, ctx.rank, overrides, dev, profile)
        for name in ("group_ep", "group_tp"):
            # the spec's call descriptions name the groups "ep" / "tp": map them to this world's names
            v = overrides.get(f"attrs.{name}")
            if v in GROUP_PLACEHOLDERS:
                overrides[f"attrs.{name}"] = getattr(ctx, GROUP_PLACEHOLDERS[v])
        apply_overrides(kw, overrides, dev)
    return kw


GROUP_PLACEHOLDERS = {"ep": "ep_group", "tp": "tp_group"}


def _materialise_absent(kw: dict, p: OpParams, rank: int, overrides: dict, device: str, profile: str) -> None:
    """An override on a tensor this case does not pass (e.g. a float16 expert_scales on A3) means
    "pass one like that": build it from the spec's description of the call, overrides applied."""
    absent = sorted({k.split(".")[1] for k in overrides if k.startswith("tensors.") and k.count(".") == 2
                     and kw.get(k.split(".")[1]) is None})
    if not absent:
        return
    desc = load_profile(profile).call_desc(p, rank, overrides=overrides)
    for name in absent:
        t = desc.tensors.get(name)
        if t is None:
            raise ValueError(f"override on tensor {name!r}: the call description has no such tensor")
        kw[name] = _make({"dtype": t.dtype, "shape": list(t.shape)}, device)
        for k in [k for k in overrides if k.startswith(f"tensors.{name}.")]:
            del overrides[k]


def combine_kwargs(p: OpParams, inp: dict, ctx, d: tuple, expert_out, overrides: dict | None = None) -> dict:
    """One rank's combine call (either flavour) as torch_npu keywords, fed by its dispatch outputs ``d``;
    the case's ``combine.*`` overrides applied on top."""
    dev = ctx.device
    _expand_x, _scales, assist, _etn, ep_recv, tp_recv, expand_scales = d
    kw: dict[str, Any] = dict(
        expand_x=to_torch(expert_out, dev), expert_ids=to_torch(inp["expert_ids"], dev),
        ep_send_counts=ep_recv, expert_scales=to_torch(inp["expert_scales"], dev),
        tp_send_counts=tp_recv, x_active_mask=to_torch(inp.get("x_active_mask"), dev),
        expand_scales=expand_scales if p.expert_scales else None,
        shared_expert_x=to_torch(inp.get("shared_expert_x"), dev) if p.shared_expert_x else None,
        ori_x=to_torch(inp.get("ori_x"), dev), const_expert_alpha_1=to_torch(inp.get("const_expert_alpha_1"), dev),
        const_expert_alpha_2=to_torch(inp.get("const_expert_alpha_2"), dev),
        const_expert_v=to_torch(inp.get("const_expert_v"), dev),
        **combine_attrs(p, ctx.rank, ctx.ep_group, ctx.tp_group),
    )
    if p.combine_kind == "add_rms_norm":
        kw.update(expand_idx=assist, residual_x=to_torch(inp["residual_x"], dev), gamma=to_torch(inp["gamma"], dev))
    else:
        kw["assist_info_for_combine"] = assist
    mine = {}
    for key, value in (overrides or {}).items():
        if key.startswith(COMBINE_PREFIX):
            key = key[len(COMBINE_PREFIX):]
            if p.combine_kind == "add_rms_norm":
                key = key.replace("tensors.assist_info_for_combine", "tensors.expand_idx")
            if key.startswith("attrs.group_") and value in GROUP_PLACEHOLDERS:
                value = getattr(ctx, GROUP_PLACEHOLDERS[value])
            mine[key] = value
    return apply_overrides(kw, mine, dev) if mine else kw


@contextlib.contextmanager
def _op(name: str):
    """Tag an exception with the call that raised it (``.op``): an illegal case names the call that must
    reject it, and a dispatch rejection must not pass for a combine one."""
    try:
        yield
    except BaseException as exc:
        try:
            exc.op = name
        except AttributeError:  # exceptions without a __dict__
            pass
        raise


def valid_rows_from(p: OpParams, expert_token_nums: np.ndarray) -> int:
    """Rows of expand_x that are defined, read from the normative expert_token_nums."""
    etn = np.asarray(expert_token_nums, dtype=np.int64)
    if etn.size == 0:
        return 0
    return int(etn[-1]) if p.expert_token_nums_type == 0 else int(etn.sum())


def _inputs(case, p: OpParams, rank: int) -> dict:
    """The rank's inputs from the seed; for an illegal case whose parameters no generator can honour
    (K = 0, H = 0 ...), zeros of the shapes and dtypes the spec describes: only the check matters."""
    try:
        return rank_inputs(p, case.seed, rank, case.routing)
    except (ValueError, ZeroDivisionError, IndexError, MemoryError):
        if case.legal:
            raise
    desc = load_profile(case.profile).call_desc(p, rank)
    torch_free = {}
    for name, t in desc.tensors.items():
        if t is not None:
            torch_free[name] = np.zeros(t.shape, dtype=_np_dtype(t.dtype))
    torch_free.setdefault("expert_scales", np.zeros((p.bs_of(p.ep_rank(rank)), p.k), np.float32))
    return torch_free


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def run_case_on_rank(ctx, backend, payload: dict) -> dict:
    """The world job for one case. payload: {"case": Case.to_dict(), "combine": bool, "repeat": int}."""
    case = Case.from_dict(payload["case"])
    if payload.get("perf_probe"):
        return perf_info_probe(ctx, backend, case)
    p = case.params
    for r, changes in case.rank_overrides:
        if r == ctx.rank:
            p = p.replace(**dict(changes))
    env = dict(ctx.env)
    env.update(case.env_dict())
    ctx.env = env
    ctx.profile = case.profile
    inp = _inputs(case, p, ctx.rank)
    overrides = case.overrides_dict()
    result: dict[str, Any] = {"rank": ctx.rank, "runs": [], "timings": {}}
    repeat = int(payload.get("repeat", 1))
    perf = None
    for i in range(repeat):
        kw = dispatch_kwargs(p, inp, ctx, overrides, case.profile)
        if perf is not None and kw.get("performance_info") is not None:
            kw["performance_info"] = perf  # accumulate across calls, as the doc says
        t0 = time.perf_counter()
        with _op("dispatch"):
            d = backend.dispatch(ctx, **kw)
        result["timings"].setdefault("dispatch_s", []).append(time.perf_counter() - t0)
        perf = kw.get("performance_info")
        run = {"dispatch": {name: to_numpy(t) for name, t in zip(DISPATCH_OUTPUTS, d)}}
        if perf is not None:
            run["performance_info"] = to_numpy(perf).copy()
        result["runs"].append(run)
    if not payload.get("combine", True):
        return result
    out = result["runs"][-1]["dispatch"]
    valid = valid_rows_from(p, out["expert_token_nums"])
    expert_out = apply_experts(p, ctx.rank, out["expand_x"], out["dynamic_scales"], out["expert_token_nums"], valid)
    ckw = combine_kwargs(p, inp, ctx, d, expert_out, overrides)
    t0 = time.perf_counter()
    with _op(combine_op(p)):
        if p.combine_kind == "add_rms_norm":
            y, rstd, x = backend.combine_add_rms_norm(ctx, **ckw)
            result["combine"] = {"y": to_numpy(y), "rstd": to_numpy(rstd), "x": to_numpy(x)}
        else:
            result["combine"] = {"x": to_numpy(backend.combine(ctx, **ckw))}
    result["timings"]["combine_s"] = time.perf_counter() - t0
    result["expert_out_rows"] = valid
    return result


def perf_info_probe(ctx, backend, case) -> dict:
    """performance_info behaviour, deterministic (no timing comparisons between calls):
    zeros -> call -> call (accumulates); filled with a sentinel -> call (adds onto what is there);
    zeroed -> call (nothing of the sentinel remembered); and a call without it."""
    p = case.params.replace(performance_info=True)
    env = dict(ctx.env)
    env.update(case.env_dict())
    ctx.env = env
    inp = rank_inputs(p, case.seed, ctx.rank, case.routing)

    def call(perf):
        kw = dispatch_kwargs(p, inp, ctx)
        if perf is not None:
            kw["performance_info"] = perf
        return backend.dispatch(ctx, **kw), kw["performance_info"]

    _, perf = call(None)
    snaps = {"dtype": str(perf.dtype).replace("torch.", ""), "shape": list(perf.shape), "sentinel": PERF_SENTINEL}
    snaps["after_1"] = to_numpy(perf).copy()
    call(perf)
    snaps["after_2"] = to_numpy(perf).copy()
    perf.fill_(PERF_SENTINEL)
    call(perf)
    snaps["after_sentinel"] = to_numpy(perf).copy()
    perf.zero_()
    call(perf)
    snaps["after_zero"] = to_numpy(perf).copy()
    out = backend.dispatch(ctx, **dispatch_kwargs(p.replace(performance_info=False), inp, ctx))
    snaps["absent_outputs"] = len(out)
    return snaps


PERF_SENTINEL = 1 << 50  # far above any real accumulated time in ns, far below int64 overflow
