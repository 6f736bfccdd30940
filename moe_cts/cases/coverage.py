"""Coverage of the spec rows by the generated cases: per checked row, legal cases that pass through it
and illegal cases that break it (``moe-cts coverage``)."""
from __future__ import annotations

from typing import Iterable

from moe_cts.cases.case import Case
from moe_cts.cases.generate import BASES, UNREACHABLE
from moe_cts.spec import DEFAULT_PROFILE, load_profile


def _has_param_bounds(prof, cid: str) -> bool:
    row = prof.row(cid)
    return any(hasattr(BASES["A3"], name) and value is not None
               for name, value in prof.boundary_values(cid, BASES[row.products[0]]))


def coverage(cases: Iterable[Case], profile: str = DEFAULT_PROFILE) -> list[tuple[str, int, int, str]]:
    """Per checked constraint: (id, legal cases exercising it, illegal cases breaking it, note).

    Legal count: boundary cases generated from the row's own bounds; for rows without numeric bounds
    (dtype, null, shape rules) every legal case of its products passes through the check. The note
    explains a zero that is structural (the row cannot be broken through torch_npu).
    """
    prof = load_profile(profile)
    cases = list(cases)
    out = []
    for row in prof.rows:
        if row.kind != "checked":
            continue
        illegal = sum(1 for c in cases if c.expect_constraint == row.id)
        boundary = sum(1 for c in cases if c.feature == f"boundary:{row.id}")
        try:
            has_bounds = bool(prof.boundary_values(row.id, BASES[row.products[0]]))
        except (KeyError, AttributeError, NotImplementedError):
            has_bounds = False
        # rows whose bounds are not OpParams values (dtypes, shapes) are exercised by every legal case
        # of their products, which all pass through the check
        legal = boundary or sum(1 for c in cases if c.legal and c.product in row.products
                                and (not has_bounds or not _has_param_bounds(prof, row.id)))
        note = UNREACHABLE.get(row.id, "") if illegal == 0 else ""
        out.append((row.id, legal, illegal, note))
    return out
