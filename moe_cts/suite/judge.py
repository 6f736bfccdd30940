"""The parent side of a case: run it on the world (cached per session), build its oracle, judge it.

Conformance test functions stay a few lines long; the logic they share lives here so the
self-tests can exercise it without a pytest session (tests/meta).
"""
from __future__ import annotations

import numpy as np

from moe_cts.cases import Case
from moe_cts.cases.inputs import decode_tag
from moe_cts.model import STATUS_NAMES, BindingError
from moe_cts.oracle import Oracle, compute
from moe_cts.oracle.compare import EXACT, Comparison, compare_combine, compare_dispatch
from moe_cts.suite.steps import attach, label_drift, phase

JOB = "moe_cts.suite.rank:run_case_on_rank"


class CaseFailure(AssertionError):
    """A conformance verdict (pytest reports it as *failed*, never *broken*)."""


def run_case(st, case: Case, *, combine: bool = True, repeat: int = 1):
    """Run ``case`` on every rank of the fixture's world; returns the list of RankOutcome.

    Results are cached per (case, combine, repeat) for the session, so the dispatch, round-trip and
    golden checks of one case share a single run. A WorldBroken (hang / crash) propagates: the test
    becomes *broken*; the pool has already replaced the world.
    """
    key = (case.id, combine, repeat)
    hit = st.runs.get(key)
    if isinstance(hit, BaseException):
        raise hit
    if hit is not None:
        return hit
    p = case.params
    title = f"run on {p.world_size} ranks: dispatch{' + combine' if combine else ''}" + (f" x{repeat}" if repeat > 1 else "")
    with phase(title):
        try:
            outcomes = st.pool.run(p.world_size, JOB, {"case": case.to_dict(), "combine": combine, "repeat": repeat},
                                   layout=(p.ep_world_size, p.tp), product=p.product, deadline_s=st.deadline())
        except Exception as exc:
            st.runs[key] = exc
            raise
        _timing_steps(outcomes)
    st.runs[key] = outcomes
    return outcomes


def _timing_steps(outcomes) -> None:
    for what in ("dispatch_s", "combine_s"):
        ts = []
        for o in outcomes:
            t = o.value.get("timings", {}).get(what) if isinstance(o.value, dict) else None
            if t is not None:
                ts.append(max(t) if isinstance(t, list) else t)
        if ts:
            with phase(f"{what[:-2]}: slowest rank {max(ts) * 1e3:.2f} ms, fastest {min(ts) * 1e3:.2f} ms"):
                pass
    errs = [o for o in outcomes if o.error is not None]
    if errs:
        with phase(f"{len(errs)} rank(s) raised: {str(errs[0].error)[:120]}"):
            pass


def oracle(st, case: Case) -> Oracle:
    """The reference model's answer for every rank, cached per case in the session ``st`` (None: no cache)."""
    hit = st.refs.get(case.id) if st is not None else None
    if hit is not None:
        return hit
    p = case.params
    with phase(f"inputs + reference model ({p.world_size} ranks, seed {case.seed})"):
        o = compute(case)
    if st is not None:
        st.refs[case.id] = o
    return o


def describe_error(err) -> str:
    status = getattr(err, "status", None)
    if status is not None:
        name = STATUS_NAMES.get(status, "")
        c = getattr(err, "constraint", None)
        return f"aclnn status {status} {name}" + (f" (constraint {c})" if c else "") + f": {getattr(err, 'message', '')}"[:400]
    return f"{type(err).__name__}: {err}"[:400]


def require_success(case: Case, outcomes) -> list[dict]:
    errs = [o for o in outcomes if o.error is not None]
    if errs:
        lines = [f"rank {o.rank}: {describe_error(o.error)}" for o in errs[:8]]
        raise CaseFailure(f"case {case.id}: a legal call was rejected on {len(errs)} of {len(outcomes)} rank(s); "
                          f"expected success\n" + "\n".join(lines))
    return [o.value for o in outcomes]


