"""q_rope — split q per head into the nope part and the RoPE-rotated part (PR #134 tiling).

    q_nope_out[b, h·NOPE : (h+1)·NOPE] = q[b, h·HD : h·HD + NOPE]              (bf16 copy)
    half layout (PR #134):   q_pe_out[b, h·R : (h+1)·R] = bf16([q_lo·c_lo − q_hi·s_lo |
                                                                q_hi·c_hi + q_lo·s_hi])
    interleaved (ds32):      pairs (q[2i], q[2i+1]) → (e·c_i − o·s_i, e·s_i + o·c_i)

``HD = NOPE + R``; the rope part of head h widened to fp32; the table row is
``pos = seq_lens[b] − 1`` (fp32 ``[MAX_SEQ, R]``; the half layout reads the two table halves
separately, the interleaved one reads columns < R/2); each product and sum one fp32 op, one
cast to bf16 (interleaved: the pairs re-interleaved through exact 0/1 select matmuls, which
turn a −0.0 into +0.0). The rotated values go straight to q_pe_out (PR #134 also wrote them
back into its q buffer, where nothing read them — the dead write its review found).
"""

from __future__ import annotations

from lowering.kernels.blocks import rope_rows
from lowering.kernels.v32._shared import rotate_row, selects
from lowering.kernels.v32._tiling import RopeTiling as Tiling
from lowering.kernels.v32._tiling import rope_tiling
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    return rope_tiling(cfg)


def q_rope(q, seq_lens, rope_cos, rope_sin, q_nope_out, q_pe_out, *, tiling: Tiling) -> None:
    t = tiling
    hd = t.nope + t.rope
    sel = selects(t)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope"):
        for b in pl.parallel(0, q.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            table = rope_rows(rope_cos, rope_sin, pos, t.rope // 2)
            for h in pl.range(t.heads):
                c = h * hd + t.nope
                q_nope_out[b:b + 1, h * t.nope:(h + 1) * t.nope] = q[b:b + 1, h * hd:c]
                q_pe_out[b:b + 1, h * t.rope:(h + 1) * t.rope] = rotate_row(
                    q[b:b + 1, c:c + t.rope], table, sel, t)
