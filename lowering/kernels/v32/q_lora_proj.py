"""q_lora_proj — q LoRA projection, 64-wide LoRA chunks (PR #134 tiling).

    qr_raw[B, N] = bf16( normed[B, K] @ wq_a[K, N] )

dtypes: bf16 operands; per 512-wide K chunk one cube matmul (exact products, one fp32
rounding), chunks accumulated in fp32 with matmul_acc, in order; one cast to bf16. The
reference rounds the exact K-sum once, so an output can sit 1 bf16 ulp away when the chunked
fp32 sum crosses a rounding boundary. ``q_norm_input="fp32"`` (PR #134): ``qr_raw`` is the
fp32 accumulator itself (PR #134's ``qr_fp32``), rounded by ``q_lora_rmsnorm``.
"""

from __future__ import annotations

import dataclasses

from lowering.kernels.v32._shared import projection_kernel
from lowering.kernels.v32._tiling import ProjTiling as Tiling
from lowering.kernels.v32._tiling import proj_tiling


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wq_a"]
    t = proj_tiling(cfg, k, n, "q_lora_proj")
    return dataclasses.replace(t, mode=None) if cfg.q_norm_input == "fp32" else t


def q_lora_proj(normed, wq_a, qr_raw, *, tiling: Tiling) -> None:
    projection_kernel(normed, wq_a, qr_raw, tiling, "q_lora_proj")
