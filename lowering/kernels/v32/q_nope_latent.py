"""q_nope_latent — each head's q_nope projected into the KV latent space (pypto-lib HEAD
decode_front.py stage 4.2 ``s4_q_nope_latent_proj``: per head, 128-wide latent output tiles,
the whole K = NOPE in one matmul).

    q_latent[b, h·KL + j] = (q_nope_out[b, h·NOPE : (h+1)·NOPE] @ w_q_nope_to_latent[h])[j]
    q_latent="bf16" (ds32): rounded to bf16, stored fp32;  "fp32" (HEAD): stored as is

dtypes: bf16 operands; one cube matmul per (head, output tile) over the whole NOPE (exact
products, one fp32 rounding): the reference's order, so the fp32 outputs are bitwise (and the
bf16-rounded ones too, one cast with the ``cast`` mode, widened back). HEAD runs one batch
entry padded to 16 rows (``MATMUL_ROW_PAD``) per iteration; here ``batch_tile`` rows of the
batch share each weight tile. The weight is read as HEAD's ``[H·NOPE, KL]`` view. The output
tile is HEAD's ``Q_LATENT_TILE`` = 128 where it divides KL, else the largest common divisor.
"""

from __future__ import annotations

import math

from lowering.kernels.blocks import cast_mode
from lowering.kernels.v32._shared import per_head_projection
from lowering.kernels.v32._tiling import BATCH_TILE
from lowering.kernels.v32._tiling import HeadProjTiling as Tiling

Q_LATENT_TILE = 128  # HEAD: latent columns per matmul


def make_tiling(cfg, shapes) -> Tiling:
    h, nope, kl = shapes["w_q_nope_to_latent"]
    return Tiling(batch_tile=BATCH_TILE, heads=h, k=nope, n=kl, n_chunk=math.gcd(kl, Q_LATENT_TILE),
                  mode=cast_mode(cfg.cast), round_bf16=cfg.q_latent == "bf16")


def q_nope_latent(q_nope_out, w_q_nope_to_latent, q_latent, *, tiling: Tiling) -> None:
    per_head_projection(q_nope_out, w_q_nope_to_latent, q_latent, tiling, "q_nope_latent")
