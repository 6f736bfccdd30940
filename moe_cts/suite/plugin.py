"""The moe-cts pytest plugin: options, session objects, case parametrisation, result statuses.

Conformance modules are thin: they declare ``CASE_KIND`` (which generated cases they take) and a
test function with a ``case`` argument; this plugin parametrises it with the generated cases, marks
each with its tier / product / kind, applies the fixture's limits (skip) and the waiver list
(waived: still run, reported as xfail/xpass with the waiver id), and prints one command that reruns
exactly a failing case.

Statuses: passed; failed (AssertionError: a conformance violation); broken (any other exception:
a hang or crash caught by the world, infrastructure); skipped (the fixture cannot run it); waived.
"""
from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path

import pytest

from moe_cts import cases as cases_mod
from moe_cts.spec import hccl_buffsize_min_mb, load_waivers, waiver_for

DEFAULT_FIXTURE = "fixtures/sim.yaml"
_STATE_KEY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    g = parser.getgroup("moe-cts")
    g.addoption("--fixture", default=None, help=f"testbed YAML (default {DEFAULT_FIXTURE})")
    g.addoption("--backend", default=None, help="override the fixture's backend: sim | npu | package.module:factory")
    g.addoption("--product", default=None, choices=["A2", "A3"], help="run only this product's cases")
    g.addoption("--hw-tolerance", action="store_true",
                help="allow +-1 int8 step and 1e-6 relative dynamic_scales error (printed in every report)")
    g.addoption("--case-deadline", type=float, default=None, help="override the fixture's per-case deadline (s)")


class _State:
    """Per-session objects, created lazily so collection-only runs start no world."""

    def __init__(self, config):
        self.config = config
        root = Path(str(config.rootpath))
        fx_path = config.getoption("--fixture") or str(root / DEFAULT_FIXTURE)
        from moe_cts.world.fixtures import FixtureError, load_fixture

        try:
            self.fixture = load_fixture(fx_path)
        except FixtureError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.backend_spec = config.getoption("--backend") or self.fixture.backend
        from moe_cts.backends.base import BackendLoadError, load_backend

        try:  # fail fast in the parent with one line, not once per rank
            load_backend(self.backend_spec, **dict(self.fixture.backend_options))
        except BackendLoadError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.profile = self.fixture.spec_profile
        self.unavailable = None  # why this fixture's devices cannot run here (every case is then skipped)
        if self.backend_spec == "npu":
            from moe_cts.backends.npu import npu_available

            ok, reason = npu_available()
            self.unavailable = None if ok else f"npu backend unavailable: {reason}"
        self._pool = None
        self.runs: dict[tuple, object] = {}
        self.refs: dict[str, object] = {}
        from moe_cts.oracle.compare import EXACT, Tolerance

        self.tolerance = Tolerance(int8_steps=1, scale_rel=1e-6) if config.getoption("--hw-tolerance") else EXACT
        self.waivers = load_waivers(self.profile)

    @property
    def pool(self):
        if self._pool is None:
            from moe_cts.world import WorldPool

            self._pool = WorldPool(self.fixture, backend_spec=self.backend_spec)
        return self._pool

    def deadline(self) -> float:
        return self.config.getoption("--case-deadline") or self.fixture.deadlines.case_s

    def close(self):
        if self._pool is not None:
            self._pool.close()


def state(config) -> _State:
    st = config.stash.get(_STATE_KEY, None)
    if st is None:
        st = {"s": _State(config)}
        config.stash[_STATE_KEY] = st
    return st["s"]


# companion plugins owned by other modules (baselines/qualification, performance mode); registered with
# this plugin, before the command line is parsed, so their options exist
pytest_plugins = ["moe_cts.suite.records"]


def pytest_configure(config):
    config.addinivalue_line("markers", "waived: a known kernel/doc difference (see moe_cts/spec waivers)")
    if config.getoption("--fixture") or config.getoption("--backend"):
        state(config)  # a wrong option is one line now, not a collection traceback later


def pytest_unconfigure(config):
    st = config.stash.get(_STATE_KEY, None)
    if st:
        st["s"].close()


def selection_marks(case) -> list:
    """The marks -m selects on: tiers (a case carries its own tier and every larger one), product, kind."""
    marks = [getattr(pytest.mark, t) for t in cases_mod.TIERS[cases_mod.TIERS.index(case.tier):]]
    marks.append(getattr(pytest.mark, case.product.lower()))
    marks.append(getattr(pytest.mark, "legal" if case.legal else "illegal"))
    if case.expect_constraint and "hcclBuffsize" in case.expect_constraint:
        marks.append(pytest.mark.buffsize)
    return marks


def fixture_skip(case, st) -> str | None:
    """Why the session's fixture cannot run ``case`` (None: it can)."""
    fx = st.fixture
    if st.unavailable:
        return st.unavailable
    if case.product not in fx.products:
        return f"fixture {fx.name} serves {list(fx.products)}, case is {case.product}"
    cap = fx.capacity()
    if cap is not None and case.params.world_size > cap:
        return f"case needs {case.params.world_size} ranks, fixture {fx.name} has {cap}"
    if case.legal:
        need, have = _buffsize_need(case), fx.hccl_buffsize_mb
        if need is not None and need > have:
            return f"case needs HCCL_BUFFSIZE >= {need} MB, fixture {fx.name} has {have} MB"
    return None


