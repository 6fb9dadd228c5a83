"""q_head_proj — per-head q projection, 64-wide Q chunks, head-major [B, H·(NOPE+ROPE)]
(PR #134 tiling).

    q[B, N] = bf16( qr_out[B, K] @ wq_b[K, N] )

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
    k, n = shapes["wq_b"]
    return proj_tiling(cfg, k, n, "q_head_proj")


def q_head_proj(qr_out, wq_b, q, *, tiling: Tiling) -> None:
    projection_kernel(qr_out, wq_b, q, tiling, "q_head_proj")
