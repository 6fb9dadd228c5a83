"""Tile blocks shared by the V4 kernels (PR #332 tiling), run inside the caller's scopes.

The RMS blocks accumulate ``Σx²`` PR #332's way: per column chunk a ``row_sum`` reshaped to
``[1, rows]`` and added in fp32, in order; the variance follows the config's ``variance``
variant — ``"mean"``: ``Σx² / N`` (one true fp32 division, the dsref default), ``"mul_inv"``:
``Σx² · f32(1/N)`` (PR #332's form; equal for power-of-two N) — then ``sqrt`` and ``recip``
(two roundings).
"""

from __future__ import annotations

from lowering.kernels.blocks import cube_row_blocks
from lowering.tile import pl


def inv_rms_rows(src, *, t0: int, rows: int, c0: int, n: int, chunk: int, eps: float,
                 cast: bool = False, variance: str = "mul_inv"):
    """``[rows, 1]`` fp32 ``1 / sqrt(Σ src[t0:t0+rows, c0:c0+n]² · (1/n) + eps)``; ``cast``:
    widen each loaded chunk (bf16 source) to fp32 first."""
    sq = pl.full([1, rows], dtype=pl.FP32, value=0.0)
    for k0 in pl.range(c0, c0 + n, chunk):
        x = src[t0:t0 + rows, k0:k0 + chunk]
        if cast:
            x = pl.cast(x, target_type=pl.FP32)
        sq = pl.add(sq, pl.reshape(pl.row_sum(pl.mul(x, x)), [1, rows]))
    var = pl.mul(sq, 1.0 / n) if variance == "mul_inv" else pl.div(sq, float(n))
    inv = pl.recip(pl.sqrt(pl.add(var, eps)))
    return pl.reshape(inv, [rows, 1])


def gamma_row(gamma, c0: int, n: int):
    """``f32(gamma[c0:c0+n])`` as a ``[1, n]`` tile (bf16 gamma widened exactly)."""
    return pl.reshape(pl.cast(gamma[c0:c0 + n], target_type=pl.FP32), [1, n])


def norm_rope_rows(src, gamma, rope_cos, rope_sin, dst, even, odd, *, t0: int, rows: int,
                   c0: int, tmp_col: int, t) -> None:
    """One in-core T tile of the fused RMS + RoPE: for rows ``t0..t0+rows`` of the head at
    columns ``c0..c0+HD`` of ``src`` (fp32) / ``dst`` (bf16):

        n = (src · inv_rms) [· f32(gamma)]          nope part → dst (bf16)
        e, o = gather(n[NOPE:], P0101 / P1010)      [rope_preround: via bf16(n)]
        y_e = e·c − o·s,  y_o = e·s' + o·c'         → even / odd [rows, R/2] (bf16, GM)

    pair table: ``c = c' = cos[t, :R/2]``; element table: ``c = cos[t, 0::2]``,
    ``c' = cos[t, 1::2]`` (likewise sin). ``even``/``odd`` columns ``tmp_col..tmp_col+R/2``.
    """
    half = t.rope // 2
    inv = inv_rms_rows(src, t0=t0, rows=rows, c0=c0, n=t.head_dim, chunk=t.chunk, eps=t.eps,
                       variance=t.variance)
    for k0 in pl.range(0, t.nope, t.chunk):
        n = pl.row_expand_mul(src[t0:t0 + rows, c0 + k0:c0 + k0 + t.chunk], inv)
        if gamma is not None:
            n = pl.col_expand_mul(n, gamma_row(gamma, k0, t.chunk))
        dst[t0:t0 + rows, c0 + k0:c0 + k0 + t.chunk] = pl.cast(n, target_type=pl.BF16,
                                                                 mode=t.mode)
    r0 = c0 + t.nope
    n = pl.row_expand_mul(src[t0:t0 + rows, r0:r0 + t.rope], inv)
    if gamma is not None:
        n = pl.col_expand_mul(n, gamma_row(gamma, t.nope, t.rope))
    if t.preround:
        n = pl.cast(pl.cast(n, target_type=pl.BF16, mode=t.mode), target_type=pl.FP32)
    e = pl.tensor.gather(n, mask_pattern=pl.tile.MaskPattern.P0101)
    o = pl.tensor.gather(n, mask_pattern=pl.tile.MaskPattern.P1010)
    if t.table == "pair":  # pair i reads column i; columns R/2.. are never loaded
        c_e = c_o = pl.cast(rope_cos[t0:t0 + rows, 0:half], target_type=pl.FP32)
        s_e = s_o = pl.cast(rope_sin[t0:t0 + rows, 0:half], target_type=pl.FP32)
    else:  # element j reads column j
        cos = pl.cast(rope_cos[t0:t0 + rows, 0:t.rope], target_type=pl.FP32)
        sin = pl.cast(rope_sin[t0:t0 + rows, 0:t.rope], target_type=pl.FP32)
        c_e = pl.tensor.gather(cos, mask_pattern=pl.tile.MaskPattern.P0101)
        c_o = pl.tensor.gather(cos, mask_pattern=pl.tile.MaskPattern.P1010)
        s_e = pl.tensor.gather(sin, mask_pattern=pl.tile.MaskPattern.P0101)
        s_o = pl.tensor.gather(sin, mask_pattern=pl.tile.MaskPattern.P1010)
    y_e = pl.sub(pl.mul(e, c_e), pl.mul(o, s_e))
    y_o = pl.add(pl.mul(e, s_o), pl.mul(o, c_o))
    even[t0:t0 + rows, tmp_col:tmp_col + half] = pl.cast(y_e, target_type=pl.BF16, mode=t.mode)
    odd[t0:t0 + rows, tmp_col:tmp_col + half] = pl.cast(y_o, target_type=pl.BF16, mode=t.mode)


def reassemble(even, odd, even_select, odd_select, dst, *, tokens: int, tmp_col: int,
               c0: int, t) -> None:
    """``dst[:, c0:c0+R] = bf16(even @ even_select + odd @ odd_select)`` block by block (the
    ``rope_selects`` blocks): the interleaved
    ``[y_e0, y_o0, y_e1, …]``, per ``rope_chunk`` output columns (``pl.pipeline(stage=2)``).
    Exact: each output is one product with 1.0 — but ``−0.0 · 1 + 0 = +0.0``, so a −0.0
    rotation result comes out +0.0 (PR #332's known divergence; −0.0 == +0.0 in the diff)."""
    pairs = t.rope_chunk // 2
    for rope_col in pl.pipeline(0, t.rope, t.rope_chunk, stage=2):
        p0 = tmp_col + rope_col // 2
        for r0, rows in cube_row_blocks(tokens, t.m):
            acc = pl.matmul(even[r0:r0 + rows, p0:p0 + pairs],
                            even_select[:, :],
                            out_dtype=pl.FP32)
            acc = pl.matmul_acc(acc, odd[r0:r0 + rows, p0:p0 + pairs],
                                odd_select[:, :])
            dst[r0:r0 + rows, c0 + rope_col:c0 + rope_col + t.rope_chunk] = pl.cast(
                acc, target_type=pl.BF16, mode=t.mode)
