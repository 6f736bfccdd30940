"""The golden store: frozen digests (and, for a few small cases, full tensors) of the oracle.

``golden/manifest.json`` holds, per canonical case: parameters, seed, routing, digests of every
input and of every output's valid region per rank, provenance (generator version, date), and the
name of a safetensors file for the cases stored in full. ``verify`` recomputes everything and fails
loudly on any drift; ``regenerate`` is the deliberate command whose printed diff a reviewer reads.
A corrupt, missing or stale file is one line naming the case and the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import numpy as np

from moe_cts import repo
from moe_cts import cases as cases_mod
from moe_cts.oracle.compute import compute
from moe_cts.model import DISPATCH_OUTPUTS
from moe_cts.spec import DEFAULT_PROFILE

ROOT = repo.GOLDEN
MANIFEST = "manifest.json"
FORMAT = 1
FULL_TENSOR_CASES = 10
MAX_FULL_BYTES = 1_500_000  # per case; keeps golden/ far under 20 MB
CANONICAL_FEATURES = ("base", "pairwise", "two-rank", "shared-replicas", "quant-ties", "combine-cancellation")


class GoldenError(Exception):
    """One line: which case, which file, what is wrong."""


def digest(a) -> str:
    if a is None:
        return "none"
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256()
    h.update(f"{a.dtype.name}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:32]


def valid_regions(params, out: dict) -> dict[str, np.ndarray]:
    """The defined part of each dispatch output (rows past the valid count are undefined)."""
    n = int(out["valid_rows"])
    reg = {}
    for name in DISPATCH_OUTPUTS:
        a = out.get(name)
        if a is None:
            reg[name] = None
            continue
        a = np.asarray(a)
        if name in ("expand_x", "dynamic_scales", "expand_scales"):
            a = a[:n] if a.shape[0] >= n else a
        elif name == "assist_info_for_combine":
            # A3: 3 entries per OWN row (the TP peer half carries none); A2: one per (token, k) sent
            a = a[: int(out.get("valid_assist", 3 * n if params.product == "A3" else params.bs * params.k))]
        reg[name] = a
    return reg


def case_record(case, orc) -> dict:
    p = case.params
    rec = {
        "params": p.to_dict(), "seed": case.seed, "routing": case.routing, "profile": case.profile,
        "inputs": [{k: digest(v) for k, v in sorted(inp.items())} for inp in orc.inputs],
        "dispatch": [{k: digest(v) for k, v in valid_regions(p, d).items()} | {"valid_rows": int(d["valid_rows"])}
                     for d in orc.dispatch],
        "combine": None if orc.combine is None else [
            {k: digest(np.asarray(v)[np.asarray(c.get("active", True))] if k != "active" else v)
             for k, v in sorted(c.items()) if v is not None} for c in orc.combine],
    }
    return rec


def _load_manifest(root: Path = ROOT) -> dict:
    path = root / MANIFEST
    if not path.exists():
        raise GoldenError(f"{path}: golden manifest is missing (run `moe-cts golden regenerate`)")
    try:
        m = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path}: corrupt golden manifest ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("cases"), dict):
        raise GoldenError(f"{path}: not a moe-cts golden manifest of format {FORMAT}")
    return m


_CACHE: dict[str, dict] = {}


def manifest(root: Path = ROOT) -> dict:
    key = str(root)
    if key not in _CACHE:
        _CACHE[key] = _load_manifest(root)
    return _CACHE[key]


def check_oracle(case, orc, root: Path = ROOT) -> None:
    """Raise GoldenError when the oracle no longer reproduces a stored golden for this case.

    That means the reference model (or the input generator) changed behaviour: every verdict of the
    run is suspect, so the test is *broken*, not failed.
    """
    try:
        m = manifest(root)
    except GoldenError:
        return  # verify reports a missing/corrupt manifest; the suite still runs on the live oracle
    entry = m["cases"].get(case.id)
    if entry is None:
        return
    diff = _diff_records(entry, case_record(case, orc))
    if diff:
        raise GoldenError(f"golden {case.id} ({root / MANIFEST}): oracle differs from the frozen golden: {diff[0]}")


def _diff_records(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("params", "seed", "routing", "profile"):
        if old.get(key) != new.get(key):
            out.append(f"{key} changed: {old.get(key)!r} -> {new.get(key)!r}")
    for section in ("inputs", "dispatch", "combine"):
        a, b = old.get(section) or [], new.get(section) or []
        if len(a) != len(b):
            out.append(f"{section}: {len(a)} ranks stored, {len(b)} now")
            continue
        for g, (ra, rb) in enumerate(zip(a, b)):
            for name in sorted(set(ra) | set(rb)):
                if ra.get(name) != rb.get(name):
                    out.append(f"{section} rank {g} {name}: {ra.get(name)} -> {rb.get(name)}")
    return out


def canonical_cases(profile: str = DEFAULT_PROFILE) -> list:
    """Base, two-rank, replicated-shared and pairwise legal cases: small, and every feature dimension."""
    out = []
    for c in cases_mod.generate(profile):
        if c.legal and c.feature in CANONICAL_FEATURES and c.params.world_size <= 16:
            out.append(c)
    return out


def _tensor_dict(params, orc) -> tuple[dict, dict]:
    tensors, meta = {}, {}
    for g, d in enumerate(orc.dispatch):
        for name, a in valid_regions(params, d).items():
            if a is None:
                continue
            a = np.ascontiguousarray(a)
            if a.dtype.name == "bfloat16":
                meta[f"r{g}.{name}"] = "bfloat16"
                a = a.view(np.uint16)
            tensors[f"r{g}.{name}"] = a
    return tensors, meta


def _write_tensors(case, orc, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors, meta = _tensor_dict(case.params, orc)
    save_file(tensors, str(path), metadata={"case": case.id, **{k: v for k, v in meta.items()}})


def _read_tensors(case_id: str, path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.exists():
        raise GoldenError(f"golden {case_id}: tensor file {path} is missing")
    try:
        raw = load_file(str(path))
        import safetensors

        with safetensors.safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, Exception) as exc:
        raise GoldenError(f"golden {case_id}: tensor file {path} is corrupt ({str(exc)[:80]})") from None
    import ml_dtypes

    return {k: (v.view(ml_dtypes.bfloat16) if meta.get(k) == "bfloat16" else v) for k, v in raw.items()}


def regenerate(root: Path = ROOT, profile: str = DEFAULT_PROFILE, echo=print) -> int:
    """Recompute every golden from the oracle and write it; print what changed. Returns #changed cases."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tensors").mkdir(exist_ok=True)
    try:
        old = _load_manifest(root)["cases"]
    except GoldenError:
        old = {}
    new_cases = {}
    full = 0
    changed = 0
    for case in canonical_cases(profile):
        orc = compute(case)
        rec = case_record(case, orc)
        size = sum(np.asarray(a).nbytes for d in orc.dispatch for a in valid_regions(case.params, d).values() if a is not None)
        rec["tensors"] = None
        if full < FULL_TENSOR_CASES and size <= MAX_FULL_BYTES:
            rel = f"tensors/{case.id}.safetensors"
            _write_tensors(case, orc, root / rel)
            rec["tensors"] = rel
            full += 1
        diff = _diff_records(old[case.id], rec) if case.id in old else ["new case"]
        if diff:
            changed += 1
            echo(f"{case.id}: " + "; ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""))
        rec["provenance"] = (old.get(case.id, {}).get("provenance") if not diff else None) or {
            "generator_version": cases_mod.GENERATOR_VERSION, "moe_cts": _version(),
            "date": _dt.date.today().isoformat()}
        new_cases[case.id] = rec
    for cid in sorted(set(old) - set(new_cases)):
        changed += 1
        echo(f"{cid}: removed (no longer a canonical case)")
    keep = {r["tensors"] for r in new_cases.values() if r["tensors"]}
    for f in (root / "tensors").glob("*.safetensors"):
        if f"tensors/{f.name}" not in keep:
            f.unlink()
    body = {"format": FORMAT, "profile": profile, "generator_version": cases_mod.GENERATOR_VERSION,
            "cases": dict(sorted(new_cases.items()))}
    (root / MANIFEST).write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    _CACHE.pop(str(root), None)
    echo(f"golden: {len(new_cases)} cases ({full} with full tensors), {changed} changed")
    return changed


def verify(root: Path = ROOT, profile: str = DEFAULT_PROFILE, echo=print) -> list[str]:
    """Every stored golden against a fresh oracle. Returns the problems (one line each)."""
    m = _load_manifest(root)
    problems = []
    by_id = {c.id: c for c in cases_mod.generate(m.get("profile", profile))}
    for cid, entry in m["cases"].items():
        case = by_id.get(cid)
        if case is None:
            problems.append(f"golden {cid} ({root / MANIFEST}): stale: the generator no longer produces this case")
            continue
        orc = compute(case)
        rec = case_record(case, orc)
        diff = _diff_records(entry, rec)
        if diff:
            problems.append(f"golden {cid} ({root / MANIFEST}): {diff[0]}" + (f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""))
            continue
        if entry.get("tensors"):
            path = root / entry["tensors"]
            try:
                stored = _read_tensors(cid, path)
            except GoldenError as exc:
                problems.append(str(exc))
                continue
            for g, d in enumerate(orc.dispatch):
                for name, a in valid_regions(case.params, d).items():
                    if a is None:
                        continue
                    s = stored.get(f"r{g}.{name}")
                    if s is None or digest(s) != digest(a):
                        problems.append(f"golden {cid}: tensor file {path}: rank {g} {name} differs from the oracle")
                        break
    echo(f"golden verify: {len(m['cases'])} cases, {len(problems)} problem(s)")
    return problems


def _version() -> str:
    from moe_cts import __version__

    return __version__
