"""Round trip: dispatch -> a deterministic expert function per expert -> combine, against the reference.

This is the normative check of the opaque outputs (assist_info, ep/tp_recv_counts): combine can only
put every row back where it belongs if dispatch described them correctly."""
import pytest

from moe_cts import suite

pytestmark = pytest.mark.roundtrip  # select this concern with -m roundtrip
CASE_KIND = "legal"


def test_roundtrip(case, cts):
    values = suite.require_success(case, suite.run_case(cts, case))
    orc = suite.oracle(cts, case)
    suite.verdict(suite.judge_combine(cts, case, values, orc), "combine")
