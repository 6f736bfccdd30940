"""Per-output comparison policy and mismatch diagnostics.

Policy (DESIGN.md "Normative vs implementation-defined"):

| output                  | class                  | rule                                                      |
|-------------------------|------------------------|-----------------------------------------------------------|
| expand_x                | normative (per expert) | the multiset of rows of each local expert, exact bytes     |
| expand_x row order      | implementation-defined | exact order of the reference (kernel-behaviour.md §1)      |
| dynamic_scales          | normative              | exact, travels with its row; optional hw tolerance         |
| expert_token_nums       | normative              | exact                                                     |
| expand_scales           | normative where the product produces it (A2), exact        |
| assist_info_for_combine | implementation-defined | exact over the written region                             |
| ep_recv_counts          | implementation-defined | exact over the count region                               |
| tp_recv_counts          | implementation-defined | exact                                                     |
| combine x (y, rstd)     | normative              | within 1 ulp of x's dtype on active tokens                 |

Rows past the valid count are undefined and never compared. A *failure* is a conformance
violation; a *drift* is a change of an implementation-defined output (reported, not failed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_LISTED = 8  # rows listed per finding; the count says how many in all


@dataclass(frozen=True)
class Tolerance:
    """Hardware tolerance: off by default; printed in every report when on."""

    int8_steps: int = 0
    scale_rel: float = 0.0
    combine_ulps: int = 1

    @property
    def active(self) -> bool:
        return self.int8_steps > 0 or self.scale_rel > 0

    def describe(self) -> str:
        return (f"tolerance: int8 +-{self.int8_steps} step(s), dynamic_scales rel {self.scale_rel:g}, "
                f"combine {self.combine_ulps} ulp")


EXACT = Tolerance()


@dataclass
class Finding:
    severity: str  # "fail" | "drift"
    rank: int
    output: str
    wrong: int
    total: int
    detail: str  # multi-line, names rows, experts, source tokens, expected vs actual

    def headline(self, case_id: str) -> str:
        kind = "conformance failure" if self.severity == "fail" else "implementation-defined drift"
        return f"[{kind}] case {case_id}, rank {self.rank}, output {self.output}: {self.wrong} of {self.total} wrong"


@dataclass
class Comparison:
    case_id: str
    findings: list[Finding] = field(default_factory=list)
    tolerance: Tolerance = EXACT

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "fail"]

    @property
    def drifts(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "drift"]

    def report(self, which: str = "all") -> str:
        items = {"all": self.findings, "fail": self.failures, "drift": self.drifts}[which]
        lines = []
        if self.tolerance.active:
            lines.append(self.tolerance.describe())
        for f in items:
            lines.append(f.headline(self.case_id))
            lines.extend("    " + ln for ln in f.detail.splitlines())
        return "\n".join(lines)

    def add(self, severity, rank, output, wrong, total, detail):
        self.findings.append(Finding(severity, rank, output, int(wrong), int(total), detail))


# ----------------------------------------------------------------------------------------------
def _bits(a: np.ndarray) -> np.ndarray:
    """A view on which == means bit-identical (NaN == NaN with the same payload, -0 != +0)."""
    a = np.ascontiguousarray(a)
    size = a.dtype.itemsize
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])


def _rows(a: np.ndarray) -> np.ndarray:
    """(n, -1) view that also works for n == 0 (numpy cannot infer -1 from an empty array)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))


def _fmt(v) -> str:
    v = np.asarray(v)
    if v.dtype.kind == "f" or v.dtype.name == "bfloat16":
        return np.array2string(v.astype(np.float32), precision=6, max_line_width=200, threshold=8, edgeitems=3)
    return np.array2string(v, max_line_width=200, threshold=8, edgeitems=3)


def _tag(row, tags) -> str:
    if tags is None:
        return "?"
    try:
        src, tok = tags(row)
        return f"(rank {src}, token {tok})"
    except Exception:  # a row that carries no readable tag is itself a finding, not a crash
        return "(no readable tag)"


