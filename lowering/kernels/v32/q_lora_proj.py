"""q_lora_proj — q LoRA projection, 64-wide LoRA chunks (PR #134 tiling).

    qr_raw[B, N] = bf16( normed[B, K] @ wq_a[K, N] )

dtypes: bf16 operands; per 512-wide K chunk one cube matmul (exact products, one fp32
rounding), chunks accumulated in fp32 with matmul_acc, in order; one cast to bf16. The
reference rounds the exact K-sum once, so an output can sit 1 bf16 ulp away when the chunked
fp32 sum crosses a rounding boundary.
"""

from __future__ import annotations

from lowering.kernels.v32._shared import projection_kernel
from lowering.kernels.v32._tiling import ProjTiling as Tiling
from lowering.kernels.v32._tiling import proj_tiling


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wq_a"]
    return proj_tiling(cfg, k, n, "q_lora_proj")


def q_lora_proj(normed, wq_a, qr_raw, *, tiling: Tiling) -> None:
    projection_kernel(normed, wq_a, qr_raw, tiling, "q_lora_proj")
