"""Known differences between the shipped kernels and the doc, kept as data (waivers.yaml)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

WAIVERS_FILE = Path(__file__).with_name("waivers.yaml")


@dataclass(frozen=True)
class Waiver:
    id: str
    constraint: str  # the row id it waives
    kernel_behaviour: str  # what the shipped kernel does instead
    source: str  # where that is known from (kernel-behaviour.md section / repository path / issue)


@functools.lru_cache(maxsize=None)
def _load_all() -> dict:
    with open(WAIVERS_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_waivers(profile: str = "v4-doc") -> list[Waiver]:
    """The waivers of `profile`: its own plus its ancestors', limited to rows the profile still has."""
    from moe_cts.spec.profile import load_profile

    prof = load_profile(profile)
    data = _load_all().get("profiles", {})
    out, seen = [], set()
    for name in prof.chain:
        for w in data.get(name) or ():
            if w["id"] in seen:
                continue
            seen.add(w["id"])
            if w["constraint"] not in {r.id for r in prof.rows}:
                continue
            out.append(Waiver(str(w["id"]), str(w["constraint"]), str(w["kernel_behaviour"]).strip(), str(w["source"]).strip()))
    return out
