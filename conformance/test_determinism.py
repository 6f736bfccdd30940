"""Determinism: the doc says dispatch is deterministic; the same case twice gives identical bytes."""
import numpy as np
import pytest

from moe_cts import suite
from moe_cts.suite.rank import valid_rows_from

pytestmark = pytest.mark.determinism  # select this concern with -m determinism
CASE_KIND = "legal"
# one case per pairwise row is plenty: determinism does not depend on boundaries
CASE_FILTER = lambda c: c.feature in ("base", "pairwise")


def test_same_bytes_twice(case, cts):
    values = suite.require_success(case, suite.run_case(cts, case, combine=False, repeat=2))
    for v in values:
        first, second = v["runs"][0]["dispatch"], v["runs"][1]["dispatch"]
        n = valid_rows_from(case.params, first["expert_token_nums"])
        for name in ("expand_x", "dynamic_scales", "expert_token_nums", "ep_recv_counts", "tp_recv_counts"):
            a, b = np.asarray(first[name]), np.asarray(second[name])
            if name in ("expand_x", "dynamic_scales"):
                a, b = a[:n], b[:n]
            assert a.tobytes() == b.tobytes(), (
                f"case {case.id}, rank {v['rank']}, output {name}: two identical calls gave different bytes "
                f"(first difference at flat index {int(np.nonzero(a.reshape(-1) != b.reshape(-1))[0][0]) if a.shape == b.shape else 'shape'}; "
                f"expected identical, the doc says dispatch is deterministic)")
