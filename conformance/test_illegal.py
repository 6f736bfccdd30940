"""Illegal parameters: each case breaks exactly one checked constraint and expects its documented status."""
from moe_cts import suite

CASE_KIND = "illegal"


def test_rejected(case, cts):
    # a combine row's case runs a legal dispatch first; its combine call must reject
    outcomes = suite.run_case(cts, case, combine=case.expect_op != "dispatch")
    suite.expect_status(case, outcomes)
