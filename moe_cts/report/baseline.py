"""Baselines and qualification: what a stack did on a case list, and how another stack differs.

A baseline file (JSON, ``format: moe-cts-baseline``, ``version: 1``) holds, per test (pytest node id):
status (passed / failed / broken / skipped / waived), the first line of its message, digests of every
output's valid region per rank (dispatch outputs as moe_cts.oracle.golden digests them, combine outputs, or the
aclnn status per rank for a rejected call), timings, and perf records (``-m perf``); plus the environment
fingerprint (CANN, driver, firmware, torch, torch_npu, SoC, HCCL variables, fixture), the spec profile and
the case list (node ids + sha256). :func:`load` refuses, in one line, a file of another format / version;
:func:`check_compatible` refuses one from another case list or profile.

:func:`diff` compares a candidate to a baseline: new failures (was passed/waived/skipped, now failed or
broken), fixed cases, changed digests of implementation-defined outputs (reported, not a regression),
changed digests of normative outputs in cases that still pass, speed changes beyond a threshold (perf
ratio op/all-to-all where both have perf records, else the per-case op time above a floor). A regression
(new failure, slower beyond the threshold) makes ``moe-cts qualify`` exit 1.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

FORMAT = "moe-cts-baseline"
REFUSAL = "moe-cts-refusal"  # what a refused qualification run leaves where its baseline would be
VERSION = 1
IMPL_DEFINED = ("assist_info_for_combine", "ep_recv_counts", "tp_recv_counts", "expand_x.order", "dynamic_scales.order")
BAD = ("failed", "broken")
GOOD = ("passed", "waived")


class BaselineError(ValueError):
    """One line: why a baseline file is refused."""


# ----------------------------------------------------------------------------------------- capture side
def case_list_sha(nodeids) -> str:
    return hashlib.sha256("\n".join(sorted(nodeids)).encode()).hexdigest()[:16]


def new(meta: dict, records: dict[str, dict], env: dict[str, str]) -> dict:
    return {"format": FORMAT, "version": VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **meta, "case_list": {"sha": case_list_sha(meta.get("nodeids", [])), "count": len(meta.get("nodeids", []))},
            "environment": env, "cases": records}


def save(doc: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def load(path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline ({exc.strerror})") from None
    except ValueError:
        raise BaselineError(f"{path}: not a JSON baseline file") from None
    if isinstance(doc, dict) and doc.get("format") == REFUSAL:
        raise BaselineError(str(doc.get("message")))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a moe-cts baseline (format {doc.get('format') if isinstance(doc, dict) else '?'!r})")
    if doc.get("version") != VERSION:
        raise BaselineError(f"{path}: baseline format version {doc.get('version')!r}, this moe-cts reads version {VERSION}")
    for key in ("cases", "case_list", "profile", "nodeids"):
        if key not in doc:
            raise BaselineError(f"{path}: baseline lacks {key!r} (truncated or hand-edited?)")
    return doc


def check_compatible(base: dict, *, profile: str, nodeids, name: str = "baseline") -> None:
    """Raise BaselineError (one line) unless this run has the baseline's profile and exact case list."""
    if base["profile"] != profile:
        raise BaselineError(f"{name} was captured with spec profile {base['profile']!r}, this run uses {profile!r}: "
                            f"refused (capture a baseline with this profile)")
    sha = case_list_sha(nodeids)
    if sha != base["case_list"]["sha"]:
        mine, theirs = set(nodeids), set(base["nodeids"])
        extra, missing = len(mine - theirs), len(theirs - mine)
        raise BaselineError(f"{name} was captured from another case list ({base['case_list']['count']} cases, "
                            f"sha {base['case_list']['sha']}) than this run ({len(mine)} cases, sha {sha}; "
                            f"{missing} missing, {extra} new): refused (select the same cases: "
                            f"-m {base.get('markexpr') or '?'!r} -k {base.get('keyword') or ''!r})")


# ----------------------------------------------------------------------------------------- diff
def _op_time(rec: dict) -> float | None:
    t = rec.get("timings") or {}
    vals = [v for v in (t.get("dispatch_s"), t.get("combine_s")) if v]
    return sum(vals) if vals else None


