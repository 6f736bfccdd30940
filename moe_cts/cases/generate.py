"""Case generators: legal and illegal cases from the spec rows.

Generators read the spec rows (moe_cts.spec) so the checker, the generators and the sim backend's
parameter checks agree by construction.

Legal cases: every range boundary of every checked range row (min, max, an interior value), every
enum value, and a pairwise covering of the feature dimensions. Illegal cases: from a legal base,
break exactly one checked row (just past a bound, wrong dtype, null tensor, wrong shape, buffer one
MB short) and expect its status. Ids are readable and stable (no hash(), no time, no set order).
"""
from __future__ import annotations

import itertools
import random
from functools import lru_cache
from typing import Iterable

from moe_cts.binding import case_rejection, unreachable
from moe_cts.cases.case import Case, stable_seed
from moe_cts.model import OpParams
from moe_cts.spec import DEFAULT_PROFILE, load_profile
from moe_cts.spec.derived import combine_op

MAX_RUNNABLE_SPECIAL = 4096  # zero+copy+const experts a legal case may have and still run end to end
# constraint id -> why no illegal case can reach it through the torch_npu API (filled by generation)
UNREACHABLE: dict[str, str] = {}
GENERATOR_VERSION = "1"


# ----------------------------------------------------------------------------------------------
# legal bases: small enough to run on CPU, legal on their product by the spec
# ----------------------------------------------------------------------------------------------
BASES = {
    "A3": OpParams(product="A3", ep_world_size=4, moe_expert_num=8, bs=4, h=1024, k=3),
    "A2": OpParams(product="A2", ep_world_size=16, moe_expert_num=16, bs=2, h=256, k=2, comm_alg="fullmesh",
                   expert_scales=True),
}


def checked_violations(params: OpParams, overrides: dict | None = None, profile: str = DEFAULT_PROFILE,
                       env: dict | None = None) -> list:
    return [v for v in load_profile(profile).check_params(params, env=env, overrides=overrides) if v.kind == "checked"]


