"""k_idx_proj — the indexer's key projection (pypto-lib HEAD decode_front.py
``s2_k_idx_proj`` tiling: 128-wide K tiles over D, 64-wide output tiles).

    k_idx[B, ID] = bf16( x[B, D] @ wk_idx[D, ID] ),  x = normed | hidden_states (index_input)

dtypes: bf16 operands; per 128-wide K tile one cube matmul (exact products, one fp32
rounding), tiles accumulated in fp32 with matmul_acc, in order; one cast to bf16 (1 bf16 ulp
from the reference's once-rounded exact sum at most where the chunked sum crosses a boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode
from lowering.kernels.v32._shared import projection_kernel
from lowering.kernels.v32._tiling import BATCH_TILE, ProjTiling, chunk

K_TILE = 128  # HEAD's K_TILE over D
OUT_TILE = 64  # KIDX_OUT_TILE


@dataclass(frozen=True, kw_only=True)
class Tiling(ProjTiling):
    raw_input: bool  # index_input="hidden": project hidden_states, not normed (pypto-lib HEAD)


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wk_idx"]
    return Tiling(batch_tile=BATCH_TILE, n_chunk=chunk(n, OUT_TILE, "k_idx_proj N"),
                  k=chunk(k, K_TILE, "k_idx_proj K"), mode=cast_mode(cfg.cast),
                  raw_input=cfg.index_input == "hidden")


def k_idx_proj(normed, hidden_states, wk_idx, k_idx, *, tiling: Tiling) -> None:
    x = hidden_states if tiling.raw_input else normed
    projection_kernel(x, wk_idx, k_idx, tiling, "k_idx_proj")
