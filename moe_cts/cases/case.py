"""A case: plain data that says everything about one test of the operators.

Product, spec profile, every operator parameter (an OpParams), the input recipe (seed, routing), its
tier, and its expectation (outputs, or an aclnn status and the spec row that must fire). A case
crosses process boundaries as ``to_dict()`` / ``from_dict()``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from moe_cts.model import OpParams
from moe_cts.spec import DEFAULT_PROFILE

TIERS = ("smoke", "nightly", "full")


@dataclass(frozen=True)
class Case:
    id: str
    params: OpParams
    tier: str  # smallest tier that holds the case: smoke < nightly < full
    kind: str  # "legal" | "illegal" | "consistency" | "buffsize"
    feature: str  # what the case is about: "base", "boundary", "enum", "pairwise", a constraint id ...
    seed: int
    routing: str = "uniform"
    expect_status: int | None = None  # None: the call must succeed
    expect_constraint: str | None = None  # the spec row that must fire (illegal cases)
    overrides: tuple[tuple[str, Any], ...] = ()  # CallDesc overrides (dotted paths), applied to the real call too
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the world (HCCL_BUFFSIZE ...)
    profile: str = DEFAULT_PROFILE
    # cross-rank consistency cases: per-rank parameter changes {rank: {param: value}}
    rank_overrides: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...] = ()
    # torch_npu's own Python-side check that rejects this call before aclnn runs (ERR01001), if any:
    # through torch_npu the aclnn status cannot be observed, the binding rejection is the expectation
    expect_binding: str | None = None
    # the call that must reject an illegal case: "dispatch", or the combine flavour (after a legal dispatch)
    expect_op: str = "dispatch"

    @property
    def product(self) -> str:
        return self.params.product

    @property
    def legal(self) -> bool:
        return self.expect_status is None

    def in_tier(self, tier: str) -> bool:
        return TIERS.index(self.tier) <= TIERS.index(tier)

    def overrides_dict(self) -> dict:
        return dict(self.overrides)

    def env_dict(self) -> dict:
        return dict(self.env)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "params": self.params.to_dict(), "tier": self.tier, "kind": self.kind,
            "feature": self.feature, "seed": self.seed, "routing": self.routing,
            "expect_status": self.expect_status, "expect_constraint": self.expect_constraint,
            "overrides": [list(o) for o in self.overrides], "env": [list(e) for e in self.env],
            "profile": self.profile,
            "rank_overrides": [[r, [list(kv) for kv in ch]] for r, ch in self.rank_overrides],
            "expect_binding": self.expect_binding, "expect_op": self.expect_op,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        return cls(
            id=d["id"], params=OpParams.from_dict(d["params"]), tier=d["tier"], kind=d["kind"],
            feature=d["feature"], seed=d["seed"], routing=d.get("routing", "uniform"),
            expect_status=d.get("expect_status"), expect_constraint=d.get("expect_constraint"),
            overrides=tuple((k, v) for k, v in d.get("overrides", [])),
            env=tuple((k, v) for k, v in d.get("env", [])), profile=d.get("profile", DEFAULT_PROFILE),
            rank_overrides=tuple((r, tuple((k, v) for k, v in ch)) for r, ch in d.get("rank_overrides", [])),
            expect_binding=d.get("expect_binding"), expect_op=d.get("expect_op", "dispatch"),
        )

    def allure_parameters(self) -> dict[str, object]:
        """Every case-defining value, nothing volatile (no paths, times, pids). Scalars stay native so
        Allure shows 4, not '4'; lists and None become JSON text."""
        def show(v):
            return v if isinstance(v, (int, float, str, bool)) else json.dumps(v)

        out = {k: show(v) for k, v in self.params.to_dict().items()}
        out.update(seed=self.seed, routing=self.routing, profile=self.profile, kind=self.kind)
        if self.expect_status is not None:
            out["expect_status"] = self.expect_status
            out["expect_constraint"] = self.expect_constraint
            out["expect_op"] = self.expect_op
        for k, v in self.overrides:
            out[f"override:{k}"] = json.dumps(v)
        for k, v in self.env:
            out[f"env:{k}"] = str(v)
        return out


def stable_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


