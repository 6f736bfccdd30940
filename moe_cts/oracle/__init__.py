"""Oracles: what a case's outputs must be. The reference model (``reference``), the frozen golden store
(``golden``) and the per-output comparison policy (``compare``).

    from moe_cts.oracle import compute
    orc = compute(case)          # every rank's inputs, dispatch and combine outputs
"""
from moe_cts.oracle.compute import Oracle, compute

__all__ = ["Oracle", "compute"]
