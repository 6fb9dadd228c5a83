"""decode_cache_write — write each batch entry's new token into the KV and PE caches.

    row = b·MAX_SEQ + (seq_lens[b] − 1)
    kv_cache[row, :] = kv_normed[b, :]                                   (bf16 copy)
    pe_cache[row, :] = rope(kv_a_out[b, KL:], pos)                       (as in q_rope)

The rope part of the KV latent is widened to fp32 and rotated like q_rope's (half or
interleaved layout, one bf16 rounding per element). Only the B owned rows are written; every
other cache row must stay bit-identical (coverage check).
"""

from __future__ import annotations

import numpy as np

from dsref.v32 import owned
from lowering.kernels.blocks import rope_rows
from lowering.kernels.v32._shared import rotate_row, selects
from lowering.kernels.v32._tiling import RopeTiling as Tiling
from lowering.kernels.v32._tiling import rope_tiling
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    return rope_tiling(cfg)


def owned_rows(cfg, inputs) -> dict[str, np.ndarray]:
    return {n: owned(cfg, n, inputs) for n in ("kv_cache", "pe_cache")}


def decode_cache_write(kv_normed, kv_a_out, seq_lens, rope_cos, rope_sin, kv_cache, pe_cache, *,
                       tiling: Tiling) -> None:
    t = tiling
    kl = t.kv_lora
    sel = selects(t)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="decode_cache_write"):
        for b in pl.parallel(0, kv_normed.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            row = b * t.max_seq + pos
            kv_cache[row:row + 1, :] = kv_normed[b:b + 1, :]
            table = rope_rows(rope_cos, rope_sin, pos, t.rope // 2)
            pe_cache[row:row + 1, :] = rotate_row(kv_a_out[b:b + 1, kl:kl + t.rope], table, sel, t)