def _local_expert_of_rows(etn: np.ndarray, ent_type: int, n: int) -> np.ndarray:
    etn = np.asarray(etn, dtype=np.int64)
    counts = np.diff(np.concatenate([[0], etn])) if ent_type == 0 else etn
    counts = np.clip(counts, 0, None)
    return np.repeat(np.arange(len(counts)), counts)[:n]


def compare_dispatch(case_id: str, params, rank: int, ref: dict, got: dict, *, tags=None,
                     tolerance: Tolerance = EXACT, cmp: Comparison | None = None, product: str | None = None,
                     source_of_row=None) -> Comparison:
    """Compare one rank's dispatch outputs with the reference's.

    ``tags(row) -> (src_rank, token)`` decodes a payload row; ``source_of_row(i)`` gives the
    reference's (src, token, k) for expected row i where known (A3 assist_info triples).
    """
    cmp = cmp or Comparison(case_id, tolerance=tolerance)
    product = product or params.product
    ent_type = params.expert_token_nums_type

    # --- expert_token_nums: normative, exact ---
    e_ref, e_got = np.asarray(ref["expert_token_nums"]), np.asarray(got["expert_token_nums"])
    if e_ref.shape != e_got.shape or not np.array_equal(e_ref, e_got):
        n = max(e_ref.size, e_got.size)
        bad = [i for i in range(n) if i >= e_ref.size or i >= e_got.size or e_ref[i] != e_got[i]]
        cmp.add("fail", rank, "expert_token_nums", len(bad), n,
                f"expected {_fmt(e_ref)} ({'cumulative' if ent_type == 0 else 'counts'}, expert_token_nums_type={ent_type})\n"
                f"actual   {_fmt(e_got)}\nfirst wrong local expert index: {bad[0]}")
    n_ref = int(ref["valid_rows"])
    n_got = n_ref
    if e_got.size:
        n_got = int(e_got[-1]) if ent_type == 0 else int(np.clip(e_got, 0, None).sum())
    n = min(n_ref, n_got, len(got["expand_x"]))
    if n_got != n_ref:
        cmp.add("fail", rank, "expand_x", abs(n_got - n_ref), n_ref,
                f"expected {n_ref} received rows, actual expert_token_nums say {n_got}")

    # --- expand_x + dynamic_scales (+ expand_scales): rows of each local expert ---
    ex_ref = np.asarray(ref["expand_x"])[:n_ref]
    ex_got = np.asarray(got["expand_x"])[:n]
    if ex_ref.dtype != ex_got.dtype:
        cmp.add("fail", rank, "expand_x", n_ref, n_ref, f"expected dtype {ex_ref.dtype}, actual {ex_got.dtype}")
        return cmp
    quant = params.quant_mode == 2
    ds_ref = np.asarray(ref["dynamic_scales"])[:n_ref] if quant else None
    ds_got = np.asarray(got["dynamic_scales"])[:n] if quant else None
    es_on = product == "A2" and params.expert_scales and ref.get("expand_scales") is not None and np.asarray(ref["expand_scales"]).size >= n_ref
    es_ref = np.asarray(ref["expand_scales"])[:n_ref] if es_on else None
    es_got = np.asarray(got["expand_scales"])[:n] if es_on and got.get("expand_scales") is not None else None

    def rowkeys(x, ds, es):
        # one bytes key per row: the row's bits plus the scale(s) that travel with it
        keys = [bytes(r) for r in _rows(x).view(np.uint8)]
        for extra in (ds, es):
            if extra is not None:
                keys = [k + np.float32(s).tobytes() for k, s in zip(keys, extra)]
        return keys

    k_ref = rowkeys(ex_ref, ds_ref, es_ref)
    if es_ref is not None and (es_got is None or len(es_got) != n):
        es_got = np.full(n, np.nan, np.float32)  # missing expand_scales can never match
    k_got = rowkeys(ex_got, ds_got, es_got)
    experts = _local_expert_of_rows(e_ref, ent_type, n_ref)
    ordered_equal = n == n_ref and k_ref == k_got
    if not ordered_equal:
        # normative check: per local expert, the same multiset of rows
        wrong_rows: list[str] = []
        wrong = 0
        got_experts = _local_expert_of_rows(e_got, ent_type, n) if e_got.size else np.zeros(n, np.int64)
        for l in range(int(experts.max()) + 1 if experts.size else 0):
            ref_idx = np.nonzero(experts == l)[0]
            got_idx = np.nonzero(got_experts == l)[0]
            ref_multi: dict[bytes, list[int]] = {}
            for i in ref_idx:
                ref_multi.setdefault(k_ref[i], []).append(int(i))
            missing = dict((k, list(v)) for k, v in ref_multi.items())
            extra = []
            for j in got_idx:
                lst = missing.get(k_got[j])
                if lst:
                    lst.pop()
                else:
                    extra.append(int(j))
            miss = [i for v in missing.values() for i in v]
            wrong += max(len(miss), len(extra))
            for i in sorted(miss)[:MAX_LISTED]:
                src = source_of_row(i) if source_of_row else None
                srcs = f"(rank {src[0]}, token {src[1]}, k {src[2]})" if src else _tag(ex_ref[i], tags)
                line = f"local expert {l}: expected row {i} from source {srcs} is missing"
                if quant:
                    line += f" (dynamic_scale {ds_ref[i]:.9g})"
                wrong_rows.append(line)
            for j in sorted(extra)[:MAX_LISTED]:
                line = f"local expert {l}: actual row {j} is not expected; it carries source {_tag(ex_got[j], tags)}"
                if j < n_ref:
                    diff = np.nonzero(_bits(ex_got[j]) != _bits(ex_ref[j]))[0]
                    if diff.size:
                        c = int(diff[0])
                        line += (f"; first differing column {c}: expected {_fmt(ex_ref[j][c])} actual {_fmt(ex_got[j][c])}"
                                 f" ({diff.size} columns differ)")
                    elif quant and ds_ref is not None:
                        line += f"; dynamic_scale expected {ds_ref[j]:.9g} actual {ds_got[j]:.9g}"
                wrong_rows.append(line)
        if wrong:
            if tolerance.active and quant and n == n_ref:
                within = _within_hw_tolerance(ex_ref, ex_got, ds_ref, ds_got, tolerance)
                if within:
                    cmp.add("drift", rank, "expand_x", wrong, n_ref,
                            "rows differ bit-wise but are within the hardware tolerance\n" + "\n".join(wrong_rows[:MAX_LISTED]))
                    wrong = 0
            if wrong:
                cmp.add("fail", rank, "expand_x", wrong, n_ref,
                        ("expand_x/dynamic_scales rows of a local expert differ from the reference (normative)\n"
                         + "\n".join(wrong_rows[: 2 * MAX_LISTED])))
        else:
            # same rows per expert, another order: implementation-defined
            first = next(i for i in range(n) if k_ref[i] != k_got[i])
            cmp.add("drift", rank, "expand_x(row order)", sum(1 for a, b in zip(k_ref, k_got) if a != b), n_ref,
                    f"same rows per local expert, different order; first at row {first}: expected source "
                    f"{_tag(ex_ref[first], tags)}, actual source {_tag(ex_got[first], tags)}")

    # --- implementation-defined auxiliaries ---
    for name, region in _aux_regions(params, product, ref, n_ref).items():
        a_ref = np.asarray(ref.get(name))[:region] if ref.get(name) is not None else None
        if a_ref is None:
            continue
        g = got.get(name)
        a_got = np.asarray(g)[:region] if g is not None else np.zeros(0, a_ref.dtype)
        if a_got.shape != a_ref.shape or not np.array_equal(a_got, a_ref):
            m = min(a_got.size, a_ref.size)
            bad = np.nonzero(a_got[:m] != a_ref[:m])[0]
            first = int(bad[0]) if bad.size else m
            cmp.add("drift", rank, name, int(bad.size) + abs(a_got.size - a_ref.size), a_ref.size,
                    f"expected (first {region}) {_fmt(a_ref)}\nactual {_fmt(a_got)}\nfirst difference at index {first}")
    return cmp


