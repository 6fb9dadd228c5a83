"""k_idx_layernorm — the indexer's LayerNorm with bias over ID (pypto-lib HEAD decode_front.py
``s2_k_idx_layernorm``: the whole ``[rows, ID]`` tile at once — mean, centre, variance, sqrt,
recip, weight, bias, cast).

    mean = Σ k / ID;  c = k − mean;  var = Σ c² / ID
    k_idx_normed[B, ID] = bf16( ((c · (1 / sqrt(var + eps))) · w) + bias ),  k = f32(k_idx)

dtypes: k bf16 → fp32 (exact); each Σ one ``row_sum`` of the whole ID-wide row (the exact sum
rounded once to fp32, as the reference's); both means per the ``variance`` variant (``mean``
one true fp32 division, the ds32 default; ``mul_inv`` · fp32(1/ID), HEAD's
``INDEX_HEAD_DIM_INV`` — HEAD scales each term before its row_sum, the same value for ID a
power of two); k − mean, c·c, + eps, sqrt, recip, c·r, ·w, + bias each one fp32 op; one cast
to bf16 (HEAD broadcasts the bias through a ones tile, ``(k − k + 1) · bias``; a
``col_expand_add`` adds the same values). Rows in ``batch_tile`` blocks (independent).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode, mean_of, row_blocks
from lowering.kernels.v32._tiling import BATCH_TILE
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling:
    batch_tile: int  # rows per block (blocks are independent: pl.parallel)
    k: int  # ID: each Σ is one row_sum over the whole row (one chunk)
    eps: float
    mode: str  # pl.cast mode of the bf16 output
    variance: str  # "mean": Σ / ID (pl.div); "mul_inv": Σ · f32(1/ID), HEAD's form


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(batch_tile=BATCH_TILE, k=shapes["k_idx"][1], eps=cfg.eps,
                  mode=cast_mode(cfg.cast), variance=cfg.variance)


def k_idx_layernorm(k_idx, k_norm_weight, k_norm_bias, k_idx_normed, *, tiling: Tiling) -> None:
    t, n = tiling, tiling.k
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="k_idx_layernorm"):
        for r0, rows in row_blocks(k_idx.shape[0], t.batch_tile):
            x = pl.cast(k_idx[r0:r0 + rows, 0:n], target_type=pl.FP32)
            mean = mean_of(pl.row_sum(x), n, t.variance)
            c = pl.row_expand_sub(x, mean)
            var = mean_of(pl.row_sum(pl.mul(c, c)), n, t.variance)
            inv = pl.recip(pl.sqrt(pl.add(var, t.eps)))
            y = pl.col_expand_mul(pl.row_expand_mul(c, inv), k_norm_weight[0:1, 0:n])
            y = pl.col_expand_add(y, k_norm_bias[0:1, 0:n])
            k_idx_normed[r0:r0 + rows, 0:n] = pl.cast(y, target_type=pl.BF16, mode=t.mode)
