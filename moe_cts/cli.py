"""moe-cts command line (sub-commands are registered by their modules)."""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module with `add_parser(subparsers)`; each module owns its own command.
COMMANDS = {
    "check": "moe_cts.spec.check_cli",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moe-cts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        mod.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
