"""qr_rms — RMSNorm of the fp32 q LoRA activations, fused rms + apply + cast (PR #332 tiling).

    qrn[T, QL] = (qr32 · inv_rms(qr32)) · f32(gamma_cq),  inv_rms = 1 / sqrt(Σqr32² / QL + eps)
    qr_norm    = bf16(qrn)          (PR #332; ``qr_prequant_round=False``: qrn stays fp32)

dtypes: fp32 in; Σ per 32-column chunk (row_sum reshaped to [1, T]) added in fp32, in order;
variance per the config (``mean``: pl.div; ``mul_inv``: ·fp32(1/QL), PR #332's form; equal
for power-of-two QL); sqrt, recip, ·r, ·gamma each one fp32 rounding; then one cast to bf16
(``rint``) or none. T tiles of up to 128 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import t_tiles
from lowering.kernels.v4._blocks import gamma_row, inv_rms_rows
from lowering.kernels.v4._tiling import Q_LORA_CHUNK, NormTiling, norm_tiling
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling(NormTiling):
    prequant_round: bool  # qr_prequant_round: store bf16(qrn) (True) or fp32 qrn (False)


def make_tiling(cfg, shapes) -> Tiling:
    tokens, n = shapes["qr32"]
    base = norm_tiling(cfg, tokens, n, Q_LORA_CHUNK)
    return Tiling(**vars(base), prequant_round=cfg.qr_prequant_round)


def qr_rms(qr32, gamma_cq, qr_norm, *, tiling: Tiling) -> None:
    t = tiling
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="qr_rms"):
        for t0, rows in t_tiles(t.tokens, t.tiles, t.t_tile):
            inv = inv_rms_rows(qr32, t0=t0, rows=rows, c0=0, n=t.n, chunk=t.chunk, eps=t.eps,
                               variance=t.variance)
            for c0 in pl.range(0, t.n, t.chunk):
                y = pl.col_expand_mul(pl.row_expand_mul(qr32[t0:t0 + rows, c0:c0 + t.chunk], inv),
                                      gamma_row(gamma_cq, c0, t.chunk))
                if t.prequant_round:
                    y = pl.cast(y, target_type=pl.BF16, mode=t.mode)
                qr_norm[t0:t0 + rows, c0:c0 + t.chunk] = y
