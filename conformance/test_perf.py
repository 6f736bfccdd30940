"""Performance mode (`-m perf` or `moe-cts perf`): not part of the conformance verdict.

Per case: warm-ups, then timed iterations of dispatch and combine (device events where the backend has
them), latency and algorithmic bandwidth, next to a bare all_to_all of the same bytes timed in the same
world (the ratio is what is compared across runs). Slow-rank analysis on performance_info (DeepXTrace
thresholds 3.0 / 3.0 / 5.0); ``test_slow_rank_is_flagged`` injects a delay on one rank and requires the
analysis to name that rank. Every case here carries only the ``perf`` marker, so tier runs never select it.
Results: reports/html/perf/perf.json and reports/html/perf/bandwidth.png (``--perf-out``)."""
import pytest

from moe_cts.report import perf as perf_report
from moe_cts.suite import perf
from moe_cts.suite import records

SLOW_RANK = 5


def _params():
    return [pytest.param(c, id=c.id, marks=[pytest.mark.perf]) for c in perf.perf_cases()]


def _attach(rec):
    try:
        import allure

        allure.attach(perf_report.text(rec), name="perf summary", attachment_type=allure.attachment_type.TEXT)
    except Exception:
        pass


def _opts(config):
    return {"warmup": config.getoption("--perf-warmup"), "iters": config.getoption("--perf-iters")}


def _skip_unless_served(cts, case):
    fx = cts.fixture
    if case.product not in fx.products:
        pytest.skip(f"fixture {fx.name} serves {list(fx.products)}, case is {case.product}")
    cap = fx.capacity() if hasattr(fx, "capacity") else None
    if cap is not None and case.params.world_size > cap:
        pytest.skip(f"case needs {case.params.world_size} ranks, fixture {fx.name} has {cap}")
    if case.feature == "perf-sweep" and fx.device_type == "cpu" and case.params.bs > 16:
        pytest.skip("the large-message sweep is for device fixtures (minutes per case on 2 CPU cores)")


@pytest.mark.perf
@pytest.mark.parametrize("pcase", _params())
def test_bandwidth(pcase, cts, request):
    _skip_unless_served(cts, pcase)
    r = request.config.getoption("--perf-slow-rank")
    slow = None if r is None else {"rank": r, "delay_s": request.config.getoption("--perf-slow-delay")}
    rec = perf.run(cts, pcase, slow=slow, **_opts(request.config))
    records.add_perf_record(request.config, request.node.nodeid, rec)
    _attach(rec)
    print(perf_report.text(rec))
    for what in ("dispatch", "combine"):
        assert rec[what]["latency_s"] > 0 and rec[what]["alltoall_latency_s"] > 0, f"{pcase.id}: {what} was not timed"
    if slow is not None and "slow_ranks" in rec:
        assert rec["slow_ranks"] == [r], f"{pcase.id}: injected a delay on rank {r}, analysis flagged {rec['slow_ranks']}"


_SLOW = perf.slow_case()


@pytest.mark.perf
@pytest.mark.parametrize("pcase", [pytest.param(_SLOW, id=_SLOW.id, marks=[pytest.mark.perf])] if _SLOW else [])
def test_slow_rank_is_flagged(pcase, cts, request):
    _skip_unless_served(cts, pcase)
    delay = request.config.getoption("--perf-slow-delay")
    rec = perf.run(cts, pcase, warmup=1, iters=3, slow={"rank": SLOW_RANK, "delay_s": delay})
    records.add_perf_record(request.config, request.node.nodeid, rec)
    _attach(rec)
    print(perf_report.text(rec))
    assert "diagnosis" in rec, f"{pcase.id}: no performance_info came back"
    assert rec["slow_ranks"] == [SLOW_RANK], (
        f"{pcase.id}: injected {delay:g} s on rank {SLOW_RANK}; slow-rank analysis flagged columns {rec['slow_ranks']} "
        f"(diagnosis {rec['diagnosis']})")
