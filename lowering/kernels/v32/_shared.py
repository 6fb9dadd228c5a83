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
from lowering.kernels.v32._tiling import ProjTiling, RmsNormTiling, RopeTiling
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


def per_head_projection(x, w, y, *, heads: int, k: int, n: int, n_chunk: int, batch_tile: int,
                        name: str, finish) -> None:
    """``y[:, h·n : (h+1)·n] = finish(x[:, h·k : (h+1)·k] @ w[h])`` for every head: one cube
    matmul per (head, ``n_chunk``-wide output tile) over the whole K (exact products, one fp32
    rounding), ``batch_tile`` rows sharing each weight tile; ``w [H, K, N]`` read as its
    ``[H·K, N]`` view (pypto-lib HEAD's scope 4 layout); ``finish`` maps each fp32 tile to
    what is stored."""
    w2 = pl.reshape(w, [heads * k, n])
    with pl.at(level=pl.Level.CORE_GROUP, name_hint=name):
        for r0, rows in row_blocks(x.shape[0], batch_tile):
            for h in pl.parallel(0, heads, 1):
                xh = x[r0:r0 + rows, h * k:(h + 1) * k]
                for c0 in pl.range(0, n, n_chunk):
                    acc = pl.matmul(xh, w2[h * k:(h + 1) * k, c0:c0 + n_chunk],
                                    out_dtype=pl.FP32)
                    y[r0:r0 + rows, h * n + c0:h * n + c0 + n_chunk] = finish(acc)


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

