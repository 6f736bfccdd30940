"""`moe-cts check`: pre-flight validation of one dispatch parameter set against the spec profile.

Exit status: 0 legal, 1 illegal (any violated constraint), 2 unusable input (one line on stderr).
Input schema: docs/spec.md ("moe-cts check").
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import yaml

from moe_cts.model import DTYPES, PRODUCTS, STATUS_NAMES, OpParams
from moe_cts.spec import DEFAULT_PROFILE

_FIELDS = {f.name: f for f in dataclasses.fields(OpParams)}
_HINTS = typing.get_type_hints(OpParams)
REQUIRED = ("product", "ep_world_size", "moe_expert_num", "bs", "h", "k")
ENV_KEYS = ("HCCL_BUFFSIZE", "HCCL_INTRA_PCIE_ENABLE", "HCCL_INTRA_ROCE_ENABLE")
_CHOICES = {
    "product": PRODUCTS,
    "x_dtype": DTYPES,
    "x_active_mask": ("none", "1d", "2d"),
    "combine_kind": ("v4", "add_rms_norm"),
    "const_alpha": ("scalar", "vector"),
}


class UsageError(Exception):
    """Unusable input: reported as one line on stderr, exit 2."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a dispatch parameter set against the spec (exit 0 legal, 1 illegal, 2 bad input)",
        description="Validate one aclnnMoeDistributeDispatchV4 parameter set against the spec profile: "
        "every violated constraint (id, doc clause, status), then derived output shapes and the HCCL_BUFFSIZE minimum.",
    )
    p.add_argument("file", nargs="?", help="YAML or JSON file with the parameter set (schema: docs/spec.md)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set one value (OpParams field, env.NAME, tensors.NAME.dtype|shape, attrs.NAME); repeatable")
    p.add_argument("--product", choices=None, help="shorthand for --set product=...")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"spec profile name or YAML path (default {DEFAULT_PROFILE})")
    p.add_argument("--op", choices=["all", "dispatch", "combine"], default="all",
                   help="judge the dispatch call, the combine call (the flavour combine_kind names) or both (default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    def _error(message):
        sys.stderr.write(f"moe-cts check: error: {message}\n")
        sys.exit(2)

    p.error = _error
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from moe_cts.spec import load_profile

        try:
            prof = load_profile(args.profile)
        except ValueError as e:
            raise UsageError(str(e)) from None
        raw = _read_input(args)
        params, env, overrides = build(raw)
        report = evaluate(prof, params, env, overrides, op=args.op)
    except UsageError as e:
        sys.stderr.write(f"moe-cts check: error: {e}\n")
        return 2
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(render(report))
    return 0 if report["legal"] else 1


# ------------------------------------------------------------------------------------------ input
def _read_input(args) -> dict:
    raw: dict = {}
    if args.file:
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {e.strerror or e}") from None
        try:
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise UsageError(f"{args.file} is not valid YAML/JSON{where}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UsageError(f"{args.file}: expected a mapping of parameter names to values")
        raw.update(data)
    if args.product:
        raw["product"] = args.product
    for item in args.sets:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise UsageError(f"--set {item!r}: empty key")
        _put(raw, key, _parse_value(text))
    return raw


def _parse_value(text: str):
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _put(raw: dict, key: str, value) -> None:
    head, _, rest = key.partition(".")
    if rest and head == "env":
        raw.setdefault("env", {})[rest] = value
    elif rest and head in ("tensors", "attrs", "combine"):
        raw.setdefault("overrides", {})[key] = value
    elif rest and head == "overrides":
        raw.setdefault("overrides", {})[rest] = value
    else:
        raw[key] = value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def build(raw: dict) -> tuple[OpParams, dict, dict]:
    """Validate the raw mapping into (OpParams, env, overrides); UsageError on anything unusable."""
    raw = dict(raw)
    env = raw.pop("env", None) or {}
    if not isinstance(env, dict):
        raise UsageError("env: expected a mapping, e.g. {HCCL_BUFFSIZE: 200}")
    for k in ENV_KEYS:
        if k in raw:
            env[k] = raw.pop(k)
    for k, v in env.items():
        if k not in ENV_KEYS:
            raise UsageError(f"unknown env key {k!r} (known: {', '.join(ENV_KEYS)})")
        if not _is_int(v):
            raise UsageError(f"env.{k}: expected an integer, got {v!r}")
    overrides = raw.pop("overrides", None) or {}
    if not isinstance(overrides, dict):
        raise UsageError("overrides: expected a mapping of dotted paths to values")
    tensors = raw.pop("tensors", None)
    if tensors is not None:
        if not isinstance(tensors, dict):
            raise UsageError("tensors: expected a mapping NAME: null | {dtype, shape}")
        for name, spec in tensors.items():
            if spec is None:
                overrides[f"tensors.{name}"] = None
            elif isinstance(spec, dict):
                for fld, v in spec.items():
                    if fld not in ("dtype", "shape"):
                        raise UsageError(f"tensors.{name}.{fld}: unknown field (dtype, shape)")
                    overrides[f"tensors.{name}.{fld}"] = v
            else:
                raise UsageError(f"tensors.{name}: expected null or {{dtype, shape}}")
    for path, v in overrides.items():
        _check_override(path, v)
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} (see docs/spec.md for the schema)")
    if "bs" not in raw and isinstance(raw.get("bs_per_rank"), list) and raw["bs_per_rank"]:
        raw["bs"] = max(raw["bs_per_rank"]) if all(_is_int(b) for b in raw["bs_per_rank"]) else None
    if "product" in raw and raw["product"] not in PRODUCTS:
        raise UsageError(f"unknown product {raw['product']!r} (expected one of {', '.join(PRODUCTS)})")
    missing = [k for k in REQUIRED if raw.get(k) is None]
    if missing:
        raise UsageError(f"missing required value {missing[0]!r} (required: {', '.join(REQUIRED)})")
    kw = {}
    for k, v in raw.items():
        kw[k] = _coerce(k, v)
    p = OpParams(**kw)
    if p.bs_per_rank is not None:
        if len(p.bs_per_rank) != p.ep_world_size:
            raise UsageError(f"bs_per_rank has {len(p.bs_per_rank)} values, expected ep_world_size={p.ep_world_size}")
        if max(p.bs_per_rank) != p.bs:
            raise UsageError(f"bs={p.bs} must equal max(bs_per_rank)={max(p.bs_per_rank)}")
    if p.ep_world_size < 1:
        raise UsageError(f"ep_world_size={p.ep_world_size}: a world needs at least one rank")
    return p, env, overrides


def _coerce(k: str, v):
    hint = _HINTS[k]
    if k in _CHOICES:
        if v not in _CHOICES[k]:
            raise UsageError(f"{k}={v!r}: expected one of {', '.join(map(str, _CHOICES[k]))}")
        return v
    if k == "comm_alg":
        if v is None or isinstance(v, str):
            return v
        raise UsageError(f"comm_alg={v!r}: expected a string or null")
    if k == "bs_per_rank":
        if v is None:
            return None
        if not isinstance(v, list) or not all(_is_int(b) for b in v):
            raise UsageError("bs_per_rank: expected a list of integers")
        return tuple(v)
    if hint is bool:
        if isinstance(v, bool):
            return v
        if v in (0, 1):
            return bool(v)
        raise UsageError(f"{k}={v!r}: expected true or false")
    if hint is int:
        if not _is_int(v):
            raise UsageError(f"{k}={v!r}: expected an integer")
        return v
    if hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"{k}={v!r}: expected a number")
        return float(v)
    return v


