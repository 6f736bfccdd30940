"""``moe-cts mutate``: run the conformance suite against every mutant backend and say which cases kill it.

A conformance suite is only as good as the defects it catches. For each mutant of the catalogue
(``moe_cts.mutants``) this runs pytest on ``conformance/`` in a subprocess with
``--backend moe_cts.mutants.catalogue:<factory>`` (``-x``: the first failing or broken case ends the
run, so a killed mutant is cheap), reads the junit XML, and prints

    mutant | breaks | killed by | seconds

A mutant whose run has no failed or broken case is a SURVIVOR (named, exit status 1).

Before the mutants, the unmutated backend (``sim``) runs the same selection: a case that already
fails there proves nothing about a mutant, so it is deselected from the mutant runs and listed.

``--fast`` runs, per mutant, only the cases the catalogue says kill it (the CI subset of
tests/test_mutants.py) instead of a whole tier.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from moe_cts import repo

ROOT = repo.ROOT
DEFAULT_DEADLINE_S = 10.0
DEFAULT_TIMEOUT_S = 900.0


@dataclass
class Result:
    id: str
    breaks: str
    backend: str
    killed_by: list[str] = field(default_factory=list)  # node ids that failed or broke
    broken: list[str] = field(default_factory=list)  # subset of killed_by reported as errors (broken)
    passed: int = 0
    seconds: float = 0.0
    status: str = "survived"  # killed | survived | timeout | error
    note: str = ""
    known_survivor: str = ""
    why: dict[str, str] = field(default_factory=dict)  # killing node id -> its failure message

    @property
    def killed(self) -> bool:
        return self.status == "killed"


def junit_outcomes(path: Path, messages: dict | None = None) -> dict[str, str]:
    """node id -> passed | failed | broken | skipped, from a pytest junit XML file (``messages``
    receives node id -> the failure's one-line message)."""
    out: dict[str, str] = {}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return out
    for tc in root.iter("testcase"):
        cls, name = tc.get("classname", ""), tc.get("name", "")
        node = (cls.replace(".", "/") + ".py::" + name) if cls else name
        fail = tc.find("failure")
        if fail is not None:
            # the plugin's statuses: an AssertionError (CaseFailure) is *failed*, any other exception *broken*
            msg = fail.get("message", "")
            if messages is not None:
                messages[node] = (msg.splitlines() or [""])[0][:300]
            out[node] = "failed" if (msg.startswith(("AssertionError", "assert ", "moe_cts.suite.CaseFailure"))
                                     or "CaseFailure" in msg.split(":", 1)[0]) else "broken"
        elif tc.find("error") is not None:  # setup/teardown errors: infrastructure
            out[node] = "broken"
            if messages is not None:
                messages[node] = ((tc.find("error").get("message") or "").splitlines() or [""])[0][:300]
        elif tc.find("skipped") is not None:
            out[node] = "skipped"
        else:
            out[node] = "passed"
    return out


def pytest_command(backend: str, *, tier: str | None, nodes: tuple[str, ...] = (), deadline: float,
                   junit: Path, stop_first: bool = True, deselect: tuple[str, ...] = (),
                   fixture: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest"]
    cmd += list(nodes) if nodes else ["conformance"]
    if tier and not nodes:
        cmd += ["-m", tier]
    cmd += ["--backend", backend, "--case-deadline", str(deadline), "-q", "-p", "no:randomly",
            "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit1"]
    if fixture:
        cmd += ["--fixture", fixture]
    if stop_first:
        cmd.append("-x")
    for d in deselect:
        cmd += ["--deselect", d]
    return cmd


def run_backend(backend: str, *, tier: str | None, nodes: tuple[str, ...] = (), deadline: float,
                timeout: float, stop_first: bool = True, deselect: tuple[str, ...] = (),
                fixture: str | None = None, messages: dict | None = None) -> tuple[dict[str, str], float, str]:
    """Run the suite on ``backend``; returns (junit outcomes, seconds, note)."""
    with tempfile.TemporaryDirectory(prefix="moe-cts-mutate-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = pytest_command(backend, tier=tier, nodes=nodes, deadline=deadline, junit=junit,
                             stop_first=stop_first, deselect=deselect, fixture=fixture)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        t0 = time.monotonic()
        note = ""
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout, start_new_session=True)
            if proc.returncode not in (0, 1, 2):  # 0 passed, 1 failures, 2 interrupted (-x)
                note = f"pytest exit {proc.returncode}: " + " | ".join(proc.stdout.strip().splitlines()[-3:])[:400]
        except subprocess.TimeoutExpired as exc:
            note = f"TIMEOUT after {timeout:.0f}s"
            if exc.stdout:
                note += ": " + (exc.stdout if isinstance(exc.stdout, str) else exc.stdout.decode(errors="replace"))[-200:]
        return junit_outcomes(junit, messages), time.monotonic() - t0, note


def run_mutant(m, *, tier: str | None, fast: bool, deadline: float, timeout: float,
               deselect: tuple[str, ...], fixture: str | None) -> Result:
    nodes = tuple(n for n in m.kills) if fast else ()
    r = Result(m.id, m.breaks, m.backend, known_survivor=m.survives)
    if fast and not nodes:
        r.status, r.note = "survived", "no killing case known"
        return r
    msgs: dict[str, str] = {}
    spurious: list[str] = []  # broken in the tier run, passed when rerun alone: not the mutant's doing
    confirmed: list[str] = []  # broken again when rerun alone
    t0 = time.monotonic()
    note = ""
    for attempt in range(2):
        outcomes, _, note = run_backend(m.backend, tier=tier, nodes=nodes, deadline=deadline, timeout=timeout,
                                        stop_first=not fast, deselect=deselect + tuple(spurious + confirmed),
                                        fixture=fixture, messages=msgs)
        killers = [n for n, o in outcomes.items() if o in ("failed", "broken")]
        if fast or not killers or any(outcomes[n] == "failed" for n in killers) or attempt == 1:
            break
        # killed only by *broken* cases (a hang or crash, or a busy host missing the deadline): rerun them
        # alone (a case that passes now was not the mutant's doing), then go on once through the rest of
        # the tier looking for a conformance *failure* as well
        again, _, _ = run_backend(m.backend, tier=None, nodes=tuple(killers), deadline=deadline, timeout=timeout,
                                  stop_first=False, fixture=fixture)
        spurious += [n for n in killers if again.get(n) == "passed"]
        confirmed += [n for n in killers if again.get(n) != "passed"]
    for n in confirmed:
        outcomes.setdefault(n, "broken")
    r.seconds = round(time.monotonic() - t0, 1)
    r.killed_by = [n for n, o in outcomes.items() if o in ("failed", "broken")]
    r.broken = [n for n, o in outcomes.items() if o == "broken"]
    r.passed = sum(1 for o in outcomes.values() if o == "passed")
    r.why = {n: msgs.get(n, "") for n in r.killed_by}
    r.note = note + (f" (spurious broken, passed on rerun: {[short(n) for n in spurious]})" if spurious else "")
    if r.killed_by:
        r.status = "killed"
    elif note.startswith("TIMEOUT"):
        r.status = "timeout"
    elif note or not outcomes:
        r.status = "error"
        r.note = note or "no test ran (collection error?)"
    return r


def short(node: str) -> str:
    """conformance/test_roundtrip.py::test_roundtrip[CASE] -> roundtrip[CASE]"""
    mod, _, name = node.partition("::")
    mod = mod.rsplit("/", 1)[-1].removeprefix("test_").removesuffix(".py")
    case = name[name.find("["):] if "[" in name else "::" + name
    return mod + case


def table(results: list[Result]) -> str:
    rows = [("mutant", "breaks", "killed by", "seconds")]
    for r in results:
        if r.killed:
            kb = ", ".join(short(n) + (" (broken)" if n in r.broken else "") for n in r.killed_by[:3])
            if len(r.killed_by) > 3:
                kb += f" (+{len(r.killed_by) - 3})"
        else:
            kb = f"SURVIVED ({r.status})" + (f": {r.note}" if r.note and r.status != "survived" else "")
            if r.known_survivor:
                kb += f" [known: {r.known_survivor[:120]}]"
        rows.append((r.id, r.breaks[:90], kb, f"{r.seconds:.1f}"))
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append(f"{row[0]:<{w[0]}} | {row[1]:<{w[1]}} | {row[2]:<{w[2]}} | {row[3]:>7}")
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown(results: list[Result]) -> str:
    """The same table as Markdown (docs/mutants.md)."""
    out = ["| mutant | breaks | killed by | seconds |", "|---|---|---|---:|"]
    for r in results:
        if r.killed:
            kb = "<br>".join(f"`{short(n)}`" + (" (broken)" if n in r.broken else "") for n in r.killed_by[:3])
        else:
            kb = f"**SURVIVED** ({r.status})" + (f": {r.known_survivor}" if r.known_survivor else "")
        out.append(f"| `{r.id}` | {r.breaks} | {kb} | {r.seconds:.1f} |")
    return "\n".join(out)