def verdict_marks(case, st) -> list:
    """Skips (the fixture cannot run it) and the waiver (still run, reported with its id)."""
    marks = []
    why = fixture_skip(case, st)
    if why:
        marks.append(pytest.mark.skip(reason=why))
    w = waiver_for(st.waivers, case.expect_constraint, case.product)
    if w is not None:
        marks.append(pytest.mark.waived(w.id))
        marks.append(pytest.mark.xfail(reason=f"waived {w.id}: {w.kernel_behaviour} ({w.source})", strict=False))
    return marks


def _buffsize_need(case):
    try:
        return hccl_buffsize_min_mb(case.params, "ep", profile=case.profile)
    except (ValueError, KeyError, NotImplementedError):
        return None


def _case_item(item):
    cs = getattr(item, "callspec", None)
    case = cs.params.get("case") if cs is not None else None
    return case if isinstance(case, cases_mod.Case) and getattr(item.module, "CASE_KIND", None) else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Skips and waivers in one place (the array-api-tests pattern), with a warning for a waiver that no
    generated case of the profile can meet: it documents a behaviour the suite never observes."""
    cases = [(it, _case_item(it)) for it in items]
    if not any(c is not None for _, c in cases):
        return
    st = state(config)
    for item, case in cases:
        if case is not None:
            for m in verdict_marks(case, st):
                item.add_marker(m)
    generated = cases_mod.generate(st.profile)
    for w in st.waivers:
        if not any(w.applies(c.expect_constraint, c.product) for c in generated):
            warnings.warn(pytest.PytestWarning(
                f"waiver {w.id} (row {w.constraint}) matches no generated case of profile {st.profile}: "
                "it can never be observed by this suite"))


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    kind = getattr(metafunc.module, "CASE_KIND", None)
    if kind is None:
        return
    st = state(metafunc.config)
    product = metafunc.config.getoption("--product")
    selected = cases_for(kind, st.profile, product, getattr(metafunc.module, "CASE_FILTER", None))
    metafunc.parametrize("case", [pytest.param(c, id=c.id, marks=selection_marks(c)) for c in selected])


def cases_for(kind: str, profile: str, product: str | None, extra_filter=None) -> list:
    all_cases = cases_mod.generate(profile)
    out = []
    for c in all_cases:
        if product and c.product != product:
            continue
        if kind == "legal" and not c.legal:
            continue
        if kind == "illegal" and c.kind != "illegal":
            continue
        if extra_filter is not None and not extra_filter(c):
            continue
        out.append(c)
    return out


@pytest.fixture(scope="session")
def cts(request):
    """The session's moe-cts state: fixture, world pool, tolerance, waivers, caches."""
    return state(request.config)


@pytest.fixture(autouse=True)
def _allure_labels(request):
    case = request.node.callspec.params.get("case") if hasattr(request.node, "callspec") else None
    if case is None:
        yield
        return
    try:
        import allure
    except ImportError:
        yield
        return
    allure.dynamic.label("operator", "aclnnMoeDistributeDispatchV4+CombineV4")
    allure.dynamic.label("product", case.product)
    allure.dynamic.label("tier", case.tier)
    allure.dynamic.feature(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    allure.dynamic.story(case.feature)
    allure.dynamic.tag(case.product, case.tier, case.kind)
    for k, v in case.allure_parameters().items():
        allure.dynamic.parameter(k, v)
    if case.expect_constraint:
        w = waiver_for(state(request.config).waivers, case.expect_constraint, case.product)
        if w is not None:
            allure.dynamic.label("waiver", w.id)
            allure.dynamic.tag("waived")
    yield


def repro_command(config, nodeid: str) -> str:
    args = [sys.executable.rsplit("/", 1)[-1] if "/.venv/" in sys.executable else sys.executable, "-m", "pytest", nodeid]
    fx = config.getoption("--fixture")
    if fx:
        args += ["--fixture", fx]
    be = config.getoption("--backend")
    if be:
        args += ["--backend", be]
    if config.getoption("--hw-tolerance"):
        args.append("--hw-tolerance")
    return " ".join(shlex.quote(a) for a in args)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and hasattr(item, "callspec") and "case" in item.callspec.params:
        cmd = repro_command(item.config, item.nodeid)
        rep.sections.append(("rerun exactly this case", cmd))
        try:
            import allure

            allure.attach(cmd, name="rerun command", attachment_type=allure.attachment_type.TEXT)
        except Exception:
            pass


def pytest_sessionfinish(session, exitstatus):
    st = session.config.stash.get(_STATE_KEY, None)
    alluredir = session.config.getoption("allure_report_dir", None) if hasattr(session.config.option, "allure_report_dir") else None
    if not st or not alluredir:
        return
    d = Path(alluredir)
    d.mkdir(parents=True, exist_ok=True)
    from moe_cts.suite.environment import fingerprint

    fp = fingerprint(st["s"])
    (d / "environment.properties").write_text("".join(f"{k}={v}\n" for k, v in fp.items()))
    categories = Path(str(session.config.rootpath)) / "reports" / "categories.json"
    if categories.exists():
        (d / "categories.json").write_text(categories.read_text())
    (d / "moe-cts-run.json").write_text(json.dumps(fp, indent=1))
