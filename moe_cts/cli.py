"""moe-cts command line (sub-commands are registered by their modules)."""
from __future__ import annotations

import argparse
import importlib
import sys

# modules that register sub-commands through `add_parser(subparsers)`; each owns its commands.
COMMAND_MODULES = (
    "moe_cts.spec.check_cli",  # check
    "moe_cts.commands",  # list, coverage, golden
    "moe_cts.report.commands",  # baseline capture, qualify, perf
    "moe_cts.mutate",
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


if __name__ == "__main__":
    sys.exit(main())
