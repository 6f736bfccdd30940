"""Known differences between the shipped kernels and the doc, kept as data (waivers.yaml)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from moe_cts.spec.profile import DEFAULT_PROFILE, load_profile

WAIVERS_FILE = Path(__file__).with_name("waivers.yaml")


@dataclass(frozen=True)
class Waiver:
    id: str
    constraint: str  # the row id it waives
    kernel_behaviour: str  # what the shipped kernel does instead
    source: str  # where that is known from (kernel-behaviour.md section / repository path / issue)
    products: tuple = ()  # the products it applies to (empty: every product of its row)

    def applies(self, constraint: str | None, product: str) -> bool:
        return constraint == self.constraint and (not self.products or product in self.products)


def waiver_for(waivers, constraint: str | None, product: str) -> Waiver | None:
    """The first waiver of ``waivers`` covering row ``constraint`` on ``product`` (None: not waived)."""
    return next((w for w in waivers if w.applies(constraint, product)), None)


@functools.lru_cache(maxsize=None)
def _load_all() -> dict:
    with open(WAIVERS_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_waivers(profile: str = DEFAULT_PROFILE) -> list[Waiver]:
    """The waivers of `profile`: its own plus its ancestors', limited to rows the profile still has."""
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
            out.append(Waiver(str(w["id"]), str(w["constraint"]), str(w["kernel_behaviour"]).strip(),
                              str(w["source"]).strip(), tuple(w.get("products") or ())))
    return out
