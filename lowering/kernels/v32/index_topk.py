"""index_topk — the TOPK cache positions of highest index score per batch entry (pypto-lib
HEAD decode_front.py ``s3_sort`` / ``s3_topk_extract``: sort32 + mrgsort of the score row with
its positions as payload, the index lanes gathered, the slots past the context padded).

    order = positions t of index_scores[b, :] by score descending (ties: smaller t first)
    topk_idx[b, j] = order[j]   for j < min(TOPK, seq_lens[b])
    topk_idx[b, j] = NO_INDEX   (INT32 min, pl.PadValue.min) for the later slots

The score row (fp32 ``[1, MAX_SEQ]``) is widened with −inf (``pl.fillpad_expand``) to
SORT_LEN = 32·4^k >= MAX_SEQ positions, so that sort32's 32-element runs merge into one run
by format-1 mrgsorts of 4 runs each (block_len 64, 256, ... columns of [value, index] pairs);
HEAD sorts a [1, 8192] row pre-filled with −FLT_MAX for MAX_SEQ = 4096. Positions past the
context carry index_score's NO_SCORE (−FLT_MAX), below every real score; the −inf padding sorts
below those. The emulator's sort32 keeps equal values in payload order and mrgsort takes the
earliest run on ties, so the order is stable: ties go to the smaller position and −0.0 ties
+0.0, as dsref orders. Data movement and comparisons only: bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowering.tile import pl

SORT_RUN = 32  # sort32's run
MERGE_WAYS = 4  # runs per format-1 mrgsort group


@dataclass(frozen=True, kw_only=True)
class Tiling:
    max_seq: int  # positions per score row
    topk: int  # TOPK
    sort_len: int  # SORT_RUN · 4^k >= max_seq: the sorted row

    @property
    def block_lens(self) -> tuple[int, ...]:
        """The mrgsort block_len (in fp32 columns: 2 per [value, index] pair) of each pass."""
        out, run = [], SORT_RUN
        while run < self.sort_len:
            out.append(2 * run)
            run *= MERGE_WAYS
        return tuple(out)


def make_tiling(cfg, shapes) -> Tiling:
    n = SORT_RUN
    while n < cfg.max_seq:
        n *= MERGE_WAYS
    return Tiling(max_seq=cfg.max_seq, topk=cfg.index_topk, sort_len=n)


def _kept(seq_lens, b: int, t: Tiling) -> int:
    """``min(TOPK, seq_lens[b])``: the slots of entry ``b`` that hold a position."""
    return pl.min(t.topk, pl.read(seq_lens, [b]))


def index_topk(index_scores, seq_lens, topk_idx, *, tiling: Tiling) -> None:
    t = tiling
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="index_topk"):
        for b in pl.parallel(0, index_scores.shape[0], 1):
            row = index_scores[b:b + 1, :]
            if t.sort_len != t.max_seq:
                row = pl.fillpad_expand(row, [1, t.sort_len], pad_value=pl.PadValue.min)
            pairs = pl.tensor.sort32(row, pl.tensor.arange(0, [1, t.sort_len], dtype=pl.UINT32))
            for block_len in t.block_lens:
                pairs = pl.tensor.mrgsort(pairs, block_len=block_len)
            top = pl.slice(pairs, [1, 2 * t.topk], [0, 0])
            idx = pl.tensor.gather(top, mask_pattern=pl.tile.MaskPattern.P1010,
                                   output_dtype=pl.INT32)
            n = _kept(seq_lens, b, t)
            if n < t.topk:
                idx = pl.fillpad(pl.slice(idx, [1, t.topk], [0, 0], valid_shape=[1, n]),
                                 pad_value=pl.PadValue.min)
            topk_idx[b:b + 1, :] = idx
