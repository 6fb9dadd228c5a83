"""qr_quant — per-token int8 quantisation of the normalised qr (PR #332 tiling, W8A8C16).

    v        = f32(qr_norm[t, :])                          (bf16 → fp32 exact; fp32 as is)
    amax     = max(max_c |v|, 1e-4)                        (|v| as max(v, −v); exact)
    sq       = 127 / amax                                  (pl.div: one true fp32 division;
                                                            qr_scale_form="mul_recip": 127 · recip(amax))
    qr_scale = 1 / sq                                      (pl.recip: one rounding)
    qr       = int8( fp16( int32_rint(v · sq) ) )          (cast chain rint → round → trunc)

The cast chain is exact for |v·sq| ≤ 127: rint gives the RNE integer, fp16 and int8 hold it
exactly. The amax pass and the quant pass each walk QL in column chunks (512 / 256 / 128 / 32
columns as T grows, PR #332's QUANT_CHUNK); T tiles of up to 128 rows.
"""

from __future__ import annotations

import dataclasses

from lowering.kernels.blocks import t_tiles
from lowering.kernels.v4._tiling import NormTiling as Tiling
from lowering.kernels.v4._tiling import divisor_chunk, norm_tiling, quant_chunk
from lowering.tile import pl

INT8_SCALE_MAX = 127.0
INT8_AMAX_EPS = 1e-4


def make_tiling(cfg, shapes) -> Tiling:
    tokens, n = shapes["qr_norm"]
    t = norm_tiling(cfg, tokens, n, divisor_chunk(n, quant_chunk(tokens), "qr_quant"))
    return dataclasses.replace(t, scale_form=cfg.qr_scale_form)


def _f32(tile):
    return tile if tile.dtype == pl.FP32 else pl.cast(tile, target_type=pl.FP32)


def qr_quant(qr_norm, qr, qr_scale, *, tiling: Tiling) -> None:
    t = tiling
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="qr_quant"):
        for t0, rows in t_tiles(t.tokens, t.tiles, t.t_tile):
            amax = pl.full([1, rows], dtype=pl.FP32, value=INT8_AMAX_EPS)
            for c0 in pl.range(0, t.n, t.chunk):
                v = _f32(qr_norm[t0:t0 + rows, c0:c0 + t.chunk])
                amax = pl.maximum(amax, pl.reshape(pl.row_max(pl.maximum(v, pl.neg(v))), [1, rows]))
            if t.scale_form == "mul_recip":  # PR #332's torch golden: two roundings
                sq_row = pl.mul(pl.recip(amax), INT8_SCALE_MAX)
            else:
                sq_row = pl.div(pl.full([1, rows], dtype=pl.FP32, value=INT8_SCALE_MAX), amax)
            qr_scale[t0:t0 + rows, :] = pl.reshape(pl.recip(sq_row), [rows, 1])
            sq = pl.reshape(sq_row, [rows, 1])
            for c1 in pl.range(0, t.n, t.chunk):
                v = pl.row_expand_mul(_f32(qr_norm[t0:t0 + rows, c1:c1 + t.chunk]), sq)
                i32 = pl.cast(v, target_type=pl.INT32, mode="rint")
                f16 = pl.cast(i32, target_type=pl.FP16, mode="round")
                qr[t0:t0 + rows, c1:c1 + t.chunk] = pl.cast(f16, target_type=pl.INT8, mode="trunc")
