"""The moe-cts command line: every sub-command lives in this package, one module per family."""
from __future__ import annotations

import argparse
import importlib

# modules that register sub-commands through `add_parser(subparsers)`; each owns its commands.
COMMAND_MODULES = (
    "moe_cts.cli.check",  # check
    "moe_cts.cli.cases",  # list, coverage
    "moe_cts.cli.golden",  # golden verify | regenerate
    "moe_cts.cli.report",  # report, baseline capture, qualify, perf
    "moe_cts.cli.mutate",  # mutate
)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (what, and how to get help), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def main(argv=None) -> int:
    parser = _Parser(prog="moe-cts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for modname in COMMAND_MODULES:
        importlib.import_module(modname).add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


