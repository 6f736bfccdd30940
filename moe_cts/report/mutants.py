"""Mutant backends for qualification self-tests and demos (``--backend moe_cts.report.mutants:zero_first_row``).

zero_first_row: sim, but expand_x row 0 is zeroed on every rank that receives rows (a conformance failure
in dispatch and, through it, in the round trip). shuffle_groups: sim, but rows inside each local expert's
group come in reverse order and assist_info follows them (implementation-defined drift only: the round
trip still passes)."""
from __future__ import annotations

from moe_cts.backends.sim import SimBackend


class ZeroFirstRow(SimBackend):
    name = "sim-mutant-zero-first-row"

    def dispatch(self, ctx, *args, **kw):
        out = list(super().dispatch(ctx, *args, **kw))
        out[0] = out[0].clone()
        if out[0].shape[0]:
            out[0][0] = 0
        return tuple(out)


def zero_first_row(**options):
    return ZeroFirstRow(**options)
