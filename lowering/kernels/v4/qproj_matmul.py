"""qproj_matmul — W8A8C16 q up projection with dequantisation (PR #332 tiling).

    acc[T, N] = qr[T, QL] @ wq_b[QL, N]                     (int8 × int8 → int32, exact)
    qf[t, c]  = (f32(acc[t, c]) · qr_scale[t]) · wq_b_scale[c]

dtypes: int32 accumulator over 128-wide K chunks (``matmul`` then ``matmul_acc``, exact);
int32 → fp32 one RNE rounding (``rint``; matters above 2²⁴, V4 Pro); then two fp32
multiplies in that order (``row_expand_mul``, ``col_expand_mul``). N in 128-wide output blocks
(one wq_b_scale row each in PR #332), independent (``pl.parallel``); the matmul and the dequant
are separate scopes as in PR #332 (the accumulator crosses through GM). Cube M tiles of up to
128 rows, tail rows one at a time.
"""

from __future__ import annotations

from lowering.kernels.blocks import cube_row_blocks
from lowering.kernels.v4._tiling import Q_PROJ_CHUNK, Q_PROJ_OUT_CHUNK, ProjTiling, proj_tiling
from lowering.tile import pl

Tiling = ProjTiling


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wq_b"]
    return proj_tiling(shapes["qr"][0], k, n, Q_PROJ_OUT_CHUNK, Q_PROJ_CHUNK, "qproj_matmul")


def qproj_matmul(qr, qr_scale, wq_b, wq_b_scale, qf, *, tiling: Tiling) -> None:
    t = tiling
    tokens, kdim = qr.shape
    for n0 in pl.parallel(0, qf.shape[1], t.n_chunk):
        for r0, rows in cube_row_blocks(tokens, t.m):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="qproj_matmul"):
                acc = pl.matmul(qr[r0:r0 + rows, 0:t.k], wq_b[0:t.k, n0:n0 + t.n_chunk],
                                out_dtype=pl.INT32)
                for k0 in pl.range(t.k, kdim, t.k):
                    acc = pl.matmul_acc(acc, qr[r0:r0 + rows, k0:k0 + t.k],
                                        wq_b[k0:k0 + t.k, n0:n0 + t.n_chunk])
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="qproj_dequant"):
                f = pl.cast(acc, target_type=pl.FP32, mode="rint")
                w_scale = pl.reshape(wq_b_scale[n0:n0 + t.n_chunk], [1, t.n_chunk])
                y = pl.col_expand_mul(pl.row_expand_mul(f, qr_scale[r0:r0 + rows, :]), w_scale)
                qf[r0:r0 + rows, n0:n0 + t.n_chunk] = y
