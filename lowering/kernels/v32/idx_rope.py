"""idx_rope — RoPE of the first ROPE dims of every index head of q_idx and of k_idx_normed
(pypto-lib HEAD decode_front.py ``s2_idx_rope``: one batch entry per parallel iteration, the
table row read once, each index head's rope part rotated in turn, then k's).

    pos = seq_lens[b] − 1;  c = rope_cos[pos], s = rope_sin[pos]   (fp32 [1, R] rows)
    q_idx_rope[b, h·ID : h·ID+R] = bf16([q_lo·c_lo − q_hi·s_lo | q_hi·c_hi + q_lo·s_hi])
    q_idx_rope[b, h·ID+R : (h+1)·ID] = q_idx[b, h·ID+R : (h+1)·ID]            (bf16 copy)
    k_idx_rope[b, :]: the same of k_idx_normed[b, :] (one head)

Half layout whatever ``rope_layout`` says (the indexer is not interleaved, in the reference as
at HEAD). dtypes: the rope part widened to fp32 (exact); the table halves read separately;
each product and sum one fp32 op; one cast to bf16 per element — the reference's rounding
points, so the outputs are bitwise. HEAD rotates in place in its q_idx_full / k_idx buffers;
here the rotated and the passed-through dims go to the output tensors, each written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode, rope_rows
from lowering.kernels.v32._shared import rotate_row
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling:
    heads: int  # IH
    head_dim: int  # ID
    rope: int  # R: the rotated leading dims of each index head
    mode: str  # pl.cast mode of the bf16 outputs
    layout: str = "half"  # always: _shared.rotate_row's half branch

    def __post_init__(self) -> None:
        if self.rope % 2 or not 0 < self.rope < self.head_dim:
            raise ValueError(f"idx_rope: rope dim {self.rope} odd or not below ID "
                             f"{self.head_dim}")


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(heads=cfg.index_heads, head_dim=cfg.index_head_dim, rope=cfg.rope,
                  mode=cast_mode(cfg.cast))


def _rope_head(x, out, b: int, c0: int, table, t: Tiling) -> None:
    """One head at column ``c0`` of row ``b``: its first R dims rotated, the rest copied."""
    r, d = t.rope, t.head_dim
    out[b:b + 1, c0:c0 + r] = rotate_row(x[b:b + 1, c0:c0 + r], table, None, t)
    out[b:b + 1, c0 + r:c0 + d] = x[b:b + 1, c0 + r:c0 + d]


def idx_rope(q_idx, k_idx_normed, seq_lens, rope_cos, rope_sin, q_idx_rope, k_idx_rope, *,
             tiling: Tiling) -> None:
    t = tiling
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="idx_rope"):
        for b in pl.parallel(0, q_idx.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            table = rope_rows(rope_cos, rope_sin, pos, t.rope // 2)
            for h in pl.range(t.heads):
                _rope_head(q_idx, q_idx_rope, b, h * t.head_dim, table, t)
            _rope_head(k_idx_normed, k_idx_rope, b, 0, table, t)
