"""moe-cts baseline capture | qualify | perf (registered by moe_cts.cli through add_parser).

All three run the suite in a pytest subprocess with the companion plugin (moe_cts.suite.records)
and read what it wrote; selection is pytest's (-m tier, -k expression), so a baseline records exactly
which cases it holds and qualify re-selects them.

  moe-cts baseline capture --out B.json [--tier smoke] [-k EXPR] [--fixture F] [--backend X]
  moe-cts qualify --baseline B.json [--fixture F] [--backend X] [--md OUT.md] [--json OUT.json]
                  [--speed-threshold 0.5] [--candidate C.json (diff two files, run nothing)]
  moe-cts perf [-k EXPR] [--iters N] [--warmup N] [--slow-rank R --slow-delay S] [--out DIR]

Exit status: capture 0 when the baseline was written (whatever the cases did); qualify 0 no regression,
1 regression (new failure, or a perf ratio slower beyond the threshold; plain op times with --gate-timings), 2 refused (other case list / profile /
format) or could not run; perf: pytest's.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from moe_cts import repo
from moe_cts.report import HISTORY, ReportError, baseline, generate_html, summarize

PLUGIN = "moe_cts.suite.records"


def add_parser(sub) -> None:
    _add_report_parser(sub)
    b = sub.add_parser("baseline", help="capture a baseline: per-case status, output digests, timings, environment")
    bsub = b.add_subparsers(dest="baseline_cmd", required=True)
    c = bsub.add_parser("capture", help="run the selected cases and write a baseline file")
    c.add_argument("--out", required=True, help="baseline file to write (JSON)")
    _run_args(c, tier_default="smoke")
    c.set_defaults(func=cmd_capture)

    q = sub.add_parser("qualify", help="run the baseline's cases on this stack and diff them against the baseline")
    q.add_argument("--baseline", required=True, help="baseline file (moe-cts baseline capture)")
    q.add_argument("--candidate", default=None, help="diff this captured file instead of running the suite")
    q.add_argument("--md", default=None, help="also write the markdown diff here")
    q.add_argument("--json", dest="json_out", default=None, help="also write the JSON diff here")
    q.add_argument("--format", choices=["md", "json"], default="md", help="what to print on stdout (default md)")
    q.add_argument("--speed-threshold", type=float, default=0.5,
                   help="relative speed change that counts (default 0.5 = 50%%; perf ratios when both runs have -m perf)")
    q.add_argument("--min-time", type=float, default=0.01, help="ignore op times below this (s) in speed checks")
    q.add_argument("--gate-timings", action="store_true",
                   help="count slower plain op times (not only perf ratios) as a regression")
    q.add_argument("--save-candidate", default=None, help="keep the candidate run's baseline file here")
    _run_args(q, tier_default=None)
    q.set_defaults(func=cmd_qualify)

    p = sub.add_parser("perf", help="performance mode: timed dispatch/combine vs a bare all-to-all, slow-rank analysis")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--slow-rank", type=int, default=None, help="inject a delay on this rank in every perf case")
    p.add_argument("--slow-delay", type=float, default=0.3)
    p.add_argument("--out", default="reports/html/perf", help="perf.json and bandwidth.png go here")
    _run_args(p, tier_default=None, tier=False)
    p.set_defaults(func=cmd_perf)


def _run_args(p, tier_default, tier=True):
    if tier:
        p.add_argument("--tier", "-m", dest="tier", default=tier_default, help="pytest marker expression (default: smoke for capture, the baseline's for qualify)")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    p.add_argument("--fixture", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--alluredir", default=None, help="also write allure results here")
    p.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument (repeatable)")
    p.add_argument("--quiet", action="store_true", help="do not stream pytest's output")


def _pytest(args, extra: list[str], markexpr: str | None, keyword: str | None) -> int:
    cmd = [sys.executable, "-m", "pytest", "-p", PLUGIN, "conformance", "-q", "-p", "no:randomly"]
    if markexpr:
        cmd += ["-m", markexpr]
    if keyword:
        cmd += ["-k", keyword]
    for opt in ("fixture", "backend", "alluredir"):
        v = getattr(args, opt, None)
        if v:
            cmd += [f"--{opt}", v]
    cmd += extra + list(getattr(args, "pytest_arg", []) or [])
    out = subprocess.DEVNULL if getattr(args, "quiet", False) else sys.stderr
    return subprocess.run(cmd, stdout=out, stderr=out, cwd=_root()).returncode


def _root() -> str:
    return str(repo.ROOT if repo.is_checkout() else Path.cwd())


def cmd_capture(args) -> int:
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        os.remove(out)
    rc = _pytest(args, ["--baseline-out", out], args.tier, args.keyword)
    if not os.path.exists(out):
        print(f"moe-cts baseline capture: no baseline written (pytest exit {rc})", file=sys.stderr)
        return 2
    doc = baseline.load(out)
    counts: dict[str, int] = {}
    for r in doc["cases"].values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"baseline: {out}: {len(doc['cases'])} tests ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
          f"case list {doc['case_list']['sha']}")
    return 0


def cmd_qualify(args) -> int:
    try:
        base = baseline.load(args.baseline)
        if args.candidate:
            cand = baseline.load(args.candidate)
            baseline.check_compatible(base, profile=cand["profile"], nodeids=cand["nodeids"], name=args.baseline)
        else:
            cand = _run_candidate(args, base)
            if isinstance(cand, int):
                return cand
    except baseline.BaselineError as exc:
        print(f"moe-cts qualify: {exc}", file=sys.stderr)
        return 2
    d = baseline.diff(base, cand, speed_threshold=args.speed_threshold, min_time_s=args.min_time,
                      gate_timings=args.gate_timings)
    md = baseline.markdown(d)
    if args.md:
        Path(args.md).write_text(md)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(d, indent=1, default=str))
    print(md if args.format == "md" else json.dumps(d, indent=1, default=str))
    return 1 if d["regression"] else 0


def _run_candidate(args, base):
    markexpr = args.tier if args.tier is not None else base.get("markexpr")
    keyword = args.keyword if args.keyword is not None else base.get("keyword")
    keep = args.save_candidate
    tmpdir = None
    if not keep:
        tmpdir = tempfile.mkdtemp(prefix="moe-cts-qualify-")
        keep = os.path.join(tmpdir, "candidate.json")
    keep = os.path.abspath(keep)
    rc = _pytest(args, ["--baseline-out", keep, "--qualify-against", os.path.abspath(args.baseline)], markexpr, keyword)
    try:
        if not os.path.exists(keep):
            print(f"moe-cts qualify: the candidate run wrote no results (pytest exit {rc})", file=sys.stderr)
            return 2
        return baseline.load(keep)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def cmd_perf(args) -> int:
    extra = ["--perf-iters", str(args.iters), "--perf-warmup", str(args.warmup), "--perf-out", os.path.abspath(args.out),
             "-s"]
    if args.slow_rank is not None:
        extra += ["--perf-slow-rank", str(args.slow_rank), "--perf-slow-delay", str(args.slow_delay)]
    return _pytest(args, extra, "perf", args.keyword)


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="build the single-file HTML report from allure results and print the counts")
    p.add_argument("--results", default="reports/allure-results")
    p.add_argument("--out", default="reports/html")
    p.add_argument("--history", default=None,
                   help="Allure history file kept across runs (default reports/history/history.jsonl)")
    p.add_argument("--no-history", action="store_true", help="do not read or extend the run history")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    history = None if getattr(args, "no_history", False) else (getattr(args, "history", None) or HISTORY)
    try:
        counts = summarize(args.results)
        index = generate_html(args.results, args.out, history=history)
    except ReportError as exc:
        print(f"moe-cts report: {exc}", file=sys.stderr)
        return 2
    print("summary: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"report: {index}")
    return 0
