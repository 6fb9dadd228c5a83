"""q_lora_rmsnorm — ds32 RMSNorm of the bf16 q LoRA activations (PR #134 tiling).

    qr_out[B, QL] = bf16( w[1, QL] · (qr · inv_rms(qr)) ),  qr = f32(qr_raw) (bf16-rounded)

The variance is taken of the bf16-rounded qr, as dsref specifies (the PR #134 kernel took it
from the fp32 qr — a known divergence). Chunks, variance form and rounding as input_rmsnorm.
"""

from __future__ import annotations

from lowering.kernels.blocks import rms_norm_rows, row_blocks
from lowering.kernels.v32._tiling import RmsNormTiling as Tiling
from lowering.kernels.v32._tiling import rms_norm_tiling
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    return rms_norm_tiling(cfg, shapes["qr_raw"][1], "QL")


def q_lora_rmsnorm(qr_raw, q_norm_weight, qr_out, *, tiling: Tiling) -> None:
    t = tiling
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_lora_rmsnorm"):
        for r0, rows in row_blocks(qr_raw.shape[0], t.batch_tile):
            rms_norm_rows(qr_raw, q_norm_weight, qr_out, r0=r0, rows=rows, c0=0, n=t.n, k=t.k,
                          eps=t.eps, mode=t.mode)
