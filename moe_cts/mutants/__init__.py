"""The mutant catalogue: backends that each break exactly one documented behaviour.

A conformance suite is only as good as the defects it catches. Each :class:`Mutant` names a factory
in :mod:`moe_cts.mutants.catalogue` (load it with ``--backend moe_cts.mutants.catalogue:<factory>``), the
behaviour it breaks (with the kernel-behaviour.md / doc section), and ``kills``: the conformance
node-id fragments (``-k`` substrings) of the nightly cases known to kill it. ``tests/test_mutants.py``
runs exactly those (the CI fast subset); ``moe-cts mutate --tier T`` runs a whole tier against every
mutant (see docs/mutants.md).

``survives`` is set only for a mutant that no existing conformance case can kill; it names the
missing check. test_mutants marks those xfail(strict=True), so the day the check lands the test
turns red until the marker is removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODULE = "moe_cts.mutants.catalogue"


@dataclass(frozen=True)
class Mutant:
    id: str
    breaks: str  # one line, citing the section of docs/kernel-behaviour.md (KB) or the doc
    # node ids (module::test[case]) of nightly cases that kill it (the CI fast subset); for a known
    # survivor: the cases that exercise the behaviour but cannot see the difference
    kills: tuple[str, ...]
    factory: str = ""  # defaults to the id
    survives: str = ""  # why no existing case can kill it (the missing check); empty: must be killed
    tags: tuple[str, ...] = field(default=())

    @property
    def backend(self) -> str:
        return f"{MODULE}:{self.factory or self.id}"


# case ids used below (nightly tier; the smoke ones are marked in docs/mutants.md)
A3_BASE = "A3-legal-base-W4-M8-bs4-h1024-k3-bf16-q0-ent1"
A2_BASE = "A2-legal-base-W16-M16-bs2-h256-k2-bf16-q0-ent1-fullmesh"
A3_ENT0 = "A3-legal-boundary-any.expertTokenNumsType.enum-expert_token_nums_type=0-W4-M8-bs4-h1024-k3-bf16-q0-ent0"
A3_Q2 = "A3-legal-boundary-any.quantMode.enum-quant_mode=2-W4-M8-bs4-h1024-k3-bf16-q2-ent1"
A3_TP2 = "A3-legal-boundary-A3.tpWorldSize.range-tp_world_size=2-W4-M4-bs4-h1024-k3-bf16-q0-tp2-ent1"
A3_PW00 = "A3-legal-pairwise-pw00-W4-M8-bs4-h1024-k3-bf16-q0-tp1-mask1d-z1-c1-q1-gbs16-ent0-hot_expert"
A3_PW02 = "A3-legal-pairwise-pw02-W4-M6-bs4-h1024-k3-bf16-q2-smooth-se1x1-ent0-shared_only"
A3_PW03 = "A3-legal-pairwise-pw03-W4-M8-bs4-h1024-k3-fp16-q2-smooth-tp1-se2x2-mask2d-z1-gbs16-ent1"
A3_PW21 = "A3-legal-pairwise-pw21-W4-M8-bs4-h1024-k3-bf16-q0-se2x2-mask2d-ent1-empty_ranks"
A3_REPLICAS = "A3-legal-shared-replicas-W6-M4-bs4-h1024-k3-bf16-q0-se1x2-ent1"
A3_PW04 = "A3-legal-pairwise-pw04-W4-M6-bs4-h1024-k3-bf16-q2-se1x1-mask1d-q1-gbs16-ent1-empty_ranks"
A3_TIES = "A3-legal-quant-ties-W4-M8-bs4-h1024-k3-bf16-q2-ent1-quant_ties"
A3_CANCEL = "A3-legal-combine-cancellation-W4-M8-bs4-h1024-k3-bf16-q0-c1-ent1-cancelling"


def _d(case):
    return f"conformance/test_dispatch_legal.py::test_dispatch[{case}]"


def _r(case):
    return f"conformance/test_roundtrip.py::test_roundtrip[{case}]"


def _i(case):
    return f"conformance/test_illegal.py::test_rejected[{case}]"


CATALOGUE: tuple[Mutant, ...] = (
    # ---- expandX layout and the auxiliary outputs (KB §1, §2)
    Mutant("row_order", "KB §1.1: rows inside a local expert group reversed, assistInfo still in kernel order",
           (_r(A3_BASE),)),
    Mutant("source_rank_order", "KB §1.1: rows of an expert ordered by descending source rank (s loop reversed), "
           "triples not", (_r(A3_BASE),)),
    Mutant("drop_row", "KB §1.1: the first received row is dropped (rows shift up), counts unchanged",
           (_d(A3_BASE),)),
    Mutant("duplicate_row", "KB §1.1: the first received row is duplicated over the second", (_d(A3_BASE),)),
    Mutant("token_nums_swapped", "KB §2.3: expert_token_nums cumulative for type 1 / counts for type 0",
           (_d(A3_BASE),)),
    Mutant("ep_recv_reset_per_expert", "KB §2.2: ep_recv_counts prefix sum reset per local expert",
           (_r(A3_BASE),)),
    Mutant("ep_recv_plain_counts", "KB §2.2: ep_recv_counts plain counts, not an inclusive prefix sum",
           (_r(A3_BASE),)),
    Mutant("tp_halves_swapped", "KB §1.3: TP=2 expand_x is [peer ; own] instead of [own ; peer]", (_r(A3_TP2),)),
    Mutant("tp_counts_swapped", "KB §1.3: tp_recv_counts[tpRankId] holds the peer's total", (_r(A3_TP2),)),
    Mutant("assist_k_index_off", "KB §2.1: assistInfo triple kIdx is k+1 (mod K) for MoE rows", (_r(A3_BASE),)),
    Mutant("dyn_scales_shifted", "KB §2.5: dynamic_scales do not travel with their row (rotated by one)",
           (_d(A3_Q2),)),
    Mutant("expand_scales_zero", "KB §2.4: A2 expand_scales not filled (expertScales do not travel)",
           (_d(A2_BASE),)),
    # ---- quantisation (KB §3)
    Mutant("quant_round_half_away", "KB §3: int8 quant rounds half away from zero instead of half to even",
           (_d(A3_TIES),)),  # rows with amax exactly 127 and n+0.5 values: exact ties
    Mutant("dyn_scale_amax_over_127", "KB §3: dynamic scale output amax/127 instead of 1/(127/amax)",
           (_d(A3_Q2),)),
    Mutant("smooth_row_off", "KB §3: smooth-scale row of MoE expert e is e, not e + sharedExpertNum",
           (_d(A3_PW02),)),
    # ---- masks, shared and special experts (KB §1.2, §1.4, §4)
    Mutant("mask1d_ignored", "KB §1.4: a 1-D x_active_mask is ignored by dispatch (every token sent)",
           (_d(A3_PW00),)),
    Mutant("mask2d_per_token", "KB §1.4: a 2-D mask applied per token (any(mask[b,:]) sends every k)",
           (_d(A3_PW21),)),
    Mutant("shared_routing_modulus", "KB §1.2: shared copy of sender s goes to j*rpse + s % S (not s % rpse)",
           (_d(A3_PW21),)),
    Mutant("shared_replica_offset", "KB §1.2: shared copy of sender s goes to j*rpse (the s % rpse replica "
           "offset dropped: every sender uses the first replica)", (_d(A3_REPLICAS),)),
    Mutant("special_experts_sent", "KB §1.4/§4.1: zero/copy/const entries (id >= M) are sent (to e - M) "
           "instead of dropped", (_d(A3_PW00),)),
    Mutant("copy_uses_expert_row", "KB §4.2: a copy expert adds the (unsent, zero) expert row instead of oriX",
           (_r(A3_PW00),)),
    Mutant("zero_as_copy", "KB §4.2: a zero expert contributes oriX*w like a copy expert", (_r(A3_PW00),)),
    Mutant("const_alpha_swapped", "KB §4.3: const expert uses alpha2 on x and alpha1 on V", (_r(A3_PW00),)),
    # ---- combine arithmetic (KB §4.2)
    Mutant("combine_weights_shared", "KB §4.2: shared-expert rows multiplied by an expert weight "
           "(they are added unweighted)", (_r(A3_PW21),)),
    Mutant("combine_k_order", "KB §4.2: the fp32 accumulation runs k = K-1..0 instead of 0..K-1",
           (_r(A3_CANCEL),)),  # cancelling weights: reversed order loses the 2**-30 term
    Mutant("combine_fma", "KB §4.2: r*w+acc fused (one rounding) instead of Muls then Add (two)",
           (_r(A3_CANCEL),)),  # cancelling weights: an FMA keeps the residual mul+add rounds away
    # ---- parameter checks and statuses (KB §6)
    Mutant("null_status_wrong", "KB §6.1: a null/empty required argument gives 161002 instead of 161001",
           (_i("A3-illegal-any.groupEp.empty"),)),
    Mutant("bad_dtype_code", "KB §6.1: an unsupported dtype gives 561002 instead of 161002",
           (_i("A3-illegal-any.x.dtype"),)),
    Mutant("h_one_past_accepted", "KB §6.2: H one past the upper bound (A3 8193, A2 7169) is accepted",
           (_i("A3-illegal-A3.h.range"),)),
    Mutant("rejects_h_max", "KB §6.2: the legal boundary H = 8192 (A3 max) is rejected with 561002",
           (_d("A3-legal-boundary-A3.h.range-h=8192-W4-M8-bs4-h8192-k3-bf16-q0-ent1"),)),
    # ---- performance_info, liveness, determinism
    Mutant("perf_info_overwrites", "doc performanceInfo / KB §9: each call overwrites the time instead of "
           "accumulating", ("conformance/test_perf_info.py::test_performance_info[" + A3_BASE + "]",)),
    Mutant("rank_hangs", "DESIGN worlds: rank 1 never returns from dispatch (must end as broken: hang)",
           (_d(A3_BASE),)),
    Mutant("rank_crashes", "DESIGN worlds: rank 1 exits inside dispatch (must end as broken: crash)",
           (_d(A3_BASE),)),
    Mutant("nondeterministic", "doc: dispatch is deterministic; every 2nd call reorders rows+scales+triples "
           "consistently", ("conformance/test_determinism.py::test_same_bytes_twice[" + A3_BASE + "]",)),
)

BY_ID = {m.id: m for m in CATALOGUE}
assert len(BY_ID) == len(CATALOGUE), "duplicate mutant ids"
