"""Kernel bodies shared by the V3.2 stages of the same shape (RMSNorms, projections)."""

from __future__ import annotations

from lowering.kernels.blocks import project_block, rms_norm_rows, row_blocks
from lowering.kernels.v32._tiling import ProjTiling, RmsNormTiling
from lowering.tile import pl


def rms_norm_kernel(x, w, out, t: RmsNormTiling, name: str) -> None:
    """``out = bf16(w · (x[:, :n] · inv_rms))`` in ``batch_tile``-row blocks."""
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(x.shape[0], t.batch_tile):
            rms_norm_rows(x, w, out, r0=r0, rows=rows, c0=0, n=t.n, k=t.k, eps=t.eps, mode=t.mode)


def projection_kernel(x, w, y, t: ProjTiling, name: str) -> None:
    """``y = bf16(x @ w)`` in ``batch_tile`` × ``n_chunk`` output blocks, K in ``k`` chunks."""
    b, n = y.shape
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(b, t.batch_tile):
            for n0 in pl.parallel(0, n, t.n_chunk):
                project_block(x, w, y, r0=r0, rows=rows, n0=n0, n=t.n_chunk, k=t.k, mode=t.mode)