def _repair(p: OpParams) -> OpParams:
    """Nudge dependent values so a changed parameter keeps the case legal where a simple rule exists.

    The rules are the spec's arithmetic couplings (M divisible by W-S, L==1 under TP, K bounded by the
    expert count, global_bs a multiple of W, mask/uneven-Bs exclusions): changing one value must not
    break another row by accident.
    """
    if p.product == "A2":
        p = p.replace(tp_world_size=0, shared_expert_rank_num=0, shared_expert_num=1 if p.shared_expert_num else 0,
                      const_expert_num=0)
    moe_ranks = p.ep_world_size - p.shared_expert_rank_num
    if moe_ranks <= 0:
        return p
    if p.tp_world_size == 2:
        m = moe_ranks  # L == 1
    else:
        per = max(1, p.moe_expert_num // moe_ranks)
        m = per * moe_ranks
    cap = 1024 if p.product == "A3" else 512
    while m > cap and m - moe_ranks > 0:
        m -= moe_ranks
    if p.product == "A2":
        while m // moe_ranks > 24 and m - moe_ranks > 0:
            m -= moe_ranks
    if p.product == "A3":
        while (m // moe_ranks) * p.ep_world_size > 2048 and m - moe_ranks > 0:
            m -= moe_ranks
    p = p.replace(moe_expert_num=m)
    total = p.moe_expert_num + p.special_expert_num
    if p.k > total:
        p = p.replace(k=max(1, total))
    if p.bs_per_rank is not None:
        if len(p.bs_per_rank) != p.ep_world_size:
            p = p.replace(bs_per_rank=_uneven(p.bs, p.ep_world_size))
        p = p.replace(global_bs=p.bs * p.ep_world_size, x_active_mask="none")
    elif p.global_bs:
        p = p.replace(global_bs=p.bs * p.ep_world_size)
    return p


def _uneven(bs: int, w: int) -> tuple[int, ...]:
    # ranks alternate between maxBs and a smaller Bs (>=1); rank 0 keeps maxBs so the max is realised
    return tuple(bs if r % 2 == 0 else max(1, bs // 2) for r in range(w))


# ----------------------------------------------------------------------------------------------
# feature dimensions for the pairwise covering
# ----------------------------------------------------------------------------------------------
def _dims(product: str) -> dict[str, tuple]:
    common = {
        "dtype": ("bfloat16", "float16"),
        "quant": ("q0", "q2", "q2smooth"),
        "mask": ("none", "1d", "2d") if product == "A3" else ("none", "1d"),
        "special": ("none", "zero", "copy", "const", "all") if product == "A3" else ("none", "zero", "copy", "zc"),
        "gbs": ("zero", "uniform", "uneven"),
        "ent": (0, 1),
        "routing": ("uniform", "hot_expert", "empty_ranks", "special_heavy", "shared_only"),
    }
    if product == "A3":
        common.update({"tp": (0, 1, 2), "shared": ("none", "1x1", "2x2"), "comm_alg": ("",)})
    else:
        common.update({"comm_alg": ("fullmesh", "")})
    return common


def _apply_dims(base: OpParams, combo: dict) -> tuple[OpParams, str]:
    p = base.replace(x_dtype=combo["dtype"])
    q = combo["quant"]
    p = p.replace(quant_mode=0 if q == "q0" else 2, scales=(q == "q2smooth"))
    if p.product == "A3":
        tp = combo["tp"]
        sh = combo["shared"]
        se, s = {"none": (1, 0), "1x1": (1, 1), "2x2": (2, 2)}[sh]
        p = p.replace(shared_expert_num=se, shared_expert_rank_num=s, tp_world_size=tp)
        if s:
            p = p.replace(ep_world_size=max(p.ep_world_size, s + 2))
    mask = combo["mask"]
    p = p.replace(x_active_mask=mask)
    z = c = q_ = 0
    sp = combo["special"]
    if sp in ("zero", "all", "zc"):
        z = 1
    if sp in ("copy", "all", "zc"):
        c = 1
    if sp in ("const", "all"):
        q_ = 1
    p = p.replace(zero_expert_num=z, copy_expert_num=c, const_expert_num=q_)
    g = combo["gbs"]
    if g == "zero":
        p = p.replace(global_bs=0)
    elif g == "uniform":
        p = p.replace(global_bs=p.bs * p.ep_world_size)
    else:
        p = p.replace(bs_per_rank=_uneven(p.bs, p.ep_world_size), global_bs=p.bs * p.ep_world_size)
    p = p.replace(expert_token_nums_type=combo["ent"], comm_alg=combo["comm_alg"])
    routing = combo["routing"]
    return _repair(p), routing


def _combo_ok(product: str, combo: dict) -> bool:
    if combo["routing"] == "special_heavy" and combo["special"] == "none":
        return False
    if combo["routing"] == "shared_only" and combo.get("shared", "none") == "none":
        return False
    if combo["gbs"] == "uneven" and combo["mask"] != "none":
        return False  # doc: with uneven Bs every token must be active (and the kernel rejects a mask there)
    return True


def pairwise(product: str, base: OpParams, profile: str = DEFAULT_PROFILE, seed: int = 7) -> list[tuple[dict, OpParams, str]]:
    """A greedy pairwise covering of the product's feature dimensions, every row legal by the spec.

    Deterministic: candidates come from a seeded generator over sorted dimension names, so the same
    spec and generator version give the same cases (and ids) on every run and Python hash seed.
    """
    dims = _dims(product)
    names = sorted(dims)
    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for va in dims[a]:
            for vb in dims[b]:
                uncovered.add((a, va, b, vb))
    rng = random.Random(seed)
    chosen: list[tuple[dict, OpParams, str]] = []
    misses = 0
    while uncovered and misses < 30:
        best = None
        best_gain = 0
        for _ in range(150):
            combo = {n: rng.choice(dims[n]) for n in names}
            # bias towards an uncovered pair so rare pairs get a chance
            a, va, b, vb = min(uncovered) if rng.random() < 0.5 else rng.choice(sorted(uncovered))
            combo[a], combo[b] = va, vb
            if not _combo_ok(product, combo):
                continue
            gain = sum(1 for x, y in itertools.combinations(names, 2) if (x, combo[x], y, combo[y]) in uncovered)
            if gain > best_gain:
                p, routing = _apply_dims(base, combo)
                if checked_violations(p, profile=profile):
                    continue
                best, best_gain = (combo, p, routing), gain
        if best is None:
            misses += 1
            continue
        combo = best[0]
        for x, y in itertools.combinations(names, 2):
            uncovered.discard((x, combo[x], y, combo[y]))
        chosen.append(best)
    return chosen


def _combo_label(combo: dict) -> str:
    parts = []
    for n in sorted(combo):
        v = combo[n]
        parts.append(f"{n}={v if v != '' else 'null'}")
    return ",".join(parts)


def _params_label(p: OpParams) -> str:
    bits = [f"W{p.ep_world_size}", f"M{p.moe_expert_num}", f"bs{p.bs}", f"h{p.h}", f"k{p.k}",
            "bf16" if p.x_dtype == "bfloat16" else "fp16", f"q{p.quant_mode}"]
    if p.scales:
        bits.append("smooth")
    if p.tp_world_size:
        bits.append(f"tp{p.tp_world_size}")
    if p.shared_expert_rank_num:
        bits.append(f"se{p.shared_expert_num}x{p.shared_expert_rank_num}")
    if p.x_active_mask != "none":
        bits.append(f"mask{p.x_active_mask}")
    for tag, n in (("z", p.zero_expert_num), ("c", p.copy_expert_num), ("q", p.const_expert_num)):
        if n:
            bits.append(f"{tag}{n}")
    if p.bs_per_rank is not None:
        bits.append("uneven")
    elif p.global_bs:
        bits.append(f"gbs{p.global_bs}")
    bits.append(f"ent{p.expert_token_nums_type}")
    if p.comm_alg:
        bits.append(p.comm_alg)
    return "-".join(bits)


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------
def _legal(product: str, profile: str) -> list[Case]:
    base = BASES[product]
    out: list[Case] = []

    def add(p: OpParams, feature: str, tier: str, routing: str = "uniform", label: str | None = None):
        cid = f"{product}-legal-{feature.split(':')[0]}-{label or _params_label(p)}"
        if feature.startswith("boundary:"):
            cid = f"{product}-legal-boundary-{feature.split(':', 1)[1]}-{label}"
        if routing != "uniform":
            cid += f"-{routing}"
        out.append(Case(id=cid, params=p, tier=tier, kind="legal", feature=feature,
                        seed=stable_seed(cid), routing=routing, profile=profile))

    add(base, "base", "smoke")
    # every range boundary of every checked row that names one
    prof = load_profile(profile)
    for row in prof.rows:
        if row.kind != "checked" or product not in row.products:
            continue
        try:
            values = prof.boundary_values(row.id, base)  # bounds written as expressions resolve on the base
        except (KeyError, AttributeError, NotImplementedError):
            values = []
        for name, value in values:
            if not hasattr(base, name) or value is None:
                continue  # None for a str keyword is not expressible through torch_npu
            p = _repair(base.replace(**{name: value}))
            if getattr(p, name) != value or checked_violations(p, profile=profile):
                continue
            if p.world_size > 768 or p.bs * p.h * p.world_size > 2**26:
                continue
            if p.special_expert_num > MAX_RUNNABLE_SPECIAL:
                continue  # legal, but combine's const_expert_v is (Q, H): not allocatable on any host
            tier = "nightly" if p.world_size <= 32 else "full"
            add(p, f"boundary:{row.id}", tier, label=f"{name}={value}-{_params_label(p)}")
    # two-rank variants: the smallest world a 2-device fixture (2 GPUs, nccl: one rank per device) runs
    if product == "A3":
        two = base.replace(ep_world_size=2, moe_expert_num=4)
        for p in (two, two.replace(quant_mode=2, scales=True, x_dtype="float16"),
                  two.replace(x_active_mask="2d", zero_expert_num=1, copy_expert_num=1, const_expert_num=1,
                              expert_token_nums_type=0),
                  two.replace(shared_expert_num=1, shared_expert_rank_num=1, moe_expert_num=2, quant_mode=2),
                  two.replace(bs_per_rank=(4, 1), global_bs=8)):
            p = _repair(p)
            if not checked_violations(p, profile=profile):
                add(p, "two-rank", "smoke")
    # a shared expert replicated on several ranks (rpse = S/SE = 2): sources split by s % rpse
    if product == "A3":
        for p in (base.replace(ep_world_size=6, shared_expert_num=1, shared_expert_rank_num=2, moe_expert_num=4),
                  base.replace(ep_world_size=6, shared_expert_num=2, shared_expert_rank_num=4, moe_expert_num=4,
                               quant_mode=2, scales=True)):
            p = _repair(p)
            if not checked_violations(p, profile=profile):
                add(p, "shared-replicas", "smoke")
    # inputs built so that a wrong rounding mode or summation order cannot hide under 1 ulp
    if product == "A3":
        for dt in ("bfloat16", "float16"):
            tier = "smoke" if dt == "bfloat16" else "nightly"  # cheap (4 ranks) and they see what 1 ulp hides
            add(base.replace(quant_mode=2, x_dtype=dt), "quant-ties", tier, routing="quant_ties")
            add(base.replace(k=3, copy_expert_num=1, x_dtype=dt), "combine-cancellation", tier,
                routing="cancelling")
    # pairwise covering of the feature dimensions
    for i, (combo, p, routing) in enumerate(pairwise(product, base, profile)):
        tier = "smoke" if i < 6 else "nightly"
        add(p, "pairwise", tier, routing=routing, label=f"pw{i:02d}-{_params_label(p)}")
    return out


def _illegal(product: str, profile: str) -> list[Case]:
    prof = load_profile(profile)
    bases = [BASES[product]]
    if product == "A3":
        b = BASES["A3"]
        bases += [b.replace(quant_mode=2, scales=True), b.replace(tp_world_size=2, moe_expert_num=4),
                  b.replace(shared_expert_num=1, shared_expert_rank_num=1, moe_expert_num=6),
                  b.replace(x_active_mask="2d", zero_expert_num=1, copy_expert_num=1, const_expert_num=1)]
    else:
        b = BASES["A2"]
        bases += [b.replace(quant_mode=2, scales=True), b.replace(x_active_mask="1d", zero_expert_num=1, copy_expert_num=1)]
    out: list[Case] = []
    for row in prof.rows:
        if row.kind != "checked" or product not in row.products:
            continue
        for base in bases:
            try:
                broken = prof.break_case(base, row.id)
            except (KeyError, NotImplementedError):
                broken = None
            if broken is None:
                continue
            p, overrides = broken
            overrides = dict(overrides or {})
            why = unreachable(overrides, p)
            if why:
                UNREACHABLE[row.id] = why
                continue
            env = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("env.")}
            fired = {v.constraint for v in checked_violations(p, overrides, profile)}
            if fired != {row.id}:
                continue
            cid = f"{product}-illegal-{row.id}"
            binding = case_rejection(p, overrides)
            # every null/dtype row is smoke; a stable quarter of the value rows (by id, so adding a row
            # never moves another case between tiers)
            smoke = row.status != 561002 or stable_seed(row.id) % 4 == 0
            out.append(Case(expect_binding=binding, id=cid, params=p, tier="smoke" if smoke else "nightly",
                            kind="illegal", feature=row.id, seed=stable_seed(cid), expect_status=row.status,
                            expect_constraint=row.id,
                            overrides=tuple(sorted((k, v) for k, v in overrides.items() if not k.startswith("env."))),
                            env=tuple(sorted((k, str(v)) for k, v in env.items())), profile=profile,
                            expect_op="dispatch" if "dispatch" in row.ops else combine_op(p)))
            break
    return out


@lru_cache(maxsize=8)
def generate(profile: str = DEFAULT_PROFILE, products: tuple[str, ...] = ("A2", "A3")) -> tuple[Case, ...]:
    cases: list[Case] = []
    for product in products:
        cases += _legal(product, profile)
        cases += _illegal(product, profile)
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        # a generator bug, not a user error: ids must identify exactly one case
        raise RuntimeError(f"duplicate case ids: {sorted(dup)[:5]}")
    return tuple(cases)


def select(cases: Iterable[Case], tier: str | None = None, product: str | None = None,
           kind: str | None = None) -> list[Case]:
    return [c for c in cases
            if (tier is None or c.in_tier(tier)) and (product is None or c.product == product)
            and (kind is None or c.kind == kind)]


