"""The package layout is the pipeline: every stage imports only the stages below it, no import cycles, no
module reaches for another module's private names, and the library never imports the self-tests."""
from __future__ import annotations

import ast
from pathlib import Path

import moe_cts

PKG = Path(moe_cts.__file__).resolve().parent
# bottom to top: a module may import its own stage and the stages before it in this list
STAGES = ("", "model", "repo", "binding", "spec", "cases", "oracle", "backends", "world", "report", "suite",
          "mutants", "cli")
STAGE_RANK = {"": 0, "model": 0, "repo": 0, "binding": 1, "spec": 2, "cases": 3, "oracle": 4, "backends": 5,
              "world": 6, "report": 7, "suite": 8, "mutants": 9, "cli": 10}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The moe_cts module an import of ``name`` needs (a package's __init__ if ``name`` is not a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, modname: str) -> list[tuple[str, int, str | None]]:
    """(imported module, line, imported name or None) for every import of the module, top level or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, node.lineno, None))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = modname.split(".")
                if not path.name == "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in MODULES else mod, node.lineno, None if sub in MODULES else a.name))
    return out


def _graph() -> dict[str, set[str]]:
    g = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, _, _ in _imports(p, m):
            t = _resolve(target) if target.startswith("moe_cts") else None
            if t and t != m:
                g[m].add(t)
    return g


def _stage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_stage():
    assert {_stage(m) for m in MODULES} <= set(STAGES), sorted({_stage(m) for m in MODULES} - set(STAGES))


def test_no_import_cycle():
    g = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_stages_import_only_stages_below():
    bad = []
    for m, targets in _graph().items():
        for t in targets:
            if STAGE_RANK[_stage(t)] > STAGE_RANK[_stage(m)]:
                bad.append(f"{m} ({_stage(m) or 'top'}) imports {t} ({_stage(t)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_private_name_crosses_a_module():
    bad = []
    for m, p in MODULES.items():
        for target, line, name in _imports(p, m):
            if name and name.startswith("_") and not name.startswith("__") and target.startswith("moe_cts") \
                    and _resolve(target) != m:
                bad.append(f"{p.relative_to(PKG.parent)}:{line} imports {target}.{name}")
        tree = ast.parse(p.read_text(encoding="utf-8"))
        mods = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names if a.name.startswith("moe_cts")}
        mods |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("moe_cts") for a in n.names if f"{n.module}.{a.name}" in MODULES}
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in mods \
                    and n.attr.startswith("_") and not n.attr.startswith("__"):
                bad.append(f"{p.relative_to(PKG.parent)}:{n.lineno} uses {n.value.id}.{n.attr}")
    assert not bad, "\n".join(bad)


def test_library_never_imports_the_self_tests():
    bad = [f"{p.relative_to(PKG.parent)}:{line} imports {t}" for m, p in MODULES.items()
           for t, line, _ in _imports(p, m) if t == "tests" or t.startswith(("tests.", "conftest"))]
    assert not bad, bad


def test_the_checker_sees_what_it_must():
    """The helpers above find real imports (a check that finds nothing would pass anything)."""
    g = _graph()
    assert "moe_cts.spec.profile" in g["moe_cts.backends.sim"] and "moe_cts.binding" in g["moe_cts.backends.sim"] \
        or "moe_cts.spec" in g["moe_cts.backends.sim"]
    assert "moe_cts.oracle.reference" in g["moe_cts.oracle.compute"]
    assert STAGE_RANK[_stage("moe_cts.cli.check")] > STAGE_RANK[_stage("moe_cts.suite.plugin")]
