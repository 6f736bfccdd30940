"""Legal dispatch: every output against the reference (and the stored golden where one exists).

Normative outputs decide pass/fail; implementation-defined ones are compared exactly and reported
as drift (DESIGN.md)."""
from moe_cts import suite
from moe_cts.oracle import golden

CASE_KIND = "legal"


def test_dispatch(case, cts):
    values = suite.require_success(case, suite.run_case(cts, case))
    orc = suite.oracle(cts, case)
    golden.check_oracle(case, orc)  # the oracle itself must still equal the frozen golden
    suite.verdict(suite.judge_dispatch(cts, case, values, orc), "dispatch")
