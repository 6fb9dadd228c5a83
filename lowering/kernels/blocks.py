"""Tile-level building blocks shared by the stage kernels (one copy, parametrised).

Each block is written in the tile language and runs inside the caller's ``pl.at`` scope and
loops, so budgets, races and coverage are charged to the calling kernel.
"""

from __future__ import annotations

from collections.abc import Iterator

from lowering.tile import pl

CUBE_M = 16  # cube tiles: M a multiple of 16, or M = 1


def cast_mode(cast: str) -> str:
    """The ``pl.cast`` mode of a dsref cast variant: RNE is ``rint``; ``rhaz`` (ties away) is
    PyPTO's default ``round``."""
    return {"rne": "rint", "rhaz": "round"}[cast]


def row_blocks(n: int, tile: int) -> Iterator[tuple[int, int]]:
    """Independent row blocks ``(r0, rows)`` covering ``0..n``: full ``tile``-row blocks, then
    the tail one row at a time (M = 1 keeps cube tiles legal for any n)."""
    full = n - n % tile
    for r0 in pl.parallel(0, full, tile):
        yield r0, tile
    for r0 in pl.parallel(full, n, 1):
        yield r0, 1


def sum_squares(x, r0: int, rows: int, c0: int, n: int, k: int):
    """``Σ x²`` over columns ``c0..c0+n`` of rows ``r0..r0+rows``, in ``k``-wide chunks: each
    chunk's row_sum added in fp32, in order. Returns an fp32 ``[rows, 1]`` tile."""
    acc = pl.full([rows, 1], pl.FP32, 0.0)
    for k0 in pl.range(c0, c0 + n, k):
        xc = pl.cast(x[r0:r0 + rows, k0:k0 + k], target_type=pl.FP32)
        acc = pl.add(acc, pl.row_sum(pl.mul(xc, xc)))
    return acc


def mean_of(s, n: int, variance: str = "mul_inv"):
    """A mean from its fp32 sum ``s`` over ``n`` values, per the ``variance`` variant:
    ``"mul_inv"`` ``s · f32(1/N)`` (the pypto-lib kernels' form), ``"mean"`` ``s / N`` (one
    true fp32 division, the ds32 default)."""
    if variance == "mul_inv":
        return pl.mul(s, 1.0 / n)
    if variance == "mean":
        return pl.div(s, float(n))
    raise ValueError(f"variance: expected 'mean' or 'mul_inv', got {variance!r}")


def inv_rms(sq, n: int, eps: float, variance: str = "mul_inv"):
    """``1 / sqrt(var + eps)``, then sqrt and recip (each one rounding); ``var`` =
    :func:`mean_of` ``(sq, n, variance)``."""
    return pl.recip(pl.sqrt(pl.add(mean_of(sq, n, variance), eps)))


def rms_norm_rows(x, w, out, *, r0: int, rows: int, c0: int, n: int, k: int, eps: float,
                  mode: str, hf: bool = False, variance: str = "mul_inv",
                  round_input: bool = False) -> None:
    """``out[r, :] = bf16(w · (x[r, c0:c0+n] · inv_rms))`` for the rows of one block.

    ``hf`` (HF DeepseekV3RMSNorm): ``bf16(bf16(w) · bf16(x · inv_rms))`` — the normalised row
    and the weight rounded to bf16 first (the weight ``rint``, as a bf16 parameter is stored).
    ``round_input`` (PR #134's q_norm, an fp32 ``x``): ``inv_rms`` of the fp32 ``x``, the
    normalised value ``bf16(x)`` (cast with ``mode``)."""
    inv = inv_rms(sum_squares(x, r0, rows, c0, n, k), n, eps, variance)
    for k0 in pl.range(0, n, k):
        xc = pl.cast(x[r0:r0 + rows, c0 + k0:c0 + k0 + k], target_type=pl.FP32)
        if round_input:
            xc = pl.cast(pl.cast(xc, target_type=pl.BF16, mode=mode), target_type=pl.FP32)
        normed = pl.row_expand_mul(xc, inv)
        wc = w[0:1, k0:k0 + k]
        if hf:
            normed = pl.cast(pl.cast(normed, target_type=pl.BF16, mode=mode), target_type=pl.FP32)
            wc = pl.cast(pl.cast(wc, target_type=pl.BF16, mode="rint"), target_type=pl.FP32)
        y = pl.col_expand_mul(normed, wc)
        out[r0:r0 + rows, k0:k0 + k] = pl.cast(y, target_type=pl.BF16, mode=mode)


def project_block(x, w, out, *, r0: int, rows: int, n0: int, n: int, k: int, mode: str | None,
                  widen_mode: str | None = None):
    """``out[r0:r0+rows, n0:n0+n] = x[rows, :] @ w[:, n0:n0+n]``: K in ``k``-wide chunks with
    ``matmul`` then ``matmul_acc`` (fp32 accumulator), cast to bf16 with ``mode`` (``None``:
    stored in fp32; then ``widen_mode``: rounded to bf16 with it and stored widened to fp32)."""
    kdim = x.shape[1]
    acc = pl.matmul(x[r0:r0 + rows, 0:k], w[0:k, n0:n0 + n], out_dtype=pl.FP32)
    for k0 in pl.range(k, kdim, k):
        acc = pl.matmul_acc(acc, x[r0:r0 + rows, k0:k0 + k], w[k0:k0 + k, n0:n0 + n])
    if mode is None and widen_mode is not None:
        acc = pl.cast(pl.cast(acc, target_type=pl.BF16, mode=widen_mode), target_type=pl.FP32)
    out[r0:r0 + rows, n0:n0 + n] = acc if mode is None else pl.cast(
        acc, target_type=pl.BF16, mode=mode)


