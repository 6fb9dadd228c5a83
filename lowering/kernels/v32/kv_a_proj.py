"""kv_a_proj — KV down-projection, 64-wide KV chunks over [KL | ROPE] (PR #134 tiling).

    kv_a_out[B, N] = bf16( normed[B, K] @ wkv_a[K, N] )

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
    k, n = shapes["wkv_a"]
    return proj_tiling(cfg, k, n, "kv_a_proj")


def kv_a_proj(normed, wkv_a, kv_a_out, *, tiling: Tiling) -> None:
    projection_kernel(normed, wkv_a, kv_a_out, tiling, "kv_a_proj")
