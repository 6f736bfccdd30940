"""moe-cts list | coverage: the case catalogue from the command line."""
from __future__ import annotations

import json
import sys

from moe_cts.spec import DEFAULT_PROFILE


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="print the generated cases")
    p.add_argument("--tier", choices=["smoke", "nightly", "full"], default=None)
    p.add_argument("--product", choices=["A2", "A3"], default=None)
    p.add_argument("--kind", choices=["legal", "illegal"], default=None)
    p.add_argument("--profile", default=DEFAULT_PROFILE)
    p.add_argument("--json", action="store_true", help="one JSON object per case")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("coverage", help="per checked constraint: legal and illegal cases exercising it")
    p.add_argument("--profile", default=DEFAULT_PROFILE)
    p.add_argument("--tier", choices=["smoke", "nightly", "full"], default="full")
    p.set_defaults(func=cmd_coverage)



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
