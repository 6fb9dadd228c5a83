"""q_head_rms_rope — per-head RMSNorm (no gamma) + interleaved RoPE of q (PR #332 tiling).

    per head h, token t (n over HD = NOPE + R, fp32):
    n             = qf_h · inv_rms(qf_h),  inv_rms = 1 / sqrt(Σqf_h² / HD + eps)
    q[t, h, :NOPE] = bf16(n[:NOPE])
    e, o           = n[NOPE::2], n[NOPE+1::2]                     (tensor.gather P0101 / P1010)
    y_e = bf16(e·c − o·s),  y_o = bf16(e·s + o·c),  c = f32(rope_cos[t, i]), s likewise
    q[t, h, NOPE:] = [y_e0, y_o0, y_e1, y_o1, …]     (re-interleaved by 0/1 select matmuls)

dtypes: fp32 throughout, each product / sum one fp32 op (Σqf_h² per 64-column chunk added
in fp32; variance ``/ HD`` or PR #332's ``· (1/HD)`` per the ``variance`` variant — equal for
HD = 512); one bf16 cast (``rint``) per output;
the select matmuls are exact (one product with 1.0 per output) except that −0.0 comes out
+0.0 (PR #332's divergence; the comparator treats −0.0 == +0.0). Variants: ``rope_preround``
rounds n's rope part to bf16 before the rotation; ``rope_table="element"`` reads
``c = cos[t, 2i]`` for y_e's terms and ``cos[t, 2i+1]`` for y_o's (gathered from the table).

Tiling: heads independent (``pl.parallel(H)``); per head one in-core RMS scope over
``tiles`` (PR #332's RMS_T_TILES) sequential T tiles of ``ceil(T / tiles)`` rows — any T,
the last tile shorter; ``tiles`` keeps a tile ≤ 64 rows (≈110 KiB of Vec at FLASH dims,
T = 128; one 128-row tile needs ≈217 KiB > a2a3's 184 KiB). The rotated halves cross to the
cube through GM temporaries ``[T, H·R/2]`` with a head dimension, made once (PR #332
makes per-head ``[T, R/2]`` temporaries inside ``pl.parallel(H)``, which pypto allocates
afresh for each head; made once before the loop without the head dimension, the heads would
race — ``lowering.bugs``), then one re-interleave scope per head writes the rope columns of q.
"""

from __future__ import annotations

from lowering.kernels.blocks import rope_selects, t_tiles
from lowering.kernels.v4._blocks import norm_rope_rows, reassemble
from lowering.kernels.v4._tiling import HEAD_CHUNK, RopeTiling, require, rope_tiling
from lowering.tile import pl

Tiling = RopeTiling


def make_tiling(cfg, shapes) -> Tiling:
    require(cfg, q_head_norm="fp32")  # the official bf16-arithmetic head norm: not written
    return rope_tiling(cfg, shapes["qf"][0], HEAD_CHUNK)


def q_head_rms_rope(qf, rope_cos, rope_sin, q, *, tiling: Tiling) -> None:
    t = tiling
    tokens, heads, hd = q.shape
    half = t.rope // 2
    q_flat = pl.reshape(q, [tokens, heads * hd])
    even_select, odd_select = rope_selects(t.rope_chunk)
    q_rot_even = pl.create_tensor([tokens, heads * half], dtype=pl.BF16)
    q_rot_odd = pl.create_tensor([tokens, heads * half], dtype=pl.BF16)
    for h in pl.parallel(heads):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_rms_rope"):
            for t0, rows in t_tiles(tokens, t.tiles, t.t_tile):
                norm_rope_rows(qf, None, rope_cos, rope_sin, q_flat, q_rot_even, q_rot_odd,
                               t0=t0, rows=rows, c0=h * hd, tmp_col=h * half, t=t)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope_reassemble"):
            reassemble(q_rot_even, q_rot_odd, even_select, odd_select, q_flat, tokens=tokens,
                       tmp_col=h * half, c0=h * hd + t.nope, t=t)
