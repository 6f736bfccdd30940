"""moe-cts list | coverage | golden: the case catalogue and the golden store from the command line."""
from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="print the generated cases")
    p.add_argument("--tier", choices=["smoke", "nightly", "full"], default=None)
    p.add_argument("--product", choices=["A2", "A3"], default=None)
    p.add_argument("--kind", choices=["legal", "illegal"], default=None)
    p.add_argument("--profile", default="v4-doc")
    p.add_argument("--json", action="store_true", help="one JSON object per case")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("coverage", help="per checked constraint: legal and illegal cases exercising it")
    p.add_argument("--profile", default="v4-doc")
    p.add_argument("--tier", choices=["smoke", "nightly", "full"], default="full")
    p.set_defaults(func=cmd_coverage)

    p = sub.add_parser("golden", help="verify or regenerate the golden store")
    p.add_argument("action", choices=["verify", "regenerate"])
    p.add_argument("--root", default=None, help="golden folder (default: the repository's golden/)")
    p.set_defaults(func=cmd_golden)
    add_report_parser(sub)


def _cases(profile):
    from moe_cts import cases

    try:
        return cases.generate(profile)
    except ValueError as exc:
        print(f"moe-cts: {exc}", file=sys.stderr)
        raise SystemExit(2)


def cmd_list(args) -> int:
    from moe_cts import cases

    sel = cases.select(_cases(args.profile), tier=args.tier, product=args.product, kind=args.kind)
    for c in sel:
        if args.json:
            print(json.dumps(c.to_dict(), sort_keys=True))
        else:
            exp = "ok" if c.legal else f"{c.expect_status} {c.expect_constraint}"
            print(f"{c.id}\t{c.tier}\tW={c.params.world_size}\t{exp}")
    if not args.json:
        print(f"# {len(sel)} cases", file=sys.stderr)
    return 0


def cmd_coverage(args) -> int:
    from moe_cts import cases

    sel = cases.select(_cases(args.profile), tier=args.tier)
    rows = cases.coverage(sel, args.profile)
    zero = 0
    print(f"{'constraint':52} {'legal':>6} {'illegal':>8}  note")
    for cid, legal, illegal, note in rows:
        flag = ""
        if note:
            flag = note
        elif legal == 0 or illegal == 0:
            flag = "ZERO"
            zero += 1
        print(f"{cid:52} {legal:6d} {illegal:8d}  {flag}")
    print(f"# {len(rows)} checked constraints, {zero} with a zero count")
    return 1 if zero else 0


def cmd_golden(args) -> int:
    from pathlib import Path

    from moe_cts import golden

    root = Path(args.root) if args.root else golden.ROOT
    try:
        if args.action == "regenerate":
            golden.regenerate(root)
            return 0
        problems = golden.verify(root)
    except golden.GoldenError as exc:
        print(f"moe-cts golden: {exc}", file=sys.stderr)
        return 1
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="build the single-file HTML report from allure results and print the counts")
    p.add_argument("--results", default="reports/allure-results")
    p.add_argument("--out", default="reports/html")
    p.add_argument("--history", default=None,
                   help="Allure history file kept across runs (default reports/history/history.jsonl)")
    p.add_argument("--no-history", action="store_true", help="do not read or extend the run history")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from moe_cts.report import HISTORY, ReportError, generate_html, summarize

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
