"""Reports, read from what a run wrote: the Allure 3 HTML report and status counts (``allure``), baselines
and their qualification diff (``baseline``), the wrong-rows heatmap (``heatmap``), performance summaries
and plots (``perf``), the headless-browser check of the HTML report (``browser``).

Nothing here runs a case: the suite (moe_cts.suite) writes results in these formats, the command line
(moe_cts.cli) reads them back.
"""
from moe_cts.report.allure import HISTORY, REPORTS, ReportError, allure_cli, gate, generate_html, summarize

__all__ = ["HISTORY", "REPORTS", "ReportError", "allure_cli", "gate", "generate_html", "summarize"]
