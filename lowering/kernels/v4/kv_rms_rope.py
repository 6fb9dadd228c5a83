"""kv_rms_rope — RMSNorm of kv with gamma + interleaved RoPE, fused (PR #332 tiling).

    n            = (kv32 · inv_rms(kv32)) · f32(gamma_ckv),  inv_rms over HD
    kv[t, :NOPE] = bf16(n[:NOPE])
    e, o         = n[NOPE::2], n[NOPE+1::2]                       (tensor.gather P0101 / P1010)
    y_e = bf16(e·c − o·s),  y_o = bf16(e·s + o·c),  c = f32(rope_cos[t, i]), s likewise
    kv[t, NOPE:] = [y_e0, y_o0, y_e1, y_o1, …]      (re-interleaved by 0/1 select matmuls)

dtypes: fp32 throughout (gamma applied before the rotation), one bf16 cast (``rint``) per
output; the select matmuls are exact except −0.0 → +0.0 (PR #332's divergence). Variants as in
``q_head_rms_rope`` (``rope_preround``, ``rope_table``).

Tiling: one in-core scope over ``tiles`` (RMS_T_TILES) sequential T tiles of
``ceil(T / tiles)`` rows (any T; ≤ 64 rows a tile: ≈101 KiB of Vec at FLASH dims, T = 128,
≈202 KiB with one tile), 32-column chunks; the rotated halves go through GM temporaries
``[T, R/2]`` to one re-interleave scope.
"""

from __future__ import annotations

from lowering.kernels.blocks import rope_selects, t_tiles
from lowering.kernels.v4._blocks import norm_rope_rows, reassemble
from lowering.kernels.v4._tiling import KV_CHUNK, RopeTiling, require, rope_tiling
from lowering.tile import pl

Tiling = RopeTiling


def make_tiling(cfg, shapes) -> Tiling:
    require(cfg, kv_nope_fp8=False)  # the official FP8 quantise-dequantise: not written
    return rope_tiling(cfg, shapes["kv32"][0], KV_CHUNK)


def kv_rms_rope(kv32, gamma_ckv, rope_cos, rope_sin, kv, *, tiling: Tiling) -> None:
    t = tiling
    tokens = kv.shape[0]
    half = t.rope // 2
    even_select, odd_select = rope_selects(t.rope_chunk)
    kv_rot_even = pl.create_tensor([tokens, half], dtype=pl.BF16)
    kv_rot_odd = pl.create_tensor([tokens, half], dtype=pl.BF16)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_rms_rope"):
        for t0, rows in t_tiles(tokens, t.tiles, t.t_tile):
            norm_rope_rows(kv32, gamma_ckv, rope_cos, rope_sin, kv, kv_rot_even, kv_rot_odd,
                           t0=t0, rows=rows, c0=0, tmp_col=0, t=t)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_rope_reassemble"):
        reassemble(kv_rot_even, kv_rot_odd, even_select, odd_select, kv, tokens=tokens,
                   tmp_col=0, c0=t.nope, t=t)
