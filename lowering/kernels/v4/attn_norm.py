"""attn_norm — ds32 RMSNorm of the tokens, fused rms + apply + bf16 cast (PR #332 tiling).

    tok[T, D] = bf16( norm_w · (x · inv_rms(x)) ),  inv_rms = 1 / sqrt(Σx² / D + eps)

dtypes: x bf16 [B, S, D] viewed [T, D] → fp32 (exact); Σx² per D chunk (row_sum, reshaped to
[1, T]) added in fp32, in order (the reference rounds the exact sum once: a rare 1-ulp tok
difference); the variance follows the config — ``mean``: one true fp32 division (pl.div),
``mul_inv``: Σx²·fp32(1/D), PR #332's form (equal for D = 4096, 1 ulp off on some rows for
1536 / 7168); sqrt and recip each one rounding; x·r, then ·w, each one fp32 op; one cast to
bf16 (``rint`` for RNE, ``round`` for the ``cast="rhaz"`` variant). T tiles of up to 128 rows;
D chunk 512 / 256 / 128 as T grows (PR #332).
"""

from __future__ import annotations

from lowering.kernels.blocks import t_tiles
from lowering.kernels.v4._blocks import inv_rms_rows
from lowering.kernels.v4._tiling import NormTiling as Tiling
from lowering.kernels.v4._tiling import d_chunk, norm_tiling, require
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    require(cfg, rmsnorm="ds32")
    tokens = shapes["tok"][0]
    return norm_tiling(cfg, tokens, cfg.hidden, d_chunk(tokens))


def attn_norm(x, norm_w, tok, *, tiling: Tiling) -> None:
    t = tiling
    x_flat = pl.reshape(x, [t.tokens, t.n])
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="attn_norm"):
        for t0, rows in t_tiles(t.tokens, t.tiles, t.t_tile):
            inv = inv_rms_rows(x_flat, t0=t0, rows=rows, c0=0, n=t.n, chunk=t.chunk, eps=t.eps,
                               cast=True, variance=t.variance)
            for d0 in pl.range(0, t.n, t.chunk):
                xc = pl.cast(x_flat[t0:t0 + rows, d0:d0 + t.chunk], target_type=pl.FP32)
                w = pl.reshape(norm_w[d0:d0 + t.chunk], [1, t.chunk])
                y = pl.col_expand_mul(pl.row_expand_mul(xc, inv), w)
                tok[t0:t0 + rows, d0:d0 + t.chunk] = pl.cast(y, target_type=pl.BF16, mode=t.mode)