def _aux_regions(params, product: str, ref: dict, n_ref: int) -> dict[str, int]:
    regions = {}
    if "valid_assist" in ref:  # the reference knows: 3 per own row on A3 (not the TP peer half), Bs*K on A2
        regions["assist_info_for_combine"] = int(ref["valid_assist"])
    elif product == "A3":
        regions["assist_info_for_combine"] = 3 * n_ref
    else:
        regions["assist_info_for_combine"] = params.bs * params.k  # A2 slot format: one per (token, k)
    etn = np.asarray(ref["expert_token_nums"])
    regions["ep_recv_counts"] = params.ep_world_size * max(1, etn.size) * (2 if params.tp_world_size == 2 else 1)
    regions["tp_recv_counts"] = params.tp_world_size if params.tp_world_size else 0
    return {k: v for k, v in regions.items() if v > 0}


def _within_hw_tolerance(ex_ref, ex_got, ds_ref, ds_got, tol: Tolerance) -> bool:
    d = np.abs(ex_ref.astype(np.int32) - ex_got.astype(np.int32))
    if d.max(initial=0) > tol.int8_steps:
        return False
    rel = np.abs(ds_ref.astype(np.float64) - ds_got.astype(np.float64)) / np.maximum(np.abs(ds_ref.astype(np.float64)), 1e-30)
    return bool(rel.max(initial=0) <= tol.scale_rel)