def diff(base: dict, cand: dict, *, speed_threshold: float = 0.5, min_time_s: float = 0.01,
         gate_timings: bool = False) -> dict:
    """Per-case differences of ``cand`` against ``base`` (same case list, checked by the caller).

    A slowdown of the perf ratio (op / bare all-to-all, ``-m perf`` runs) is a regression; a change of the
    conformance run's plain op times is reported, and a regression only with ``gate_timings`` (host times
    of a shared machine are noise; the ratio is what compares across runs)."""
    out: dict[str, Any] = {"new_failures": [], "fixed": [], "status_changes": [], "impl_defined_changes": [],
                           "normative_changes": [], "slower": [], "faster": [], "missing": [],
                           "baseline": {"created": base.get("created"), "environment": base.get("environment", {})},
                           "candidate": {"created": cand.get("created"), "environment": cand.get("environment", {})}}
    env_b, env_c = base.get("environment", {}), cand.get("environment", {})
    out["environment_changes"] = [{"key": k, "baseline": env_b.get(k), "candidate": env_c.get(k)}
                                  for k in sorted(set(env_b) | set(env_c)) if env_b.get(k) != env_c.get(k)]
    for nid, b in sorted(base["cases"].items()):
        c = cand["cases"].get(nid)
        if c is None:
            out["missing"].append(nid)
            continue
        sb, sc = b.get("status"), c.get("status")
        entry = {"test": nid, "baseline": sb, "candidate": sc, "message": c.get("message", "") if sc in BAD else b.get("message", "")}
        if sc in BAD and sb not in BAD:
            out["new_failures"].append(entry)
        elif sb in BAD and sc not in BAD and sc != "skipped":
            out["fixed"].append(entry)
        elif sb != sc:
            out["status_changes"].append(entry)
        if sc not in BAD and sb not in BAD:
            for ch in _digest_changes(b.get("digests"), c.get("digests")):
                (out["impl_defined_changes"] if ch["output"] in IMPL_DEFINED else out["normative_changes"]).append(
                    {"test": nid, **ch})
        sp = _speed(b, c, speed_threshold, min_time_s)
        if sp is not None:
            (out["slower"] if sp["change"] > 0 else out["faster"]).append({"test": nid, **sp})
    out["regression"] = bool(out["new_failures"] or any(s["source"] == "perf" or gate_timings for s in out["slower"]))
    out["threshold"] = speed_threshold
    out["gate_timings"] = gate_timings
    return out


def _digest_changes(db, dc) -> list[dict]:
    if not db or not dc:
        return []
    changes = []
    for phase in ("dispatch", "combine", "status"):
        rb, rc = db.get(phase), dc.get(phase)
        if rb is None or rc is None:
            continue
        for rank, (ob, oc) in enumerate(zip(rb, rc)):
            if not isinstance(ob, dict):
                if ob != oc:
                    changes.append({"output": phase, "ranks": [rank]})
                continue
            for name in sorted(set(ob) | set(oc)):
                if ob.get(name) != oc.get(name):
                    changes.append({"output": name, "ranks": [rank]})
    merged: dict[str, list] = {}
    for ch in changes:
        merged.setdefault(ch["output"], []).extend(ch["ranks"])
    return [{"output": k, "ranks": sorted(set(v))} for k, v in merged.items()]


def _speed(b: dict, c: dict, thr: float, min_time_s: float) -> dict | None:
    pb, pc = b.get("perf"), c.get("perf")
    if pb and pc:  # perf mode: the op / bare all-to-all ratio is what is compared
        worst = None
        for what in ("dispatch", "combine"):
            rb, rc = pb[what]["ratio"], pc[what]["ratio"]
            if rb > 0 and rc > 0:
                change = rb / rc - 1.0  # ratio down = slower relative to the bare all-to-all
                if abs(change) > thr and (worst is None or abs(change) > abs(worst["change"])):
                    worst = {"metric": f"{what} bandwidth / bare all_to_all", "baseline": rb, "candidate": rc,
                             "change": change, "source": "perf"}
        return worst
    tb, tc = _op_time(b), _op_time(c)
    if tb is None or tc is None or max(tb, tc) < min_time_s or tb <= 0:
        return None
    change = tc / tb - 1.0
    if abs(change) > thr:
        return {"metric": "dispatch+combine time (s)", "baseline": tb, "candidate": tc, "change": change,
                "source": "timings"}
    return None


def markdown(d: dict) -> str:
    L = ["# moe-cts qualification", ""]
    L.append(f"baseline {d['baseline'].get('created')} vs candidate {d['candidate'].get('created')}; "
             f"speed threshold {d['threshold']:.0%}")
    L.append("")
    L.append(f"**verdict: {'REGRESSION' if d['regression'] else 'no regression'}** - "
             f"{len(d['new_failures'])} new failure(s), {len(d['fixed'])} fixed, "
             f"{len(d['impl_defined_changes'])} implementation-defined digest change(s), "
             f"{len(d['slower'])} slower, {len(d['faster'])} faster")
    if d["environment_changes"]:
        L += ["", "## environment changes", "", "| key | baseline | candidate |", "|---|---|---|"]
        L += [f"| {e['key']} | {e['baseline']} | {e['candidate']} |" for e in d["environment_changes"]]

    def table(title, rows, cols):
        if not rows:
            return
        L.extend(["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)])
        for r in rows:
            L.append("| " + " | ".join(f"{r[c]:+.1%}" if c == "change" else _cell(r.get(c)) for c in cols) + " |")

    table("new failures", d["new_failures"], ["test", "baseline", "candidate", "message"])
    table("fixed", d["fixed"], ["test", "baseline", "candidate"])
    table("other status changes", d["status_changes"], ["test", "baseline", "candidate"])
    table("implementation-defined outputs changed (not a regression)", d["impl_defined_changes"], ["test", "output", "ranks"])
    table("normative outputs changed in passing cases", d["normative_changes"], ["test", "output", "ranks"])
    table("slower" + ("" if d.get("gate_timings") else " (perf ratios gate; plain op times are informational)"),
          d["slower"], ["test", "metric", "baseline", "candidate", "change"])
    table("faster", d["faster"], ["test", "metric", "baseline", "candidate", "change"])
    if d["missing"]:
        L += ["", f"{len(d['missing'])} baseline test(s) missing from the candidate"]
    return "\n".join(L) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v if v is not None else "")
    return s.replace("|", "\\|").replace("\n", " ")[:160]
