"""q_lora_rmsnorm — ds32 RMSNorm of the bf16 q LoRA activations (PR #134 tiling).

    qr_out[B, QL] = bf16( w[1, QL] · (qr · inv_rms(qr)) ),  qr = f32(qr_raw) (bf16-rounded)

The variance is taken of the bf16-rounded qr, as dsref specifies; ``q_norm_input="fp32"``
(PR #134's semantics): ``qr_raw`` is fp32, the variance is taken of it, and the normalised value
is ``bf16(qr)`` (cast with the ``cast`` mode). Chunks, variance form and rounding as
input_rmsnorm.
"""

from __future__ import annotations

from lowering.kernels.v32._shared import rms_norm_kernel
from lowering.kernels.v32._tiling import RmsNormTiling as Tiling
from lowering.kernels.v32._tiling import rms_norm_tiling


def make_tiling(cfg, shapes) -> Tiling:
    return rms_norm_tiling(cfg, shapes["qr_raw"][1], "QL", round_input=cfg.q_norm_input == "fp32")


def q_lora_rmsnorm(qr_raw, q_norm_weight, qr_out, *, tiling: Tiling) -> None:
    rms_norm_kernel(qr_raw, q_norm_weight, qr_out, tiling, "q_lora_rmsnorm")
