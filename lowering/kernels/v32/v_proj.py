"""v_proj — each head's latent context projected to its V head (pypto-lib HEAD decode_front.py
stage 4.6 ``s4_v_proj``: per head, 32-wide V output tiles, the whole K = KL in one matmul).

    attn_front[b, h·V + j] = bf16( (ctx_latent[b, h·KL : (h+1)·KL] @ w_latent_to_v[h])[j] )

dtypes: bf16 operands; one cube matmul per (head, output tile) over the whole KL (exact
products, one fp32 rounding), one cast to bf16 with the ``cast`` mode: the reference's order,
so the outputs are bitwise. HEAD runs one batch entry padded to 16 rows per iteration and
casts the assembled fp32 row once (``s4_attn_row_write``, the same values); here
``batch_tile`` rows of the batch share each weight tile. The weight is read as HEAD's
``[H·KL, V]`` view.
"""

from __future__ import annotations

from lowering.kernels.blocks import cast_mode
from lowering.kernels.v32._shared import per_head_projection
from lowering.kernels.v32._tiling import BATCH_TILE, chunk
from lowering.kernels.v32._tiling import HeadProjTiling as Tiling

V_OUT_TILE = 32  # HEAD: V columns per matmul


def make_tiling(cfg, shapes) -> Tiling:
    h, kl, v = shapes["w_latent_to_v"]
    return Tiling(batch_tile=BATCH_TILE, heads=h, k=kl, n=v,
                  n_chunk=chunk(v, V_OUT_TILE, "v_proj N"), mode=cast_mode(cfg.cast))


def v_proj(ctx_latent, w_latent_to_v, attn_front, *, tiling: Tiling) -> None:
    per_head_projection(ctx_latent, w_latent_to_v, attn_front, tiling, "v_proj")
