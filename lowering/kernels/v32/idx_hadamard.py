"""idx_hadamard — the indexer's Hadamard rotation of every index head of q and of k (pypto-lib
HEAD decode_front.py ``s2_q_hadamard_matmul`` / ``s2_k_hadamard_matmul``: one [B, ID] @ [ID, ID]
cube matmul per head, K = ID in one call).

    q_idx_h[:, h·ID:(h+1)·ID] = bf16( q_idx_rope[:, h·ID:(h+1)·ID] @ hadamard_q )
    k_idx_h                   = bf16( k_idx_rope @ hadamard_k )

dtypes: bf16 operands, the whole K = ID in one matmul (exact products, one fp32 rounding), one
cast to bf16: the reference's order exactly, so the outputs are bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode, project_block, row_blocks
from lowering.kernels.v32._tiling import BATCH_TILE
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling:
    batch_tile: int  # cube M
    heads: int  # IH
    k: int  # ID: one matmul per head
    mode: str  # pl.cast mode of the bf16 outputs


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(batch_tile=BATCH_TILE, heads=cfg.index_heads, k=cfg.index_head_dim,
                  mode=cast_mode(cfg.cast))


def idx_hadamard(q_idx_rope, k_idx_rope, hadamard_q, hadamard_k, q_idx_h, k_idx_h, *,
                 tiling: Tiling) -> None:
    t, d = tiling, tiling.k
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="idx_hadamard"):
        for r0, rows in row_blocks(q_idx_rope.shape[0], t.batch_tile):
            for h in pl.parallel(0, t.heads, 1):
                c0 = h * d
                acc = pl.matmul(q_idx_rope[r0:r0 + rows, c0:c0 + d], hadamard_q[0:d, 0:d],
                                out_dtype=pl.FP32)
                q_idx_h[r0:r0 + rows, c0:c0 + d] = pl.cast(acc, target_type=pl.BF16,
                                                           mode=t.mode)
            project_block(k_idx_rope, hadamard_k, k_idx_h, r0=r0, rows=rows, n0=0, n=d, k=d,
                          mode=t.mode)
