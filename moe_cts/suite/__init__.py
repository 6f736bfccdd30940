"""The suite's harness, the pytest plugin and its two sides.

* parent side (``judge``): run a case on the fixture's world, build its oracle, judge outputs and statuses;
* rank side (``rank``): the world job every rank runs for a case (inputs from the seed, the real call);
* ``plugin``: pytest options, the session state, case parametrisation, marks, waivers, statuses;
* ``records``: the companion plugin (baseline records, perf records, failure attachments);
* ``perf``: performance mode; ``steps``: Allure steps.

Conformance modules call the parent side: ``suite.run_case``, ``suite.oracle``, ``suite.verdict`` ...
"""
from moe_cts.suite.judge import (JOB, CaseFailure, describe_error, expect_status, judge_combine, judge_dispatch,
                                 oracle, require_success, run_case, verdict)
from moe_cts.suite.steps import attach, phase

__all__ = ["JOB", "CaseFailure", "describe_error", "expect_status", "judge_combine", "judge_dispatch", "oracle",
           "require_success", "run_case", "verdict", "attach", "phase"]
