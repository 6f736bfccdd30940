"""Cross-rank consistency negatives: ranks given different global_bs / comm_alg / moe_expert_num.

The doc requires these to agree on every rank but promises no status. Whatever the kernel does, the
run must end: an error on some rank passes; a hang is caught by the world's deadline and reported
as *broken: hang* (the run goes on); silent acceptance is reported as a warning (undefined)."""
import time
import warnings

import pytest

from moe_cts import suite
from moe_cts.cases import BASES, Case, stable_seed
from moe_cts.world import WorldBroken

DEADLINE_S = 15.0
STOP_SLACK_S = 30.0  # stack dumps and killing the world after the deadline


def _cases():
    out = []
    for product, changes in (("A3", ("global_bs", "comm_alg", "moe_expert_num")), ("A2", ("global_bs", "moe_expert_num"))):
        base = BASES[product]
        for name in changes:
            value = {"global_bs": base.bs * base.ep_world_size * 2, "comm_alg": "fullmesh_v2" if product == "A3" else "hierarchy",
                     "moe_expert_num": base.moe_expert_num * 2}[name]
            cid = f"{product}-consistency-{name}-rank1"
            out.append(pytest.param(Case(id=cid, params=base, tier="nightly", kind="consistency", feature=name,
                                         seed=stable_seed(cid), rank_overrides=((1, ((name, value),)),)),
                                    id=cid, marks=[pytest.mark.nightly, pytest.mark.full, pytest.mark.consistency,
                                                   getattr(pytest.mark, product.lower())]))
    return out


@pytest.mark.parametrize("case", _cases())
def test_mismatch_terminates(case, cts):
    if cts.unavailable:
        pytest.skip(cts.unavailable)
    if case.product not in cts.fixture.products:
        pytest.skip(f"fixture {cts.fixture.name} serves {list(cts.fixture.products)}")
    deadline = min(DEADLINE_S, cts.deadline())
    t0 = time.monotonic()
    broken = None
    try:
        outcomes = cts.pool.run(case.params.world_size, suite.JOB, {"case": case.to_dict(), "combine": True},
                                layout=(case.params.ep_world_size, case.params.tp), product=case.product,
                                deadline_s=deadline)
    except WorldBroken as exc:
        # the run ended: the world's deadline or crash detection caught it and replaced the world
        suite.attach(f"{case.id}: caught {exc.kind}", str(exc))
        warnings.warn(f"{case.id}: mismatched {case.feature} ended as broken: {exc.kind} (caught; the run went on)")
        outcomes, broken = exc.outcomes, exc
    if broken is None and all(o.error is None for o in outcomes):
        warnings.warn(f"{case.id}: every rank accepted mismatched {case.feature} (the doc leaves this undefined)")
    took = time.monotonic() - t0
    # the property under test: the run ended in bounded time (no rank left waiting for a peer)
    assert took <= deadline + STOP_SLACK_S, (
        f"case {case.id}: ranks given different {case.feature} took {took:.1f} s to return; expected an error or a "
        f"caught hang within the {deadline:g} s deadline (+{STOP_SLACK_S:g} s to stop the world)")
