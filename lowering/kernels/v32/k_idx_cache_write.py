"""k_idx_cache_write — each batch entry's index key into its row of the index-key cache
(pypto-lib HEAD decode_front.py ``s2_k_idx_cache_write``).

    row = b·MAX_SEQ + (seq_lens[b] − 1);  k_cache_idx[row, :] = k_idx_h[b, :]   (bf16 copy)

Only the B owned rows are written; every other row must stay bit-identical (coverage check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsref.v32 import owned
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling:
    max_seq: int  # cache rows per batch entry


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(max_seq=cfg.max_seq)


def owned_rows(cfg, inputs) -> dict[str, np.ndarray]:
    return {"k_cache_idx": owned(cfg, "k_cache_idx", inputs)}


def k_idx_cache_write(k_idx_h, seq_lens, k_cache_idx, *, tiling: Tiling) -> None:
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="k_idx_cache_write"):
        for b in pl.parallel(0, k_idx_h.shape[0], 1):
            row = b * tiling.max_seq + pl.read(seq_lens, [b]) - 1
            k_cache_idx[row:row + 1, :] = k_idx_h[b:b + 1, :]
