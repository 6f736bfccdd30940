"""Cases: what to run. The Case model, its generators (from the spec rows), coverage, and the inputs and
expert functions every rank derives from a case's seed alone.

    from moe_cts.cases import generate, select
    smoke = select(generate(profile), tier="smoke")
"""
from moe_cts.cases.case import TIERS, Case, stable_seed
from moe_cts.cases.coverage import coverage
from moe_cts.cases.generate import (BASES, GENERATOR_VERSION, MAX_RUNNABLE_SPECIAL, UNREACHABLE, checked_violations,
                                    generate, pairwise, select)

__all__ = ["TIERS", "Case", "stable_seed", "coverage", "BASES", "GENERATOR_VERSION", "MAX_RUNNABLE_SPECIAL",
           "UNREACHABLE", "checked_violations", "generate", "pairwise", "select"]
