"""q_idx_proj — the indexer's query projection, head-major [B, IH·ID] (pypto-lib HEAD
decode_front.py ``s2_q_idx_proj`` tiling: 64-wide K tiles over QL, 128-wide output tiles).

    q_idx[B, N] = bf16( qr_out[B, K] @ wq_b_idx[K, N] )

dtypes: bf16 operands; per 64-wide K tile one cube matmul (exact products, one fp32 rounding),
tiles accumulated in fp32 with matmul_acc, in order; one cast to bf16. The reference rounds the
exact K-sum once, so an output can sit 1 bf16 ulp away when the chunked fp32 sum crosses a
rounding boundary.
"""

from __future__ import annotations

from lowering.kernels.blocks import cast_mode
from lowering.kernels.v32._shared import projection_kernel
from lowering.kernels.v32._tiling import BATCH_TILE, chunk
from lowering.kernels.v32._tiling import ProjTiling as Tiling

K_TILE = 64  # HEAD's s2_q_idx_proj: QL in 64-wide tiles
OUT_TILE = 128  # IDX_OUT_TILE: one index head's columns per accumulator


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wq_b_idx"]
    return Tiling(batch_tile=BATCH_TILE, n_chunk=chunk(n, OUT_TILE, "q_idx_proj N"),
                  k=chunk(k, K_TILE, "q_idx_proj K"), mode=cast_mode(cfg.cast))


def q_idx_proj(qr_out, wq_b_idx, q_idx, *, tiling: Tiling) -> None:
    projection_kernel(qr_out, wq_b_idx, q_idx, tiling, "q_idx_proj")
