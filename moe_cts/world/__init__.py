"""Worlds: long-lived rank workers that run case after case (see docs/worlds.md).

    from moe_cts.world import WorldPool, WorldBroken, RankOutcome
    pool = WorldPool(load_fixture("fixtures/sim.yaml"))
    outcomes = pool.run(8, "pkg.mod:job", payload, layout=(8, 1), product="A3")
    pool.close()
"""
from moe_cts.world.outcome import RankOutcome, WorldBroken
from moe_cts.world.local import LocalWorld
from moe_cts.world.pool import WorldPool

__all__ = ["WorldPool", "WorldBroken", "RankOutcome", "LocalWorld"]
