"""q_rope — split q per head into the nope part and the RoPE-rotated part (PR #134 tiling).

    q_nope_out[b, h·NOPE : (h+1)·NOPE] = q[b, h·HD : h·HD + NOPE]              (bf16 copy)
    q_pe_out[b, h·R : h·R + R/2]       = bf16(q_lo·cos_lo − q_hi·sin_lo)
    q_pe_out[b, h·R + R/2 : (h+1)·R]   = bf16(q_hi·cos_hi + q_lo·sin_hi)

``HD = NOPE + R``; ``q_lo``/``q_hi`` are the rope halves of head h widened to fp32; the table
row is ``pos = seq_lens[b] − 1`` (fp32 ``[MAX_SEQ, R]``, halves read separately); each
product and the sum one fp32 op, one cast to bf16. The rotated values go straight to
q_pe_out (PR #134 also wrote them back into its q buffer, where nothing read them — the dead
write its review found).
"""

from __future__ import annotations

from lowering.kernels.blocks import rope_half, rope_rows
from lowering.kernels.v32._tiling import RopeTiling as Tiling
from lowering.kernels.v32._tiling import rope_tiling
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    return rope_tiling(cfg)


def q_rope(q, seq_lens, rope_cos, rope_sin, q_nope_out, q_pe_out, *, tiling: Tiling) -> None:
    t = tiling
    hd, half = t.nope + t.rope, t.rope // 2
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope"):
        for b in pl.parallel(0, q.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            cos_lo, cos_hi, sin_lo, sin_hi = rope_rows(rope_cos, rope_sin, pos, half)
            for h in pl.range(t.heads):
                c = h * hd + t.nope
                q_nope_out[b:b + 1, h * t.nope:(h + 1) * t.nope] = q[b:b + 1, h * hd:c]
                q_lo = pl.cast(q[b:b + 1, c:c + half], target_type=pl.FP32)
                q_hi = pl.cast(q[b:b + 1, c + half:c + t.rope], target_type=pl.FP32)
                lo, hi = rope_half(q_lo, q_hi, cos_lo, cos_hi, sin_lo, sin_hi)
                o = h * t.rope
                q_pe_out[b:b + 1, o:o + half] = pl.cast(lo, target_type=pl.BF16, mode=t.mode)
                q_pe_out[b:b + 1, o + half:o + t.rope] = pl.cast(hi, target_type=pl.BF16,
                                                                 mode=t.mode)
