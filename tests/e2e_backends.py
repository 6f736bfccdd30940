"""Backends used by the end-to-end self-tests (loaded by --backend tests.e2e_backends:NAME)."""
from moe_cts.backends.sim import SimBackend


class ZeroFirstRow(SimBackend):
    """The README's example: corrupt expand_x row 0 (a valid row whenever the rank receives anything)."""

    def dispatch(self, ctx, *args, **kw):
        out = list(super().dispatch(ctx, *args, **kw))
        out[0] = out[0].clone()
        if out[0].shape[0]:
            out[0][0] = 0
        return tuple(out)


def zero_first_row(**options):
    return ZeroFirstRow(**options)
