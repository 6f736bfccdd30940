"""moe-cts golden verify | regenerate: the golden store from the command line."""
from __future__ import annotations

import sys
from pathlib import Path

from moe_cts.oracle import golden


def add_parser(sub) -> None:
    p = sub.add_parser("golden", help="verify or regenerate the golden store")
    p.add_argument("action", choices=["verify", "regenerate"])
    p.add_argument("--root", default=None, help="golden folder (default: the repository's golden/)")
    p.set_defaults(func=cmd_golden)


def cmd_golden(args) -> int:
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
