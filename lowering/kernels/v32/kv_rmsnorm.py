"""kv_rmsnorm — ds32 RMSNorm of the KV latent, the first KL columns of kv_a_out.

    kv_normed[B, KL] = bf16( w[1, KL] · (kv · inv_rms(kv)) ),  kv = f32(kv_a_out[:, :KL])

Chunks, variance form (the ``variance`` variant) and rounding as input_rmsnorm.
"""

from __future__ import annotations

from lowering.kernels.v32._shared import rms_norm_kernel
from lowering.kernels.v32._tiling import RmsNormTiling as Tiling
from lowering.kernels.v32._tiling import rms_norm_tiling


def make_tiling(cfg, shapes) -> Tiling:
    return rms_norm_tiling(cfg, shapes["kv_normed"][1], "KL")


def kv_rmsnorm(kv_a_out, kv_norm_weight, kv_normed, *, tiling: Tiling) -> None:
    rms_norm_kernel(kv_a_out, kv_norm_weight, kv_normed, tiling, "kv_rmsnorm")
