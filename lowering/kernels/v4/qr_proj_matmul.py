"""qr_proj_matmul — q LoRA down projection, kept in fp32 (PR #332 tiling).

    qr32[T, QL] = tok[T, D] @ wq_a[D, QL]          (no rounding to bf16)

dtypes: bf16 operands; per D chunk one cube matmul (exact products, one fp32 rounding), the
chunks accumulated in fp32 in order — ``pl.pipeline(stage=2)`` over K with the first chunk a
fresh ``matmul`` and the rest ``matmul_acc`` (PR #332's if-first form). The reference rounds
the exact K-sum once, so outputs sit a few fp32 ulps apart (``fp32`` preset). Output blocks of
32 columns are independent (``pl.parallel``); cube M tiles of up to 128 rows (multiples of 16),
tail rows one at a time. ``proj_out="bf16"`` (official V4: the Linear output is bf16): each
result rounded to bf16 (the ``cast`` mode) and stored widened to fp32.
"""

from __future__ import annotations

from lowering.kernels.blocks import cube_row_blocks
from lowering.kernels.v4._tiling import Q_LORA_CHUNK, ProjTiling, d_chunk, proj_tiling
from lowering.tile import pl

Tiling = ProjTiling


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wq_a"]
    tokens = shapes["tok"][0]
    return proj_tiling(tokens, k, n, Q_LORA_CHUNK, d_chunk(tokens), "qr_proj_matmul", cfg)


def qr_proj_matmul(tok, wq_a, qr32, *, tiling: Tiling) -> None:
    t = tiling
    tokens, kdim = tok.shape
    for n0 in pl.parallel(0, qr32.shape[1], t.n_chunk):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="qr_proj_matmul"):
            for r0, rows in cube_row_blocks(tokens, t.m):
                for k0 in pl.pipeline(0, kdim, t.k, stage=2):
                    a = tok[r0:r0 + rows, k0:k0 + t.k]
                    b = wq_a[k0:k0 + t.k, n0:n0 + t.n_chunk]
                    if k0 == 0:
                        acc = pl.matmul(a, b, out_dtype=pl.FP32)
                    else:
                        acc = pl.matmul_acc(acc, a, b)
                if t.round_mode is not None:
                    acc = pl.cast(pl.cast(acc, target_type=pl.BF16, mode=t.round_mode),
                                  target_type=pl.FP32)
                qr32[r0:r0 + rows, n0:n0 + t.n_chunk] = acc