def _check_override(path: str, v) -> None:
    parts = path.split(".")
    if parts[0] == "combine" and len(parts) > 1:  # the combine call: combine.tensors.NAME..., combine.attrs.NAME
        try:
            return _check_override(".".join(parts[1:]), v)
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
    if parts[0] == "attrs" and len(parts) == 2:
        return
    if parts[0] == "tensors" and len(parts) == 2:
        if v is None or (isinstance(v, dict) and set(v) <= {"dtype", "shape"}):
            return
        raise UsageError(f"{path}: expected null or {{dtype, shape}}")
    if parts[0] == "tensors" and len(parts) == 3 and parts[2] == "dtype":
        if v not in DTYPES:
            raise UsageError(f"{path}={v!r}: expected one of {', '.join(DTYPES)}")
        return
    if parts[0] == "tensors" and len(parts) == 3 and parts[2] == "shape":
        if isinstance(v, list) and all(_is_int(d) and d >= 0 for d in v):
            return
        raise UsageError(f"{path}={v!r}: expected a list of non-negative integers")
    raise UsageError(f"bad path {path!r}: expected attrs.NAME, tensors.NAME, tensors.NAME.dtype or tensors.NAME.shape")


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(prof, params: OpParams, env: dict, overrides: dict, op: str = "all") -> dict:
    from moe_cts.spec import derived
    from moe_cts.spec.profile import representative_ranks

    try:
        violations = prof.check_params(params, env=env, overrides=overrides)
    except ValueError as e:
        raise UsageError(str(e)) from None

    def call_of(v):
        ops = prof.row(v.constraint).ops
        return "dispatch" if "dispatch" in ops else derived.combine_op(params)

    if op != "all":
        violations = [v for v in violations if (call_of(v) == "dispatch") == (op == "dispatch")]
    checked = [v for v in violations if v.kind == "checked"]
    rank_kinds = []
    for g in representative_ranks(params):
        e = params.ep_rank(g)
        entry = {"rank": g, "ep_rank": e, "tp_rank": params.tp_rank(g),
                 "kind": "shared-expert" if e < params.shared_expert_rank_num else "moe-expert", "bs": params.bs_of(e)}
        for key, fn in (("local_expert_num", lambda: derived.local_expert_num(params, e)),
                        ("a", lambda: derived.a_rows(params, e, "kernel")),
                        ("a_doc", lambda: derived.a_rows(params, e, "doc"))):
            try:
                entry[key] = fn()
            except (ValueError, ZeroDivisionError, IndexError):
                entry[key] = None
        try:
            entry["outputs"] = {n: {"dtype": d.dtype, "shape": list(d.shape)}
                                for n, d in derived.output_descs(params, g).items()}
        except (ValueError, ZeroDivisionError, IndexError):
            entry["outputs"] = None
        rank_kinds.append(entry)
    buf = {}
    for dom in ("ep", "tp"):
        try:
            buf[dom] = prof.hccl_buffsize_min_mb(params, dom, env=env)
        except (ValueError, ZeroDivisionError):
            buf[dom] = None
    return {
        "legal": not violations,
        "profile": prof.name,
        "product": params.product,
        "params": params.to_dict(),
        "env": {"HCCL_BUFFSIZE": 200, **env},
        "overrides": overrides,
        "violations": [
            {"constraint": v.constraint, "op": call_of(v), "kind": v.kind, "status": v.status,
             "status_name": STATUS_NAMES.get(v.status) if v.status else None,
             "clause": v.clause, "message": v.message}
            for v in violations
        ],
        "kernel_status": checked[0].status if checked else None,
        "kernel_constraint": checked[0].constraint if checked else None,
        "kernel_op": call_of(checked[0]) if checked else None,
        "rank_kinds": rank_kinds,
        "hccl_buffsize_min_mb": buf,
    }


