"""python -m moe_cts.cli: the same as the moe-cts script."""
import sys

from moe_cts.cli import main

sys.exit(main())
