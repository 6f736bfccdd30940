"""Where a checkout keeps the suite's data: the conformance modules, fixtures, goldens and report config.

The library itself carries its own data (spec profiles, waivers, torch_npu schemas) inside the package;
these folders exist only in a checkout of the repository (the suite runs from one).
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "conformance"
FIXTURES = ROOT / "fixtures"
GOLDEN = ROOT / "golden"
REPORTS = ROOT / "reports"


def is_checkout() -> bool:
    """True when the package runs from a checkout (its conformance suite beside it)."""
    return CONFORMANCE.is_dir()