def _source_fn(product: str, ref_rank: dict):
    if product != "A3":
        return None
    trip = np.asarray(ref_rank["assist_info_for_combine"])

    def src(i):
        return tuple(int(v) for v in trip[3 * i: 3 * i + 3]) if 3 * i + 3 <= trip.size else None

    return src


def judge_dispatch(st, case: Case, values: list[dict], orc: Oracle, run_index: int = -1) -> Comparison:
    cmp = Comparison(case.id, tolerance=st.tolerance if st else EXACT)
    with phase("compare dispatch outputs"):
        # int8 rows carry no readable tag: their sources come from the reference's assist_info (A3)
        tags = None if case.params.quant_mode == 2 else decode_tag
        for g, v in enumerate(values):
            ref = orc.dispatch[g]
            compare_dispatch(case.id, case.params, g, ref, v["runs"][run_index]["dispatch"], tags=tags,
                             tolerance=cmp.tolerance, cmp=cmp, source_of_row=_source_fn(case.product, ref))
    return cmp


def judge_combine(st, case: Case, values: list[dict], orc: Oracle) -> Comparison:
    cmp = Comparison(case.id, tolerance=st.tolerance if st else EXACT)
    with phase("compare combine output"):
        for g, v in enumerate(values):
            compare_combine(case.id, case.params, g, orc.combine[g], v["combine"], cmp=cmp, tolerance=cmp.tolerance)
    return cmp


def verdict(cmp: Comparison, what: str):
    """Fail on conformance failures; report drift (attached, warned) without failing."""
    if cmp.drifts:
        label_drift(sorted({f.output for f in cmp.drifts}))
        attach(f"{what}: implementation-defined drift", cmp.report("drift"))
        import warnings

        warnings.warn(f"{cmp.case_id}: implementation-defined drift in "
                      f"{sorted({f.output for f in cmp.drifts})} (see report)", stacklevel=2)
    if cmp.failures:
        text = cmp.report("fail")
        attach(f"{what}: mismatch summary", text)
        raise CaseFailure(text)


def _status_mismatches(case: Case, outcomes) -> list[str]:
    wrong = []
    for o in outcomes:
        op = getattr(o.error, "op", case.expect_op)
        if o.error is None:
            wrong.append(f"rank {o.rank}: the call was ACCEPTED")
        elif op != case.expect_op:
            wrong.append(f"rank {o.rank}: {op} rejected the call ({describe_error(o.error)}), but {case.expect_op} "
                         f"is the call that must reject it")
        elif case.expect_binding:
            if not isinstance(o.error, BindingError):
                wrong.append(f"rank {o.rank}: got {describe_error(o.error)}")
        elif getattr(o.error, "status", None) != case.expect_status:
            wrong.append(f"rank {o.rank}: got {describe_error(o.error)}")
    return wrong


def expect_status(case: Case, outcomes):
    """Every rank must reject the call with the documented status (or, where torch_npu's own Python
    check fires first, with that binding rejection: the aclnn status is unobservable through torch_npu)."""
    expected = "a torch_npu binding rejection" if case.expect_binding else f"aclnn {case.expect_status}"
    with phase(f"compare status: expect {expected} from {case.expect_op} on every rank"):
        wrong = _status_mismatches(case, outcomes)
    if wrong and case.expect_binding:
        raise CaseFailure(
            f"case {case.id}: expected every rank to be rejected by the torch_npu binding (ERR01001: "
            f"{case.expect_binding}) before aclnn, because constraint {case.expect_constraint} is broken; instead:\n"
            + "\n".join(wrong[:8]))
    if wrong:
        raise CaseFailure(
            f"case {case.id}: expected {case.expect_op} to fail on every rank with aclnn status {case.expect_status} "
            f"{STATUS_NAMES.get(case.expect_status, '')} because constraint {case.expect_constraint} is broken "
            f"({', '.join(f'{k}={v!r}' for k, v in case.overrides) or 'see parameters'}); instead:\n" + "\n".join(wrong[:8]))