def render(r: dict) -> str:
    out = []
    p = r["params"]
    out.append(f"moe-cts check: {r['product']}  profile {r['profile']}  W={p['ep_world_size']} M={p['moe_expert_num']} "
               f"bs={p['bs']} h={p['h']} k={p['k']} tp={p['tp_world_size']} S={p['shared_expert_rank_num']} "
               f"SE={p['shared_expert_num']} quant_mode={p['quant_mode']} comm_alg={p['comm_alg']!r}")
    if r["legal"]:
        out.append("LEGAL: no constraint violated")
    else:
        out.append(f"ILLEGAL: {len(r['violations'])} violated constraint(s)")
        for v in r["violations"]:
            tag = f"{v['status']} {v['status_name']}" if v["kind"] == "checked" else "precondition (no error promised)"
            out.append(f"  [{tag}] {v['op']}: {v['constraint']}: {v['message']}")
            out.append(f"      doc: {v['clause']}")
        if r["kernel_status"]:
            out.append(f"the kernel must return {r['kernel_status']} from {r['kernel_op']} "
                       f"(first check to fail: {r['kernel_constraint']})")
    out.append("derived (one rank of each kind):")
    for k in r["rank_kinds"]:
        out.append(f"  rank {k['rank']} (ep {k['ep_rank']}, tp {k['tp_rank']}, {k['kind']}, bs {k['bs']}): "
                   f"localExpertNum={k['local_expert_num']} A={k['a']} (doc formula: {k['a_doc']})")
        for n, d in (k["outputs"] or {}).items():
            out.append(f"      {n:<24} {d['dtype']:<9} {tuple(d['shape'])}")
    b = r["hccl_buffsize_min_mb"]
    out.append(f"HCCL_BUFFSIZE minimum: ep {b['ep']} MB, tp {b['tp']} MB (set: {r['env']['HCCL_BUFFSIZE']} MB)")
    return "\n".join(out)