def rope_half(x_lo, x_hi, cos_lo, cos_hi, sin_lo, sin_hi):
    """Half-layout rotation of fp32 tiles: ``(x_lo·c_lo − x_hi·s_lo, x_hi·c_hi + x_lo·s_hi)``,
    each product and sum one fp32 op; table halves read separately."""
    lo = pl.sub(pl.col_expand_mul(x_lo, cos_lo), pl.col_expand_mul(x_hi, sin_lo))
    hi = pl.add(pl.col_expand_mul(x_hi, cos_hi), pl.col_expand_mul(x_lo, sin_hi))
    return lo, hi


def rope_rows(table_cos, table_sin, pos: int, half: int):
    """The four ``[1, R/2]`` fp32 halves of the tables' row ``pos``."""
    return (table_cos[pos:pos + 1, 0:half], table_cos[pos:pos + 1, half:2 * half],
            table_sin[pos:pos + 1, 0:half], table_sin[pos:pos + 1, half:2 * half])


def cube_row_blocks(n: int, m: int) -> Iterator[tuple[int, int]]:
    """Independent cube row blocks ``(r0, rows)`` covering ``0..n``: blocks of up to ``m`` rows
    that are multiples of 16, then the tail one row at a time (M = 1), so any n is covered."""
    full = n - n % 16
    for r0 in pl.parallel(0, full, m):
        yield r0, min(m, full - r0)
    for r0 in pl.parallel(full, n, 1):
        yield r0, 1


def t_tiles(tokens: int, tiles: int, t_tile: int) -> Iterator[tuple[int, int]]:
    """Sequential in-core T tiles ``(t0, rows)``: ``tiles`` tiles of ``t_tile`` rows, the last
    one clipped to ``tokens`` (a tiling that does not reach ``tokens`` leaves rows unwritten:
    the coverage check reports them)."""
    for tt in pl.range(tiles):
        t0 = tt * t_tile
        yield t0, min(t_tile, tokens - t0)


def rope_selects(chunk: int):
    """The 0/1 re-interleave blocks ``even_select[i, 2i] = 1``, ``odd_select[i, 2i+1] = 1``
    (bf16 ``[chunk/2, chunk]``), built once per kernel call in a GM buffer. PR #332 passes
    whole ``[R/2, R]`` matrices in as host-built inputs and reads only their diagonal
    ``[chunk/2, chunk]`` blocks, which are all this same block; the pipeline hands a kernel only
    its region's tensors, so the kernel writes the block itself (one row per store)."""
    half = chunk // 2
    even_select = pl.create_tensor([half, chunk], dtype=pl.BF16)
    odd_select = pl.create_tensor([half, chunk], dtype=pl.BF16)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="rope_select"):
        one = pl.full([1, 1], dtype=pl.BF16, value=1.0)
        for i in pl.range(half):
            row_e = pl.full([1, chunk], dtype=pl.BF16, value=0.0)
            row_e[0:1, 2 * i:2 * i + 1] = one
            even_select[i:i + 1, :] = row_e
            row_o = pl.full([1, chunk], dtype=pl.BF16, value=0.0)
            row_o[0:1, 2 * i + 1:2 * i + 2] = one
            odd_select[i:i + 1, :] = row_o
    return even_select, odd_select


def rope_interleaved_pairs(x, cos_e, sin_e, cos_o, sin_o):
    """Interleaved-pair rotation of an fp32 ``[rows, R]`` tile: ``e, o`` = even / odd columns
    (``tensor.gather`` P0101 / P1010); returns ``(e·c − o·s, e·s' + o·c')`` as ``[rows, R/2]``
    fp32 tiles, each product and sum one fp32 op (pair tables: ``c = c'``, ``s = s'``)."""
    e = pl.tensor.gather(x, mask_pattern=pl.tile.MaskPattern.P0101)
    o = pl.tensor.gather(x, mask_pattern=pl.tile.MaskPattern.P1010)
    y_e = pl.sub(pl.col_expand_mul(e, cos_e), pl.col_expand_mul(o, sin_e))
    y_o = pl.add(pl.col_expand_mul(e, sin_o), pl.col_expand_mul(o, cos_o))
    return y_e, y_o


def interleave(y_e, y_o, even_select, odd_select, mode: str):
    """``bf16([y_e0, y_o0, y_e1, y_o1, …])`` from the two fp32 halves: each cast to bf16, then
    re-interleaved through the 0/1 select matmuls (exact, except −0.0 → +0.0)."""
    acc = pl.matmul(pl.cast(y_e, target_type=pl.BF16, mode=mode), even_select[:, :],
                    out_dtype=pl.FP32)
    acc = pl.matmul_acc(acc, pl.cast(y_o, target_type=pl.BF16, mode=mode), odd_select[:, :])
    return pl.cast(acc, target_type=pl.BF16, mode=mode)
