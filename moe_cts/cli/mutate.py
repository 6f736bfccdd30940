"""``moe-cts mutate``: the mutant catalogue against a tier; prints the kill table, exit 1 on a survivor."""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from moe_cts.mutants import CATALOGUE
from moe_cts.mutants.run import DEFAULT_DEADLINE_S, DEFAULT_TIMEOUT_S, markdown, run_backend, run_mutant, table
from moe_cts.mutants import run as _run_doc


def main(args) -> int:
    catalogue = CATALOGUE
    chosen = [m for m in catalogue if not args.only or m.id in args.only]
    unknown = sorted(set(args.only or ()) - {m.id for m in catalogue})
    if unknown:
        print(f"moe-cts mutate: unknown mutant id(s) {unknown}; known: {[m.id for m in catalogue]}", file=sys.stderr)
        return 2
    tier = None if args.fast else args.tier
    what = "the catalogue's killing cases (--fast)" if args.fast else f"tier {tier}"
    deselect: tuple[str, ...] = ()
    baseline_fail: list[str] = []
    if not args.no_baseline:
        nodes = tuple(sorted({n for m in chosen for n in m.kills})) if args.fast else ()
        t0 = time.monotonic()
        outcomes, secs, note = run_backend("sim", tier=tier, nodes=nodes, deadline=args.case_deadline,
                                           timeout=args.timeout, stop_first=False, fixture=args.fixture)
        baseline_fail = sorted(n for n, o in outcomes.items() if o in ("failed", "broken"))
        npass = sum(1 for o in outcomes.values() if o == "passed")
        print(f"baseline (unmutated sim, {what}): {npass} passed, {len(baseline_fail)} failed/broken "
              f"in {time.monotonic() - t0:.0f}s" + (f" [{note}]" if note else ""))
        for n in baseline_fail:
            print(f"  deselected (fails unmutated, proves nothing): {n}")
        if not outcomes:
            print("moe-cts mutate: the baseline run produced no results; not running mutants", file=sys.stderr)
            return 2
        deselect = tuple(baseline_fail)
    print(f"running {len(chosen)} mutant(s) against {what}, {args.jobs} at a time ...", flush=True)
    t0 = time.monotonic()

    def one(m):
        r = run_mutant(m, tier=tier, fast=args.fast, deadline=args.case_deadline, timeout=args.timeout,
                       deselect=deselect, fixture=args.fixture)
        print(f"  {r.id}: {r.status} ({r.seconds:.0f}s)", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        results = list(ex.map(one, chosen))
    print()
    print(table(results))
    killed = sum(1 for r in results if r.killed)
    survivors = [r.id for r in results if not r.killed]
    rate = killed / len(results) if results else 1.0
    print(f"\nkill rate ({what}): {killed}/{len(results)} = {100 * rate:.1f}%  "
          f"[{time.monotonic() - t0:.0f}s wall, --jobs {args.jobs}]")
    if survivors:
        print("SURVIVORS: " + ", ".join(survivors))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "tier": tier, "fast": bool(args.fast), "kill_rate": rate, "killed": killed, "total": len(results),
            "survivors": survivors, "baseline_failures": baseline_fail,
            "mutants": [asdict(r) for r in results]}, indent=1))
    return 1 if survivors else 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("mutate", help="run a tier against every mutant backend; name the survivors",
                              description=_run_doc.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", default="nightly", choices=["smoke", "nightly", "full"])
    p.add_argument("--only", action="append", metavar="ID", help="run only this mutant (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--fast", action="store_true", help="run only each mutant's known killing cases (CI subset)")
    p.add_argument("--case-deadline", type=float, default=DEFAULT_DEADLINE_S, help="per-case deadline (s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="wall-clock limit per mutant (s)")
    p.add_argument("--fixture", default=None, help="testbed YAML (default: the suite's default, sim)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (no deselection)")
    p.set_defaults(func=main)
