"""idx_weights — the indexer's per-head weights (pypto-lib HEAD decode_front.py
``s2_weights_proj_bf16``, ``s2_weights_matmul``, ``s2_weights_scale``: weights_proj cast to
bf16 in 128-row tiles into a GM scratch, then per 16-wide output tile 128-wide K tiles over D,
then the scale).

    acc[B, IH] = x[B, D] @ bf16(weights_proj)[D, IH],  x = normed | hidden_states (index_input)
    index_weights="fp32" (HEAD):  idx_weights = acc · f32(IH^-½ · ID^-½)
    index_weights="bf16" (ds32):  idx_weights = f32(bf16(f32(bf16(acc) · f32(IH^-½)))) · f32(ID^-½)

dtypes: weights_proj fp32 → bf16 with the ``cast`` mode (the reference's ``rbf16``); bf16
operands; per 128-wide K tile one cube matmul (exact products, one fp32 rounding), tiles
accumulated in fp32 with matmul_acc, in order (the reference rounds the exact K-sum once: a
few fp32 ulps apart); each scale one fp32 multiply, the bf16 casts with the ``cast`` mode;
stored fp32. The scale is applied in the matmul's scope to the accumulator before the one
store (HEAD stores the accumulator and scales the whole [B, IH] tensor in a scope of its own:
the same values).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode, row_blocks
from lowering.kernels.v32._tiling import BATCH_TILE, chunk
from lowering.tile import pl

K_TILE = 128  # HEAD's K_TILE over D (also the bf16 cast's row tile)
OUT_TILE = 16  # WEIGHTS_OUT_TILE: index heads per accumulator


@dataclass(frozen=True, kw_only=True)
class Tiling:
    batch_tile: int  # cube M
    n_chunk: int  # index heads per accumulator
    k: int  # K tile over D per matmul / matmul_acc call (in order)
    mode: str  # pl.cast mode of weights_proj's bf16 copy and of the bf16 roundings
    raw_input: bool  # index_input="hidden": project hidden_states, not normed (HEAD)
    fp32_weights: bool  # index_weights="fp32": one fp32 scale (HEAD); else ds32's bf16 chain
    head_scale: float  # IH^-½
    dim_scale: float  # ID^-½

    def __post_init__(self) -> None:
        if self.batch_tile % 16:
            raise ValueError(f"idx_weights: batch tile {self.batch_tile} is not a multiple of 16")


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["weights_proj"]
    return Tiling(batch_tile=BATCH_TILE, n_chunk=chunk(n, OUT_TILE, "idx_weights N"),
                  k=chunk(k, K_TILE, "idx_weights K"), mode=cast_mode(cfg.cast),
                  raw_input=cfg.index_input == "hidden",
                  fp32_weights=cfg.index_weights == "fp32",
                  head_scale=cfg.index_heads ** -0.5, dim_scale=cfg.index_head_dim ** -0.5)


def _bf16(x, mode: str):
    """fp32 → bf16 (``mode``) → fp32: one rounding to the bf16 grid, carried in fp32."""
    return pl.cast(pl.cast(x, target_type=pl.BF16, mode=mode), target_type=pl.FP32)


def idx_weights(normed, hidden_states, weights_proj, idx_weights, *, tiling: Tiling) -> None:
    t = tiling
    x = hidden_states if t.raw_input else normed
    kdim, ih = weights_proj.shape
    wp = pl.create_tensor([kdim, ih], dtype=pl.BF16)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="idx_weights_proj_bf16"):
        for k0 in pl.range(0, kdim, t.k):
            wp[k0:k0 + t.k, :] = pl.cast(weights_proj[k0:k0 + t.k, :], target_type=pl.BF16,
                                         mode=t.mode)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="idx_weights"):
        for r0, rows in row_blocks(x.shape[0], t.batch_tile):
            for n0 in pl.parallel(0, ih, t.n_chunk):
                n1 = n0 + t.n_chunk
                acc = pl.matmul(x[r0:r0 + rows, 0:t.k], wp[0:t.k, n0:n1], out_dtype=pl.FP32)
                for k0 in pl.range(t.k, kdim, t.k):
                    acc = pl.matmul_acc(acc, x[r0:r0 + rows, k0:k0 + t.k], wp[k0:k0 + t.k, n0:n1])
                if t.fp32_weights:
                    w = pl.mul(acc, t.head_scale * t.dim_scale)
                else:
                    w = pl.mul(_bf16(pl.mul(_bf16(acc, t.mode), t.head_scale), t.mode),
                               t.dim_scale)
                idx_weights[r0:r0 + rows, n0:n1] = w
