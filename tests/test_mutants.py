"""Mutation self-test: every catalogued mutant backend must be killed by the conformance suite.

CI runs the FAST subset: per mutant only the nightly case(s) the catalogue names in ``kills``
(moe_cts/mutants/__init__.py), one pytest subprocess per mutant, two at a time (about 3-4 minutes on
2 cores). ``moe-cts mutate --tier nightly`` is the full sweep (docs/mutants.md has its table and the
smoke tier's kill rate).

* the unmutated sim must pass that same subset (else a "kill" proves nothing);
* every mutant must be killed (a failed or broken case);
* a mutant the catalogue marks ``survives`` (no existing case can see it: the reason names the
  missing check) is xfail(strict=True): when the check lands, the test turns red until the mark
  is removed.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from moe_cts.mutants import CATALOGUE
from moe_cts.mutants import run as mutate

DEADLINE_S = 10.0
TIMEOUT_S = 240.0
JOBS = 2


def _case_id(node: str) -> str:
    return node[node.index("[") + 1:-1]


def test_catalogue_is_complete_and_loads():
    from moe_cts.backends.base import load_backend
    from moe_cts.cases import generate

    assert len(CATALOGUE) >= 30, f"the issue asks for at least 30 mutants, catalogue has {len(CATALOGUE)}"
    assert len({m.id for m in CATALOGUE}) == len(CATALOGUE)
    nightly = {c.id: c for c in generate() if c.in_tier("nightly")}
    for m in CATALOGUE:
        assert m.breaks.strip(), f"{m.id}: say what it breaks"
        assert m.kills, f"{m.id}: name the case(s) that kill it (or, for a known survivor, exercise it)"
        b = load_backend(m.backend)  # source mutants fail here when sim's text moved
        for meth in ("dispatch", "combine", "combine_add_rms_norm"):
            assert callable(getattr(b, meth, None)), f"{m.id}: no {meth}()"
        for node in m.kills:
            assert node.startswith("conformance/test_") and "::" in node, node
            if "[" in node:
                cid = _case_id(node)
                assert cid in nightly or cid.startswith(("A2-consistency", "A3-consistency")), (
                    f"{m.id}: case {cid} is not a nightly case any more (case ids changed?); update moe_cts/mutants")


def _fast_nodes() -> tuple[str, ...]:
    return tuple(sorted({n for m in CATALOGUE for n in m.kills}))


@pytest.fixture(scope="module")
def mutant_results():
    """Run every mutant on its killing cases, JOBS at a time (subprocesses); {id: Result}."""
    def one(m):
        return m.id, mutate.run_mutant(m, tier=None, fast=True, deadline=DEADLINE_S, timeout=TIMEOUT_S,
                                       deselect=(), fixture=None)

    with ThreadPoolExecutor(max_workers=JOBS) as ex:
        return dict(ex.map(one, CATALOGUE))


@pytest.mark.slow
def test_unmutated_sim_passes_the_fast_subset():
    outcomes, secs, note = mutate.run_backend("sim", tier=None, nodes=_fast_nodes(), deadline=DEADLINE_S,
                                              timeout=TIMEOUT_S, stop_first=False)
    bad = {n: o for n, o in outcomes.items() if o not in ("passed",)}
    assert outcomes, f"no result from the unmutated run ({note})"
    assert not bad, f"the unmutated sim does not pass the mutants' killing cases, so a kill proves nothing: {bad}"
    assert set(outcomes) == set(_fast_nodes()), f"cases not run: {sorted(set(_fast_nodes()) - set(outcomes))}"


def _params():
    out = []
    for m in CATALOGUE:
        marks = [pytest.mark.slow]
        if m.survives:
            marks.append(pytest.mark.xfail(strict=True, reason=f"known survivor: {m.survives}"))
        out.append(pytest.param(m, id=m.id, marks=marks))
    return out


@pytest.mark.parametrize("m", _params())
def test_mutant_is_killed(m, mutant_results):
    r = mutant_results[m.id]
    assert r.status == "killed", (
        f"mutant {m.id} SURVIVED ({r.status}{': ' + r.note if r.note else ''}): it breaks '{m.breaks}' and no "
        f"case of {list(m.kills)} failed or broke; rerun: moe-cts mutate --fast --only {m.id}")
    if m.id in ("rank_hangs", "rank_crashes"):
        assert r.broken, f"{m.id} must end as *broken* (hang/crash caught by the world), got failed: {r.killed_by}"
