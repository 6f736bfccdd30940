"""Illegal parameters: each case breaks exactly one checked constraint and expects its documented status."""
from moe_cts import suite

CASE_KIND = "illegal"


def test_rejected(case, cts):
    outcomes = suite.run_case(cts, case, combine=False)
    suite.expect_status(case, outcomes)
