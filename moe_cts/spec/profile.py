"""Spec profiles: the constraint rows of a document version, compiled once, and the checker over them.

A profile is a YAML file in ``moe_cts/spec/profiles/`` (or any path). ``extends: <name>`` inherits every row of
another profile; ``remove: [ids]`` drops rows; a row whose id exists replaces it in place (``patch: true``
merges fields instead); a new row is appended, or inserted ``before: <id>``. Row order is the kernel's check
order (161001, 161002, 561002 attrs, shapes, buffer); see docs/spec.md for the expression namespace.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from moe_cts.model import (
    ACLNN_ERR_INNER_TILING_ERROR,
    ACLNN_ERR_PARAM_INVALID,
    ACLNN_ERR_PARAM_NULLPTR,
    MAX_INT32,
    OPS,
    PRODUCTS,
    CallDesc,
    OpParams,
    TensorDesc,
)
from moe_cts.binding import combine_attrs, dispatch_attrs
from moe_cts.spec import derived

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "v4-doc"  # the operator document itself: the suite's truth unless a fixture names a release
KINDS = ("checked", "precondition")
STATUSES = (ACLNN_ERR_PARAM_NULLPTR, ACLNN_ERR_PARAM_INVALID, ACLNN_ERR_INNER_TILING_ERROR)
MiB = derived.MiB
_OP_FIELDS = {f.name for f in dataclasses.fields(OpParams)}
_DEFAULT_DTYPE = {
    "x": "bfloat16", "expert_ids": "int32", "scales": "float32", "x_active_mask": "bool", "expert_scales": "float32",
    "elastic_info": "int32", "performance_info": "int64", "expand_x": "bfloat16", "dynamic_scales": "float32",
    "assist_info_for_combine": "int32", "expert_token_nums": "int64", "ep_recv_counts": "int32",
    "tp_recv_counts": "int32", "expand_scales": "float32",
}
_SKIP = (TypeError, ZeroDivisionError, ValueError, AttributeError, IndexError, KeyError)


@dataclass(frozen=True, eq=False)
class Constraint:
    id: str
    clause: str
    products: tuple
    comm_algs: tuple | None
    kind: str
    status: int | None
    params: tuple
    decision: str | None
    version: str
    # the predicate, as data
    when: str | None = None
    expr: str | None = None
    msg: str | None = None
    range: Mapping | None = None  # {var, param, min, max, step}
    enum: Mapping | None = None  # {var, param, values}
    buffer: Mapping | None = None  # {domain, need}
    breaker: tuple = ()
    scope: str = "call"  # "call" (one rank's CallDesc) | "world" (OpParams)
    ops: tuple = ("dispatch",)  # the calls the row applies to (moe_cts.model.OPS)
    source: str | None = None  # the real code the row encodes: repository @ tag/commit, path, the check

    @property
    def checkable(self) -> bool:
        return bool(self.expr or self.range or self.enum or self.buffer)


@dataclass(frozen=True)
class Violation:
    constraint: str
    status: int | None
    kind: str
    clause: str
    message: str


# ----------------------------------------------------------------------------------------------- namespaces
def _align(x, n):
    return (x + n - 1) // n * n


_HELPERS = {
    "__builtins__": {},
    "min": min, "max": max, "len": len, "abs": abs, "all": all, "any": any, "isinstance": isinstance, "str": str,
    "int": int, "tuple": tuple, "list": list, "ceil": math.ceil,
    "ceil_div": lambda a, b: -(-a // b),
    "align": _align, "align32": lambda x: _align(x, 32), "align512": lambda x: _align(x, 512),
    "a480_512": lambda x: (x + 480 - 1) // 480 * 512,
    "MiB": MiB, "MAX_INT32": MAX_INT32,
}


def effective_alg(product: str, comm_alg, env: Mapping) -> str | None:
    """The algorithm a call runs: A2 ""/null follow HCCL_INTRA_PCIE_ENABLE/ROCE; A3 ""/null mean fullmesh_v1."""
    if product == "A2":
        if comm_alg in (None, ""):
            pcie = str(env.get("HCCL_INTRA_PCIE_ENABLE", "0")) == "1"
            roce = str(env.get("HCCL_INTRA_ROCE_ENABLE", "1")) == "0"
            return "hierarchy" if (pcie and roce) else "fullmesh"
        return comm_alg
    if comm_alg in (None, "", "fullmesh_v1"):
        return "fullmesh_v1"
    return comm_alg


def call_namespace(call: CallDesc) -> dict:
    """The per-call expression namespace (documented in docs/spec.md)."""
    a, t, env = call.attrs, call.tensors, call.env

    def desc(n):
        return t.get(n)

    def has(n):
        return t.get(n) is not None

    def dt(n):
        d = t.get(n)
        return None if d is None else d.dtype

    def shp(n):
        d = t.get(n)
        return None if d is None else tuple(d.shape)

    def nd(n):
        d = t.get(n)
        return None if d is None else len(d.shape)

    def dim(n, i):
        d = t.get(n)
        if d is None or len(d.shape) <= i:
            return None
        return d.shape[i]

    ns = dict(_HELPERS)
    W = a.get("ep_world_size")
    S = a.get("shared_expert_rank_num")
    SE_raw = a.get("shared_expert_num")
    M = a.get("moe_expert_num")
    TP = a.get("tp_world_size")
    ep_rank = a.get("ep_rank_id")
    gbs = a.get("global_bs")
    ei = t.get("expert_ids")
    K = ei.shape[1] if ei is not None and len(ei.shape) >= 2 else None
    if call.op == "dispatch":
        x = t.get("x")
        bs = x.shape[0] if x is not None and len(x.shape) >= 1 else None
        H = x.shape[1] if x is not None and len(x.shape) >= 2 else None
    else:  # combine: Bs from expert_ids, H from expand_x
        ex = t.get("expand_x")
        bs = ei.shape[0] if ei is not None and len(ei.shape) >= 1 else None
        H = ex.shape[1] if ex is not None and len(ex.shape) >= 2 else None
    SE = 0 if (S == 0 and SE_raw == 1) else SE_raw
    try:
        Lmoe = M // (W - S) if W - S > 0 else None
    except TypeError:
        Lmoe = None
    try:
        shared = ep_rank < S
    except TypeError:
        shared = None
    L = 1 if shared else Lmoe
    try:
        maxBs = gbs // W if gbs else bs
    except (TypeError, ZeroDivisionError):
        maxBs = None
    try:
        rpse = S // SE if S and SE else None
        rpse = rpse or None
    except (TypeError, ZeroDivisionError):
        rpse = None
    A = None
    try:
        if shared:
            A = maxBs * math.ceil(W / rpse) if rpse else None
        else:
            A = (gbs or bs * W) * min(Lmoe, K)
    except TypeError:
        A = None
    buf_mb = env.get("HCCL_BUFFSIZE", 200)
    ns.update(
        has=has, dt=dt, shp=shp, nd=nd, dim=dim, desc=desc, env=env, product=call.product,
        W=W, S=S, SE_raw=SE_raw, SE=SE, M=M, TP=TP, T=max(TP, 1) if isinstance(TP, int) else None,
        ep_rank=ep_rank, tp_rank=a.get("tp_rank_id"), shard=a.get("expert_shard_type"),
        qm=a.get("quant_mode"), gbs=gbs, ett=a.get("expert_token_nums_type"), cqm=a.get("comm_quant_mode"),
        op=call.op,
        comm_alg=a.get("comm_alg"), alg=effective_alg(call.product, a.get("comm_alg"), env),
        Z=a.get("zero_expert_num"), C=a.get("copy_expert_num"), Q=a.get("const_expert_num"),
        group_ep=a.get("group_ep"), group_tp=a.get("group_tp"),
        bs=bs, H=H, K=K, maxBs=maxBs, shared=shared, Lmoe=Lmoe, L=L, rpse=rpse, A=A,
        HCCL_BUFFSIZE=buf_mb, buf=buf_mb * MiB if isinstance(buf_mb, (int, float)) else None,
    )
    return ns


def params_namespace(params: OpParams) -> dict:
    """The namespace of world-scope rows and of breaker '=expr' values: OpParams fields + a few derived values."""
    ns = dict(_HELPERS)
    ns.update(params.to_dict())
    ns["bs_per_rank"] = params.bs_per_rank
    ns["uniform"] = params.bs_per_rank is None or len(set(params.bs_per_rank)) <= 1
    ns["max_bs"] = max(params.bs_per_rank) if params.bs_per_rank else params.bs
    amax, lmax = 0, 1
    for g in representative_ranks(params):
        try:
            e = params.ep_rank(g)
            amax = max(amax, derived.a_rows(params, e))
            lmax = max(lmax, derived.local_expert_num(params, e))
        except (ValueError, ZeroDivisionError, TypeError, IndexError):
            pass
    ns["Amax"], ns["Lmax"] = amax, lmax
    return ns


def representative_ranks(params: OpParams) -> list[int]:
    """One global rank per distinct (shared?, Bs, tp_rank): every rank kind of the world, cheaply."""
    seen, out = set(), []
    W, T = params.ep_world_size, params.tp
    S = params.shared_expert_rank_num
    eps = range(W) if params.bs_per_rank is not None else sorted({0, max(min(S, W - 1), 0), max(W - 1, 0)})
    for e in eps:
        if e < 0 or e >= max(W, 1):
            continue
        for tr in range(T):
            try:
                key = (e < S, params.bs_of(e), tr)
            except IndexError:
                key = (e < S, params.bs, tr)
            if key not in seen:
                seen.add(key)
                out.append(e * T + tr)
    return out or [0]


# ----------------------------------------------------------------------------------------------- compiled rows
class _Compiled:
    __slots__ = ("row", "index", "when", "pred", "msg", "kind_checked", "lo", "hi", "step", "values", "var")

    def __init__(self, row: Constraint, index: int):
        self.row = row
        self.index = index
        self.kind_checked = row.kind == "checked"
        c = functools.partial(compile, mode="eval")
        self.when = c(row.when, f"<{row.id}.when>") if row.when else None
        self.pred = self.msg = self.lo = self.hi = self.var = None
        self.step = 1
        self.values = None
        if row.range:
            r = row.range
            self.var = c(str(r["var"]), f"<{row.id}.var>")
            self.lo = c(str(r["min"]), f"<{row.id}.min>")
            self.hi = c(str(r["max"]), f"<{row.id}.max>")
            self.step = int(r.get("step", 1))
        elif row.enum:
            self.var = c(str(row.enum["var"]), f"<{row.id}.var>")
            self.values = tuple(row.enum["values"])
        elif row.buffer:
            self.pred = c(str(row.buffer["need"]), f"<{row.id}.need>")
        elif row.expr:
            self.pred = c(row.expr, f"<{row.id}.expr>")
        if row.msg:
            self.msg = compile("f" + repr(row.msg), f"<{row.id}.msg>", "eval")

    def evaluate(self, ns) -> str | None:
        """None when satisfied or not applicable; else the violation message."""
        row = self.row
        if self.when is not None and not eval(self.when, ns):
            return None
        if self.var is not None and self.values is None:
            v = eval(self.var, ns)
            lo, hi = eval(self.lo, ns), eval(self.hi, ns)
            if v is None:
                raise TypeError
            if lo <= v <= hi:
                return None
            return f"{row.range['param']}={v} not in [{lo}, {hi}]"
        if self.values is not None:
            v = eval(self.var, ns)
            if v in self.values:
                return None
            return f"{row.enum['param']}={v!r} not in {list(self.values)!r}"
        if row.buffer is not None:
            need = eval(self.pred, ns)
            if ns["buf"] >= need:
                return None
            return (f"HCCL_BUFFSIZE={ns['HCCL_BUFFSIZE']} MB < required {math.ceil(need / MiB)} MB "
                    f"({row.buffer['domain']} domain, {need} bytes)")
        if self.pred is None:
            return None
        if eval(self.pred, ns):
            return None
        if self.msg is not None:
            return eval(self.msg, ns)
        return f"violated: {row.expr}"


# ----------------------------------------------------------------------------------------------- profile
class Profile:
    def __init__(self, name: str, rows: list[Constraint], parent: str | None = None, chain: tuple = ()):
        self.name = name
        self.parent = parent
        self.chain = chain or (name,)
        self.rows: tuple[Constraint, ...] = tuple(rows)
        self._by_id = {r.id: r for r in self.rows}
        compiled = [_Compiled(r, i) for i, r in enumerate(self.rows)]
        self._compiled = {c.row.id: c for c in compiled}
        self._call_rows = {(p, op): [c for c in compiled if p in c.row.products and op in c.row.ops
                                     and c.row.scope == "call" and c.row.checkable]
                           for p in PRODUCTS for op in OPS}
        self._world_rows = {p: [c for c in compiled if p in c.row.products and c.row.scope == "world" and c.row.checkable]
                            for p in PRODUCTS}

    def __repr__(self):
        return f"<Profile {self.name}: {len(self.rows)} rows>"

    def row(self, cid: str) -> Constraint:
        return self._by_id[cid]

    # -------------------------------------------------------------------------------------- checking
    def _violation(self, c: _Compiled, message: str) -> Violation:
        r = c.row
        return Violation(r.id, r.status if c.kind_checked else None, r.kind, r.clause, message)

    def check(self, call: CallDesc) -> list[Violation]:
        """Every violated (call-scope) row applicable to this call, in check order."""
        if call.product not in PRODUCTS:
            raise ValueError(f"unknown product {call.product!r}; expected one of {PRODUCTS}")
        if call.op not in OPS:
            raise ValueError(f"unknown op {call.op!r}; expected one of {OPS}")
        ns = call_namespace(call)
        alg = ns["alg"]
        out = []
        for c in self._call_rows[(call.product, call.op)]:
            ca = c.row.comm_algs
            if ca is not None and alg not in ca:
                continue
            try:
                m = c.evaluate(ns)
            except _SKIP:
                continue  # an undefined input: the row that defines it reports the root cause
            if m is not None:
                out.append(self._violation(c, m))
        return out

    def first_error(self, call: CallDesc) -> Violation | None:
        """The violation the kernel reports for this call: the first violated checked row (None if none)."""
        for v in self.check(call):
            if v.kind == "checked":
                return v
        return None

    def check_world(self, params: OpParams, *, env: Mapping | None = None) -> list[Violation]:
        """World-scope rows (evaluated over OpParams, not visible to one rank's kernel)."""
        rows = self._world_rows[params.product]
        if not rows:
            return []
        ns = params_namespace(params)
        alg = effective_alg(params.product, params.comm_alg, {"HCCL_BUFFSIZE": 200, **(env or {})})
        out = []
        for c in rows:
            if c.row.comm_algs is not None and alg not in c.row.comm_algs:
                continue
            try:
                m = c.evaluate(ns)
            except _SKIP:
                continue
            if m is not None:
                out.append(self._violation(c, m))
        return out

    def check_params(self, params: OpParams, *, env: Mapping | None = None,
                     overrides: Mapping | None = None) -> list[Violation]:
        """Union of check() over every rank kind of the world, dispatch and then combine (dedup by id, check
        order) + world-scope rows. A case runs both calls, so it is legal only if both are."""
        if params.product not in PRODUCTS:
            raise ValueError(f"unknown product {params.product!r}; expected one of {PRODUCTS}")
        found: dict[str, Violation] = {}
        for g in representative_ranks(params):
            for v in self.check(self.call_desc(params, g, env=env, overrides=overrides)):
                found.setdefault(v.constraint, v)
            for v in self.check(make_combine_call_desc(params, g, env=env, overrides=overrides)):
                found.setdefault(v.constraint, v)
        for v in self.check_world(params, env=env):
            found.setdefault(v.constraint, v)
        return sorted(found.values(), key=lambda v: self._compiled[v.constraint].index)

    # -------------------------------------------------------------------------------------- call descriptions
    def call_desc(self, params: OpParams, rank: int, *, env: Mapping | None = None,
                  overrides: Mapping | None = None) -> CallDesc:
        return make_call_desc(params, rank, env=env, overrides=overrides)

    # -------------------------------------------------------------------------------------- derived via rows
    def hccl_buffsize_min_mb(self, params: OpParams, domain: str = "ep", *, env: Mapping | None = None) -> int:
        """ceil(MB) the applicable HCCL_BUFFSIZE rows of `domain` require, max over rank kinds (0 if none)."""
        if domain not in ("ep", "tp"):
            raise ValueError(f"domain must be 'ep' or 'tp', got {domain!r}")
        best = 0
        for g in representative_ranks(params):
            ns = call_namespace(make_call_desc(params, g, env=env))
            for c in self._call_rows[(params.product, "dispatch")]:
                r = c.row
                if r.buffer is None or r.buffer["domain"] != domain:
                    continue
                if r.comm_algs is not None and ns["alg"] not in r.comm_algs:
                    continue
                try:
                    if c.when is not None and not eval(c.when, ns):
                        continue
                    need = eval(c.pred, ns)
                except _SKIP:
                    continue
                best = max(best, math.ceil(need / MiB))
        return best

    def _row_need_mb(self, r: Constraint, params: OpParams) -> int:
        c, best = self._compiled[r.id], 0
        for g in representative_ranks(params):
            ns = call_namespace(make_call_desc(params, g))
            if r.comm_algs is not None and ns["alg"] not in r.comm_algs:
                continue
            try:
                if c.when is not None and not eval(c.when, ns):
                    continue
                best = max(best, math.ceil(eval(c.pred, ns) / MiB))
            except _SKIP:
                continue
        return best

    # -------------------------------------------------------------------------------------- generators' helpers
    def boundary_values(self, cid: str, params: OpParams | None = None) -> list[tuple[str, Any]]:
        """Legal values at the edges of a range row (min, max, interior) or every value of an enum row.

        Bounds written as expressions (e.g. ``W - 1``) need ``params`` (rank 0's namespace resolves them);
        without it such bounds are left out.
        """
        r = self.row(cid)
        if r.enum:
            return [(r.enum["param"], v) for v in r.enum["values"]]
        if not r.range:
            return []
        c = self._compiled[cid]
        ns = call_namespace(make_call_desc(params, 0)) if params is not None else dict(_HELPERS)
        try:
            lo, hi = eval(c.lo, ns), eval(c.hi, ns)
        except (NameError, *_SKIP):
            return []
        step = c.step
        mid = (lo + hi) // 2 // step * step
        vals = [lo, hi] + ([mid] if lo < mid < hi else [])
        return [(r.range["param"], v) for v in vals]

    def _auto_breakers(self, r: Constraint, params: OpParams) -> list[dict]:
        out = []
        if r.range:
            b = self.boundary_values(r.id, params)
            if len(b) >= 2:
                step = int(r.range.get("step", 1))
                lo, hi = b[0][1], b[1][1]
                for v in (hi + step, lo - step):
                    out.append(_param_set(r.range["param"], v))
        elif r.buffer:
            out.append({"buffer_under": True})
        elif r.enum:
            vals = list(r.enum["values"])
            param = r.enum["param"]
            ints = [v for v in vals if isinstance(v, int) and not isinstance(v, bool)]
            if ints:
                cands = [max(ints) + 1, min(ints) - 1]
                cands += [v for v in range(min(ints), max(ints)) if v not in vals][:1]
            elif param.endswith(".dtype"):
                cands = [d for d in ("float32", "float16", "int8", "int32") if d not in vals][:2]
            else:
                cands = ["bogus"]
            out += [_param_set(param, v) for v in cands]
        return out

    def break_case(self, params: OpParams, cid: str) -> tuple[OpParams, dict] | None:
        """A variant of legal ``params`` (plus overrides) that violates exactly checked row ``cid``, or None."""
        r = self.row(cid)
        if r.kind != "checked" or params.product not in r.products:
            return None
        if self.checked_ids(params):
            return None  # base must be legal
        pns = params_namespace(params)
        cands = list(r.breaker) + self._auto_breakers(r, params)
        if r.buffer is not None:  # explicit breakers of buffer rows only move the base onto the row
            cands = [{}] + list(r.breaker)
        for cand in cands:
            try:
                if cand.get("when") and not eval(compile(cand["when"], "<when>", "eval"), pns):
                    continue
                sets = {k: _resolve(v, pns) for k, v in (cand.get("set") or {}).items()}
                ovs = {k: _resolve(v, pns) for k, v in (cand.get("override") or {}).items()}
            except (NameError, SyntaxError, *_SKIP):
                continue
            newp = _replace(params, sets)
            if newp is None:
                continue
            if r.buffer is not None:  # one MB under this row's minimum, computed on the modified params
                fixed = self._fixup(params, newp, ovs, {"any.moeExpertNum.divisible", "any.globalBs.value"}
                                    & set(self.checked_ids(newp, overrides=ovs)))
                if fixed is None:
                    continue
                newp, ovs = fixed
                need = self._row_need_mb(r, newp)
                if need <= 0:
                    continue
                ovs = {**ovs, "env.HCCL_BUFFSIZE": need - 1}
            for _ in range(4):
                try:
                    ids = self.checked_ids(newp, overrides=ovs)
                except _SKIP:
                    break
                if ids == [cid]:
                    return newp, ovs
                if cid not in ids:
                    break
                fixed = self._fixup(params, newp, ovs, set(ids) - {cid})
                if fixed is None:
                    break
                newp, ovs = fixed
        return None

    def _fixup(self, base: OpParams, p: OpParams, ovs: dict, extra: set):
        """Repair side effects of a breaker (divisibility, globalBs, buffer) without touching the target row."""
        changes, ovs = {}, dict(ovs)
        if "any.moeExpertNum.divisible" in extra:
            lm = derived.moe_local_expert_num(base) or 1
            changes["moe_expert_num"] = max(p.ep_world_size - p.shared_expert_rank_num, 1) * lm
        if "any.globalBs.value" in extra:
            changes["global_bs"] = p.bs * p.ep_world_size if p.global_bs else 0
        if any(".hcclBuffsize." in x for x in extra):
            q = _replace(p, changes) or p
            need = max(self.hccl_buffsize_min_mb(q, "ep"), self.hccl_buffsize_min_mb(q, "tp"))
            ovs["env.HCCL_BUFFSIZE"] = need
        handled = {"any.moeExpertNum.divisible", "any.globalBs.value"} | {x for x in extra if ".hcclBuffsize." in x}
        if not extra <= handled:
            return None
        q = _replace(p, changes)
        return (q, ovs) if q is not None else None

    def checked_ids(self, params: OpParams, *, env=None, overrides=None) -> list[str]:
        return [v.constraint for v in self.check_params(params, env=env, overrides=overrides) if v.kind == "checked"]


def _param_set(param: str, value) -> dict:
    if param in _OP_FIELDS:
        return {"set": {param: value}}
    if param.startswith(("tensors.", "attrs.", "env.", COMBINE_PREFIX)):
        return {"override": {param: value}}
    return {"override": {f"attrs.{param}": value}}


def _resolve(v, ns):
    if isinstance(v, str) and v.startswith("="):
        return eval(compile(v[1:], "<breaker>", "eval"), ns)
    return v


def _replace(p: OpParams, sets: Mapping) -> OpParams | None:
    if not sets:
        return p
    try:
        q = p.replace(**sets)
    except (TypeError, ValueError):
        return None
    if q.bs_per_rank is not None and (len(q.bs_per_rank) != q.ep_world_size or max(q.bs_per_rank) != q.bs):
        return None
    return q


# ----------------------------------------------------------------------------------------------- CallDesc
def make_call_desc(params: OpParams, rank: int, *, env: Mapping | None = None,
                   overrides: Mapping | None = None) -> CallDesc:
    """Global rank ``rank``'s dispatch call for this case (rank layout: moe_cts.model docstring)."""
    attrs = dispatch_attrs(params, rank, group_ep="ep", group_tp="tp")
    tensors: dict[str, TensorDesc | None] = dict(derived.input_descs(params, rank))
    tensors.update(derived.output_descs(params, rank))
    envd = {"HCCL_BUFFSIZE": 200}
    if env:
        envd.update(env)
    if overrides:
        for path, value in overrides.items():
            if not path.startswith(COMBINE_PREFIX):
                _apply_override(path, value, attrs, tensors, envd)
    return CallDesc(params.product, attrs, tensors, envd)


COMBINE_PREFIX = "combine."  # overrides of the combine call: combine.tensors.NAME..., combine.attrs.NAME


def make_combine_call_desc(params: OpParams, rank: int, *, env: Mapping | None = None,
                           overrides: Mapping | None = None) -> CallDesc:
    """Global rank ``rank``'s combine call for this case (the flavour params.combine_kind names)."""
    attrs = combine_attrs(params, rank, group_ep="ep", group_tp="tp")
    tensors: dict[str, TensorDesc | None] = dict(derived.combine_input_descs(params, rank))
    envd = {"HCCL_BUFFSIZE": 200}
    if env:
        envd.update(env)
    if overrides:
        for path, value in overrides.items():
            if path.startswith(COMBINE_PREFIX):
                _apply_override(path[len(COMBINE_PREFIX):], value, attrs, tensors, envd)
            elif path.startswith("env."):
                _apply_override(path, value, attrs, tensors, envd)
    return CallDesc(params.product, attrs, tensors, envd, op=derived.combine_op(params))


def _apply_override(path: str, value, attrs: dict, tensors: dict, env: dict) -> None:
    parts = path.split(".")
    head = parts[0]
    if head == "attrs" and len(parts) == 2:
        attrs[parts[1]] = value
    elif head == "env" and len(parts) == 2:
        env[parts[1]] = value
    elif head == "tensors" and len(parts) == 2:
        tensors[parts[1]] = _as_desc(parts[1], value)
    elif head == "tensors" and len(parts) == 3 and parts[2] in ("dtype", "shape"):
        name, fld = parts[1], parts[2]
        cur = tensors.get(name) or TensorDesc(_DEFAULT_DTYPE.get(name, "float32"), ())
        if fld == "dtype":
            tensors[name] = TensorDesc(str(value), cur.shape)
        else:
            tensors[name] = TensorDesc(cur.dtype, tuple(int(x) for x in value))
    else:
        raise ValueError(f"bad override path {path!r}: expected attrs.NAME, env.NAME, tensors.NAME[.dtype|.shape]")


def _as_desc(name: str, value) -> TensorDesc | None:
    if value is None or isinstance(value, TensorDesc):
        return value
    if isinstance(value, Mapping):
        return TensorDesc(str(value.get("dtype", _DEFAULT_DTYPE.get(name, "float32"))),
                          tuple(int(x) for x in value.get("shape", ())))
    raise ValueError(f"tensors.{name}: expected null or {{dtype, shape}}, got {value!r}")


# ----------------------------------------------------------------------------------------------- loading
def _profile_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return PROFILE_DIR / f"{name}.yaml"


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _row_from_dict(d: Mapping, version: str) -> Constraint:
    kind = d.get("kind", "checked")
    if kind not in KINDS:
        raise ValueError(f"row {d.get('id')}: kind {kind!r} not in {KINDS}")
    status = d.get("status")
    if kind == "checked" and status not in STATUSES:
        raise ValueError(f"row {d.get('id')}: checked rows need a status in {STATUSES}")
    if kind == "precondition":
        status = None
    ca = d.get("comm_algs")
    return Constraint(
        id=str(d["id"]), clause=str(d.get("clause", "")), products=tuple(d.get("products", PRODUCTS)),
        comm_algs=tuple(ca) if ca is not None else None, kind=kind, status=status,
        params=tuple(d.get("params", ())), decision=d.get("decision"), version=str(d.get("version", version)),
        when=d.get("when"), expr=d.get("expr"), msg=d.get("msg"), range=d.get("range"), enum=d.get("enum"),
        buffer=d.get("buffer"), breaker=tuple(d.get("breaker") or ()), scope=d.get("scope", "call"),
        ops=_ops(d), source=d.get("source"),
    )


def _ops(d: Mapping) -> tuple:
    ops = tuple(d.get("ops") or ("dispatch",))
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ValueError(f"row {d.get('id')}: ops {bad} not in {OPS}")
    return ops


def _row_to_dict(r: Constraint) -> dict:
    d = dataclasses.asdict(r)
    d["products"] = list(r.products)
    d["comm_algs"] = list(r.comm_algs) if r.comm_algs is not None else None
    d["params"] = list(r.params)
    d["breaker"] = list(r.breaker)
    d["ops"] = list(r.ops)
    return d


@functools.lru_cache(maxsize=None)
def load_profile(name: str = DEFAULT_PROFILE) -> Profile:
    """Load (cached) a profile by name (moe_cts/spec/profiles/NAME.yaml) or by path to a YAML file."""
    path = _profile_path(name)
    if not path.is_file():
        raise ValueError(f"unknown spec profile {name!r} (known: {', '.join(known_profiles())})")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    pname = str(data.get("profile") or path.stem)
    parent_name = data.get("extends")
    if parent_name:
        parent = load_profile(parent_name if _profile_path(parent_name).is_file() else str(path.parent / f"{parent_name}.yaml"))
        rows = [_row_to_dict(r) for r in parent.rows]
        chain = (pname,) + parent.chain
    else:
        rows, chain = [], (pname,)
    ids = [r["id"] for r in rows]
    remove = set(data.get("remove") or ())
    unknown = remove - set(ids)
    if unknown:
        raise ValueError(f"profile {pname}: remove names unknown rows {sorted(unknown)}")
    rows = [r for r in rows if r["id"] not in remove]
    for d in data.get("rows") or ():
        d = dict(d)
        d.setdefault("version", pname)
        idx = next((i for i, r in enumerate(rows) if r["id"] == d["id"]), None)
        if idx is not None:
            if d.pop("patch", False):
                merged = dict(rows[idx])
                merged.update(d)
                d = merged
            rows[idx] = d
        elif d.get("before"):
            j = next((i for i, r in enumerate(rows) if r["id"] == d["before"]), None)
            if j is None:
                raise ValueError(f"profile {pname}: row {d['id']} before unknown row {d['before']}")
            rows.insert(j, d)
        else:
            rows.append(d)
    built = [_row_from_dict({k: v for k, v in r.items() if k not in ("before", "patch")}, pname) for r in rows]
    seen = set()
    for r in built:
        if r.id in seen:
            raise ValueError(f"profile {pname}: duplicate row id {r.id}")
        seen.add(r.id)
    return Profile(pname, built, parent=parent_name, chain=chain)
