"""Companion pytest plugin (loaded by moe_cts.suite.plugin when present): per-case records for baselines,
qualification's case-list check, perf-mode options, Allure steps and small attachments.

Options:
  --baseline-out FILE      write a baseline (moe_cts.report.baseline) of this run: status, output digests, timings,
                           perf records, environment fingerprint, case list
  --qualify-against FILE   refuse (one line, exit 2, before running anything) unless this run selects exactly
                           the baseline's case list with its spec profile
  --perf-warmup N / --perf-iters N / --perf-out DIR / --perf-slow-rank R / --perf-slow-delay S   (-m perf)

Allure: phases as steps (reference inputs, world run with per-rank dispatch / combine times, compare);
on a failed dispatch case a PNG heatmap of wrong rows per rank x local expert; on a hang or crash the
ranks' stack dumps (capped); cases whose verdict sees implementation-defined drift get the label ``drift``
(category "Implementation-defined drift"). Never whole tensors.

Digests per rank: every dispatch output's valid region (moe_cts.oracle.golden); expand_x and dynamic_scales as the
set of rows of each local expert's group (normative) plus ``<name>.order`` (the rows in order:
implementation-defined); combine outputs as ``combine.<name>``; the aclnn status per rank.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

_KEY = pytest.StashKey[dict]()
STACKS_CAP = 64 * 1024


def pytest_addoption(parser):
    g = parser.getgroup("moe-cts reports")
    g.addoption("--baseline-out", default=None, metavar="FILE", help="write a baseline of this run (status, digests, timings, environment)")
    g.addoption("--qualify-against", default=None, metavar="FILE",
                help="refuse to run unless the selected cases and profile are the baseline's")
    g.addoption("--perf-warmup", type=int, default=2, help="perf mode: untimed iterations per case (default 2)")
    g.addoption("--perf-iters", type=int, default=5, help="perf mode: timed iterations per case (default 5)")
    g.addoption("--perf-out", default="reports/html/perf", help="perf mode: where perf.json and the bandwidth plot go")
    g.addoption("--perf-slow-rank", type=int, default=None, help="perf mode: delay this rank in every perf case")
    g.addoption("--perf-slow-delay", type=float, default=0.3, help="perf mode: the injected delay in seconds")


def data(config) -> dict:
    d = config.stash.get(_KEY, None)
    if d is None:
        d = {"records": {}, "nodeids": [], "perf": []}
        config.stash[_KEY] = d
    return d


def add_perf_record(config, nodeid: str, rec: dict) -> None:
    """Called by conformance/test_perf.py: the record goes to perf.json, the plot and the baseline."""
    d = data(config)
    d["perf"].append(rec)
    d.setdefault("perf_by_node", {})[nodeid] = rec


def pytest_configure(config):
    data(config)


# ----------------------------------------------------------------------------------------- collection
def pytest_collection_finish(session):
    config = session.config
    nodeids = [it.nodeid for it in session.items]
    data(config)["nodeids"] = nodeids
    path = config.getoption("--qualify-against")
    if not path:
        return
    from moe_cts.report.baseline import BaselineError, check_compatible, load
    from moe_cts.suite.plugin import state

    try:
        check_compatible(load(path), profile=state(config).profile, nodeids=nodeids, name=path)
    except BaselineError as exc:
        data(config)["refused"] = str(exc)
        pytest.exit(f"moe-cts qualify: {exc}", returncode=2)


# ----------------------------------------------------------------------------------------- per-case records
def _case_of(item):
    cs = getattr(item, "callspec", None)
    if cs is None:
        return None
    return cs.params.get("case") or cs.params.get("pcase")


def _status(rep, call) -> str:
    if hasattr(rep, "wasxfail"):
        return "waived"
    if rep.skipped:
        return "skipped"
    if rep.passed:
        return "passed"
    exc = call.excinfo.value if call.excinfo else None
    return "failed" if isinstance(exc, AssertionError) else "broken"


def _message(call) -> str:
    if not call.excinfo:
        return ""
    lines = str(call.excinfo.value).strip().splitlines()
    return (lines[0] if lines else type(call.excinfo.value).__name__)[:300]


def digests_of(case, outcomes) -> dict:
    """Digests of every output's valid region per rank (or the status per rank of a rejected call)."""
    from moe_cts.oracle.golden import digest, valid_regions
    from moe_cts.report.heatmap import row_groups
    from moe_cts.suite.rank import valid_rows_from

    out = {"dispatch": [], "combine": [], "status": []}
    for o in sorted(outcomes, key=lambda o: o.rank):
        if o.error is not None:
            out["status"].append(getattr(o.error, "status", None) or type(o.error).__name__)
            out["dispatch"].append({})
            out["combine"].append({})
            continue
        v = o.value if isinstance(o.value, dict) else {}
        out["status"].append(0)
        runs = v.get("runs") or []
        if runs:
            d = dict(runs[-1]["dispatch"])
            d["valid_rows"] = valid_rows_from(case.params, d["expert_token_nums"])
            regions = valid_regions(case.params, d)
            dig = {k: digest(a) for k, a in regions.items()}
            # rows of a local expert's group are normative as a set, their order is implementation-defined
            groups = row_groups(d["expert_token_nums"], case.params.expert_token_nums_type)
            for name in ("expand_x", "dynamic_scales"):
                a = regions.get(name)
                if a is None or getattr(a, "ndim", 0) == 0 or a.shape[0] < sum(c for _, c in groups):
                    continue
                dig[f"{name}.order"] = dig[name]
                dig[name] = _multisetdigest(a, groups)
            out["dispatch"].append(dig)
        else:
            out["dispatch"].append({})
        out["combine"].append({f"combine.{k}": digest(a) for k, a in sorted((v.get("combine") or {}).items())})
    return out