# ----------------------------------------------------------------------------------------------
def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units of last place for bf16/fp16 arrays (same sign ordering as integers)."""
    ia = _bits(a).astype(np.int64)
    ib = _bits(b).astype(np.int64)
    width = a.dtype.itemsize * 8
    sign = 1 << (width - 1)

    def ordered(i):
        return np.where(i & sign, -(i & (sign - 1)), i)

    return np.abs(ordered(ia) - ordered(ib))


def compare_combine(case_id: str, params, rank: int, ref: dict, got: dict, *, tags=None,
                    tolerance: Tolerance = EXACT, cmp: Comparison | None = None) -> Comparison:
    cmp = cmp or Comparison(case_id, tolerance=tolerance)
    active = np.asarray(ref.get("active", np.ones(len(ref["x"]), bool)))
    for name in ("x", "y", "rstd"):
        if ref.get(name) is None:
            continue
        r = np.asarray(ref[name])
        g = got.get(name)
        if g is None:
            cmp.add("fail", rank, f"combine.{name}", int(active.sum()), int(active.sum()), "output missing")
            continue
        g = np.asarray(g)
        if g.shape != r.shape or g.dtype != r.dtype:
            cmp.add("fail", rank, f"combine.{name}", int(active.sum()), int(active.sum()),
                    f"expected {r.dtype}{r.shape}, actual {g.dtype}{g.shape}")
            continue
        rr = _rows(r)[active]
        gg = _rows(g)[active]
        toks = np.nonzero(active)[0]
        if name == "rstd":
            bad_mask = ~np.isclose(rr.astype(np.float64), gg.astype(np.float64), rtol=1e-6, atol=0)
        else:
            bad_mask = ulp_distance(rr, gg) > tolerance.combine_ulps
        bad_rows = np.nonzero(bad_mask.any(axis=1))[0]
        if bad_rows.size:
            lines = []
            for i in bad_rows[:MAX_LISTED]:
                cols = np.nonzero(bad_mask[i])[0]
                c = int(cols[0])
                lines.append(f"token {int(toks[i])}: {cols.size} columns beyond {tolerance.combine_ulps} ulp; "
                             f"column {c}: expected {_fmt(rr[i][c])} actual {_fmt(gg[i][c])}")
            cmp.add("fail", rank, f"combine.{name}", bad_rows.size, len(toks),
                    f"combine output differs from the reference by more than {tolerance.combine_ulps} ulp\n" + "\n".join(lines))
    return cmp
