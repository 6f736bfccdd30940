"""A small picture of a dispatch failure: wrong rows per rank x local expert (a PNG, never tensors)."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np


def row_groups(etn, ent_type: int) -> list[tuple[int, int]]:
    etn = np.asarray(etn, dtype=np.int64).reshape(-1)
    counts = etn if ent_type == 1 else np.diff(np.concatenate([[0], etn]))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else np.zeros(0, np.int64)
    return [(int(s), int(c)) for s, c in zip(starts, counts)]


def _row_bytes(a, start: int, n: int) -> list[bytes]:
    a = np.ascontiguousarray(np.asarray(a))
    if a.ndim == 0 or n <= 0:
        return []
    a = a[start:start + n]
    return [a[i].tobytes() for i in range(a.shape[0])]


def wrong_rows_matrix(params, ref_dispatch: list[dict], got_dispatch: list[dict]) -> np.ndarray:
    """(ranks, local experts) count of reference rows of expand_x that the actual output lacks, per
    expert group (order inside a group is implementation-defined, so rows are matched as a multiset)."""
    ent = params.expert_token_nums_type
    L = max(len(np.asarray(r["expert_token_nums"]).reshape(-1)) for r in ref_dispatch) if ref_dispatch else 0
    m = np.zeros((len(ref_dispatch), L), dtype=np.int64)
    for g, (ref, got) in enumerate(zip(ref_dispatch, got_dispatch)):
        rg = row_groups(ref["expert_token_nums"], ent)
        try:
            gg = row_groups(got["expert_token_nums"], ent)
        except Exception:  # noqa: BLE001
            gg = rg
        for l, (rs, rn) in enumerate(rg):
            gs, gn = gg[l] if l < len(gg) else (0, 0)
            want = Counter(_row_bytes(ref["expand_x"], rs, rn))
            have = Counter(_row_bytes(got["expand_x"], gs, gn))
            missing = sum((want - have).values())
            m[g, l] = max(missing, abs(gn - rn))
    return m


def heatmap_png(matrix, title: str = "wrong expand_x rows") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(min(max(5.0, 2 + 0.5 * m.shape[1]), 12), min(max(3.0, 1.5 + 0.3 * m.shape[0]), 10)))
    im = ax.imshow(m, cmap="Reds", aspect="auto", vmin=0, vmax=max(int(m.max()), 1))
    ax.set_xlabel("local expert")
    ax.set_ylabel("rank")
    import textwrap

    ax.set_title(textwrap.fill(f"{title} ({int(m.sum())} in all)", 60), fontsize=8)
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    if m.size <= 256:
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