def _multisetdigest(a, groups) -> str:
    import hashlib

    import numpy as np

    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.name}{a.shape}".encode())
    for s, c in groups:
        for row in sorted(a[i].tobytes() for i in range(s, s + c)):
            h.update(row)
        h.update(b"|")
    return h.hexdigest()[:32]


def _timings(outcomes) -> dict:
    t = {}
    for what in ("dispatch_s", "combine_s"):
        vals = []
        for o in outcomes:
            if o.error is None and isinstance(o.value, dict):
                x = o.value.get("timings", {}).get(what)
                if x is not None:
                    vals.append(min(x) if isinstance(x, list) else x)
        if vals:
            t[what] = max(vals)
    return t


def _runs_for(st, case):
    best = None
    for key, val in st.runs.items():
        if key[0] == case.id and isinstance(val, list):
            if best is None or key[1]:
                best = val
    return best


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (rep.when == "call" or (rep.when == "setup" and rep.skipped)) and item.config.getoption("--baseline-out", None):
        _record(item, call, rep)
    if rep.when == "call" and rep.failed:
        _attach_failure(item, call)


def _record(item, call, rep):
    config = item.config
    rec = {"status": _status(rep, call), "message": _message(call) if rep.failed else (
        str(rep.longrepr[-1])[:300] if rep.skipped and isinstance(rep.longrepr, tuple) else "")}
    case = _case_of(item)
    if case is not None and rep.when == "call":
        rec["case"] = case.id
        try:
            from moe_cts.suite.plugin import state

            outcomes = _runs_for(state(config), case)
            if outcomes:
                rec["digests"] = digests_of(case, outcomes)
                rec["timings"] = _timings(outcomes)
        except Exception as exc:  # noqa: BLE001 - a record must never fail a test
            rec["record_error"] = f"{type(exc).__name__}: {exc}"[:200]
    perf = data(config).get("perf_by_node", {}).get(item.nodeid)
    if perf is not None:
        rec["perf"] = {k: perf[k] for k in ("dispatch", "combine", "slow_ranks") if k in perf}
    data(config)["records"][item.nodeid] = rec


def _attach_failure(item, call):
    try:
        import allure
    except ImportError:
        return
    exc = call.excinfo.value if call.excinfo else None
    stacks = getattr(exc, "stacks_text", None)
    if callable(stacks):
        text = stacks()
        if text:
            if len(text) > STACKS_CAP:
                text = text[:STACKS_CAP] + f"\n... ({len(text) - STACKS_CAP} more characters cut)"
            allure.attach(text, name=f"stack dumps ({getattr(exc, 'kind', 'broken')})",
                          attachment_type=allure.attachment_type.TEXT)
        return
    case = _case_of(item)
    if case is None or not isinstance(exc, AssertionError) or not case.legal:
        return
    try:
        from moe_cts.suite.plugin import state

        st = state(item.config)
        outcomes = _runs_for(st, case)
        orc = st.refs.get(case.id)
        if not outcomes or orc is None or any(o.error is not None for o in outcomes):
            return
        from moe_cts.report.heatmap import heatmap_png, wrong_rows_matrix

        got = [o.value["runs"][-1]["dispatch"] for o in sorted(outcomes, key=lambda o: o.rank)]
        m = wrong_rows_matrix(case.params, orc.dispatch, got)
        if m.sum() > 0:
            allure.attach(heatmap_png(m, f"{case.id}: wrong expand_x rows"), name="wrong rows per rank x local expert",
                          attachment_type=allure.attachment_type.PNG)
    except Exception:  # noqa: BLE001 - a picture must never turn a failure into an error
        pass


# ----------------------------------------------------------------------------------------- session end
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    d = data(config)
    if d["perf"]:
        _write_perf(config, d["perf"])
    out = config.getoption("--baseline-out")
    if not out:
        return
    from moe_cts.report import baseline
    from moe_cts.suite.environment import fingerprint
    from moe_cts.suite.plugin import state

    if d.get("refused"):  # tell the qualify command why, instead of a baseline of nothing
        Path(out).write_text(json.dumps({"format": baseline.REFUSAL, "message": d["refused"]}))
        return
    st = state(config)
    meta = {"profile": st.profile, "fixture": st.fixture.name, "backend": st.backend_spec,
            "markexpr": config.option.markexpr or "", "keyword": config.option.keyword or "",
            "nodeids": sorted(d["nodeids"])}
    doc = baseline.new(meta, d["records"], fingerprint(st))
    baseline.save(doc, out)
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"moe-cts baseline: {out} ({len(d['records'])} tests)")


def _write_perf(config, records):
    from moe_cts.report import perf

    out = Path(config.getoption("--perf-out"))
    if not out.is_absolute():
        out = Path(str(config.rootpath)) / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(records, indent=1, default=str))
    png = perf.plot_bandwidth(records, out / "bandwidth.png")
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"moe-cts perf: {out / 'perf.json'}" + (f", plot {png}" if png else ""))
