"""Kernel bodies shared by the V3.2 stages of the same shape (RMSNorms, projections)."""

from __future__ import annotations

from lowering.kernels.blocks import (
    interleave,
    project_block,
    rms_norm_rows,
    rope_half,
    rope_interleaved_pairs,
    rope_selects,
    row_blocks,
)
from lowering.kernels.v32._tiling import HeadProjTiling, ProjTiling, RmsNormTiling, RopeTiling
from lowering.tile import pl


def rms_norm_kernel(x, w, out, t: RmsNormTiling, name: str) -> None:
    """``out = bf16(w · (x[:, :n] · inv_rms))`` in ``batch_tile``-row blocks."""
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(x.shape[0], t.batch_tile):
            rms_norm_rows(x, w, out, r0=r0, rows=rows, c0=0, n=t.n, k=t.k, eps=t.eps, mode=t.mode,
                          hf=t.hf, variance=t.variance, round_input=t.round_input)


def projection_kernel(x, w, y, t: ProjTiling, name: str) -> None:
    """``y = bf16(x @ w)`` in ``batch_tile`` × ``n_chunk`` output blocks, K in ``k`` chunks
    (``t.mode`` None: ``y`` is fp32, the accumulator stored as is)."""
    b, n = y.shape
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(b, t.batch_tile):
            for n0 in pl.parallel(0, n, t.n_chunk):
                project_block(x, w, y, r0=r0, rows=rows, n0=n0, n=t.n_chunk, k=t.k, mode=t.mode)


def per_head_projection(x, w, y, t: HeadProjTiling, name: str) -> None:
    """``y[:, h·N : (h+1)·N] = x[:, h·K : (h+1)·K] @ w[h]`` for every head: one cube matmul per
    (head, ``n_chunk``-wide output tile) over the whole K (exact products, one fp32 rounding),
    ``batch_tile`` rows sharing each weight tile; ``w [H, K, N]`` read as its ``[H·K, N]``
    view (pypto-lib HEAD's scope 4 layout). Stored as ``y``'s dtype: a bf16 ``y`` one cast, an
    fp32 ``y`` the accumulator (rounded to bf16 and back first under ``round_bf16``)."""
    w2 = pl.reshape(w, [t.heads * t.k, t.n])
    k, n = t.k, t.n
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(x.shape[0], t.batch_tile):
            for h in pl.parallel(0, t.heads, 1):
                xh = x[r0:r0 + rows, h * k:(h + 1) * k]
                for c0 in pl.range(0, n, t.n_chunk):
                    acc = pl.matmul(xh, w2[h * k:(h + 1) * k, c0:c0 + t.n_chunk],
                                    out_dtype=pl.FP32)
                    if y.dtype == pl.BF16 or t.round_bf16:
                        acc = pl.cast(acc, target_type=pl.BF16, mode=t.mode)
                    if acc.dtype != y.dtype:  # the bf16-rounded value, stored fp32
                        acc = pl.cast(acc, target_type=y.dtype)
                    y[r0:r0 + rows, h * n + c0:h * n + c0 + t.n_chunk] = acc


def selects(t: RopeTiling):
    """The re-interleave select blocks an interleaved layout needs (built once per call)."""
    return rope_selects(t.rope) if t.layout == "interleaved" else None


def rotate_row(x, table, sel, t: RopeTiling):
    """RoPE of one bf16 ``[1, R]`` row at one position → bf16 ``[1, R]`` (``t``: any tiling with
    ``rope``, ``layout`` and ``mode``, e.g. idx_rope's, always half).

    ``table`` = the position's ``(cos_lo, cos_hi, sin_lo, sin_hi)`` halves. half layout:
    ``[x_lo·c_lo − x_hi·s_lo | x_hi·c_hi + x_lo·s_hi]``; interleaved (pair i reads column i):
    ``[e·c − o·s, e·s + o·c]`` per pair, re-interleaved by the ``sel`` select matmuls."""
    half = t.rope // 2
    xf = pl.cast(x, target_type=pl.FP32)
    cos_lo, cos_hi, sin_lo, sin_hi = table
    if t.layout == "interleaved":
        y_e, y_o = rope_interleaved_pairs(xf, cos_lo, sin_lo, cos_lo, sin_lo)
        return interleave(y_e, y_o, *sel, t.mode)
    lo, hi = rope_half(pl.slice(xf, [1, half], [0, 0]), pl.slice(xf, [1, half], [0, half]),
                       cos_lo, cos_hi, sin_lo, sin_hi)
    return pl.concat(pl.cast(lo, target_type=pl.BF16, mode=t.mode),
                     pl.cast(hi, target_type=pl.BF16, mode=t.mode))

