"""kv_proj_matmul — kv projection, kept in fp32 (PR #332 tiling).

    kv32[T, HD] = tok[T, D] @ wkv[D, HD]

dtypes: bf16 operands; per D chunk one cube matmul (exact products, one fp32 rounding), the
chunks accumulated in fp32 in order (``matmul`` then ``matmul_acc``); a few fp32 ulps from the
reference's single rounding (``fp32`` preset). 32-column output blocks in parallel; cube M
tiles of up to 128 rows, tail rows one at a time. ``proj_out="bf16"``: each result rounded
to bf16 (the ``cast`` mode) and stored widened to fp32, as ``qr_proj_matmul``.
"""

from __future__ import annotations

from lowering.kernels.blocks import cube_row_blocks, project_block
from lowering.kernels.v4._tiling import KV_CHUNK, ProjTiling, d_chunk, proj_tiling
from lowering.tile import pl

Tiling = ProjTiling


def make_tiling(cfg, shapes) -> Tiling:
    k, n = shapes["wkv"]
    tokens = shapes["tok"][0]
    return proj_tiling(tokens, k, n, KV_CHUNK, d_chunk(tokens), "kv_proj_matmul", cfg)


def kv_proj_matmul(tok, wkv, kv32, *, tiling: Tiling) -> None:
    t = tiling
    tokens = tok.shape[0]
    for n0 in pl.parallel(0, kv32.shape[1], t.n_chunk):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_proj_matmul"):
            for r0, rows in cube_row_blocks(tokens, t.m):
                project_block(tok, wkv, kv32, r0=r0, rows=rows, n0=n0, n=t.n_chunk, k=t.k,
                              mode=None, widen_mode=t.round_mode)
