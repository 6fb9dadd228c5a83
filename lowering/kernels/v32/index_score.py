"""index_score — the lightning indexer's score of every cache position of each batch entry
(pypto-lib HEAD decode_front.py ``s2_q_reduce`` + ``s3_score_tile`` / ``s3_score_write``: the
heads reduced into one bf16 query, then one [16, ID] @ [SEQ_TILE, ID]ᵀ cube matmul per
SEQ_TILE cache rows, row 0 of the zero-padded query kept).

    keys k_t = k_cache_idx[b·MAX_SEQ + t],  t < seq_lens[b]
    reduce_q (HEAD):  q_red = bf16( Σ_h f32(q_h · w_h) )            [1, ID]
                      index_scores[b, t] = q_red @ k_t
    relu (ds32):      index_scores[b, t] = Σ_h f32( relu(q_h @ k_t) · w_h )
    index_scores[b, t] = NO_SCORE (−FLT_MAX) for t >= seq_lens[b]

dtypes / rounding points: q_idx_h and the keys bf16, idx_weights fp32. reduce_q: each product
q_h·w_h one fp32 op, the sum over the IH heads one column reduction (``pl.col_sum``: float64
accumulation, one fp32 rounding), one cast to bf16 — HEAD accumulates the heads one fp32 add at a
time, which rounds IH times; the column sum is the reduction dsref states (one rounding). The
score matmul takes the whole K = ID in one call (exact products, one fp32 rounding). relu: the
[IH, SEQ_TILE] logits one matmul per tile, ``pl.maximum(·, 0)``, one fp32 multiply by w_h per
row, the heads summed by ``pl.col_sum``. Both are the reference's order: bitwise.

Positions past the context get NO_SCORE, each element written once, every store SEQ_TILE-aligned:
the last tile's columns past the context padded with −inf (``pl.fillpad``) and raised to NO_SCORE
by ``pl.maximum`` (which leaves every finite score as it is), the tiles wholly past it from a
constant tile. HEAD pre-fills the whole row and overwrites the valid part (a dead first write).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsref.v32 import NO_SCORE
from lowering.kernels.blocks import cast_mode
from lowering.tile import pl

SEQ_TILE = 64  # HEAD's cache rows per score matmul
Q_PAD = 16  # HEAD pads the one reduced query row to a 16-row cube tile


@dataclass(frozen=True, kw_only=True)
class Tiling:
    heads: int  # IH
    head_dim: int  # ID: one matmul's K
    max_seq: int  # cache rows per batch entry
    seq_tile: int  # cache rows per score matmul
    relu: bool  # index_score="relu": per-head logits, relu, × w, summed over heads
    mode: str  # pl.cast mode of the reduced bf16 query

    def __post_init__(self) -> None:
        if self.max_seq % self.seq_tile:
            raise ValueError(f"index_score: SEQ_TILE {self.seq_tile} does not divide MAX_SEQ "
                             f"{self.max_seq}")


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(heads=cfg.index_heads, head_dim=cfg.index_head_dim, max_seq=cfg.max_seq,
                  seq_tile=min(SEQ_TILE, cfg.max_seq), relu=cfg.index_score == "relu",
                  mode=cast_mode(cfg.cast))


def _reduced_query(q_heads, idx_weights, b: int, t: Tiling):
    """``bf16(Σ_h f32(q_h · w_h))`` of entry ``b``, zero-padded to a ``[Q_PAD, ID]`` cube tile."""
    q = pl.cast(q_heads[b * t.heads:(b + 1) * t.heads, :], target_type=pl.FP32)
    w = pl.reshape(idx_weights[b:b + 1, :], [t.heads, 1])
    q_red = pl.cast(pl.col_sum(pl.row_expand_mul(q, w)), target_type=pl.BF16, mode=t.mode)
    return pl.fillpad_expand(q_red, [Q_PAD, t.head_dim])


def _relu_scores(q, w, keys, t: Tiling):
    """``Σ_h f32(relu(q_h @ k) · w_h)`` of one key tile → ``[1, SEQ_TILE]``."""
    logits = pl.matmul(q, keys, b_trans=True, out_dtype=pl.FP32)  # [roundup(IH, 16), SEQ_TILE]
    if logits.shape[0] != t.heads:
        logits = pl.slice(logits, [t.heads, t.seq_tile], [0, 0])
    return pl.col_sum(pl.row_expand_mul(pl.maximum(logits, 0.0), w))


def _context(seq_lens, b: int) -> int:
    """The positions of entry ``b`` that have a key: ``t < seq_lens[b]``."""
    return pl.read(seq_lens, [b])


def _cache_row(b: int, s0: int, t: Tiling) -> int:
    """The cache row of position ``s0`` of entry ``b``."""
    return b * t.max_seq + s0


def index_score(q_idx_h, idx_weights, k_cache_idx, seq_lens, index_scores, *,
                tiling: Tiling) -> None:
    t, st = tiling, tiling.seq_tile
    q_heads = pl.reshape(q_idx_h, [q_idx_h.shape[0] * t.heads, t.head_dim])  # row b·IH + h
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="index_score"):
        for b in pl.parallel(0, q_idx_h.shape[0], 1):
            ctx = _context(seq_lens, b)
            if t.relu:
                q = q_heads[b * t.heads:(b + 1) * t.heads, :]
                if t.heads % Q_PAD:  # a cube tile of whole 16-row groups, zero rows below
                    q = pl.fillpad_expand(q, [-(-t.heads // Q_PAD) * Q_PAD, t.head_dim])
                w = pl.reshape(idx_weights[b:b + 1, :], [t.heads, 1])
            else:
                q = _reduced_query(q_heads, idx_weights, b, t)
            past = pl.full([1, st], pl.FP32, NO_SCORE)
            for s0 in pl.range(0, t.max_seq, st):
                if s0 >= ctx:  # a whole tile past the context
                    index_scores[b:b + 1, s0:s0 + st] = past
                    continue
                row0 = _cache_row(b, s0, t)
                keys = k_cache_idx[row0:row0 + st, :]
                if t.relu:
                    score = _relu_scores(q, w, keys, t)
                else:
                    score = pl.slice(pl.matmul(q, keys, b_trans=True, out_dtype=pl.FP32),
                                     [1, st], [0, 0])
                valid = pl.min(st, ctx - s0)
                if valid < st:  # the tail past the context: -inf padding raised to NO_SCORE
                    score = pl.maximum(pl.fillpad(pl.slice(score, [1, st], [0, 0],
                                                           valid_shape=[1, valid]),
                                                  pad_value=pl.PadValue.min), NO_SCORE)
                index_scores[b:b + 1, s0:s0 + st] = score
