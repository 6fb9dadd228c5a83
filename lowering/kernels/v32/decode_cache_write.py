"""decode_cache_write — write each batch entry's new token into the KV and PE caches.

    row = b·MAX_SEQ + (seq_lens[b] − 1)
    kv_cache[row, :]       = kv_normed[b, :]                                   (bf16 copy)
    pe_cache[row, :R/2]    = bf16(pe_lo·cos_lo − pe_hi·sin_lo)
    pe_cache[row, R/2:]    = bf16(pe_hi·cos_hi + pe_lo·sin_hi)

``pe = f32(kv_a_out[b, KL:])`` split in halves; rotation as in q_rope. Only the B owned rows
are written; every other cache row must stay bit-identical (coverage check).
"""

from __future__ import annotations

import numpy as np

from lowering.kernels.blocks import rope_half, rope_rows
from lowering.kernels.v32._tiling import RopeTiling as Tiling
from lowering.kernels.v32._tiling import rope_tiling
from lowering.tile import pl


def make_tiling(cfg, shapes) -> Tiling:
    return rope_tiling(cfg)


def owned_rows(cfg, inputs) -> dict[str, np.ndarray]:
    sl = np.asarray(inputs["seq_lens"], np.int64)
    rows = np.arange(sl.shape[0]) * cfg.max_seq + sl - 1
    return {"kv_cache": rows, "pe_cache": rows}


def decode_cache_write(kv_normed, kv_a_out, seq_lens, rope_cos, rope_sin, kv_cache, pe_cache, *,
                       tiling: Tiling) -> None:
    t = tiling
    half, kl = t.rope // 2, t.kv_lora
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="decode_cache_write"):
        for b in pl.parallel(0, kv_normed.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            row = b * t.max_seq + pos
            kv_cache[row:row + 1, :] = kv_normed[b:b + 1, :]
            cos_lo, cos_hi, sin_lo, sin_hi = rope_rows(rope_cos, rope_sin, pos, half)
            pe_lo = pl.cast(kv_a_out[b:b + 1, kl:kl + half], target_type=pl.FP32)
            pe_hi = pl.cast(kv_a_out[b:b + 1, kl + half:kl + t.rope], target_type=pl.FP32)
            lo, hi = rope_half(pe_lo, pe_hi, cos_lo, cos_hi, sin_lo, sin_hi)
            pe_cache[row:row + 1, 0:half] = pl.cast(lo, target_type=pl.BF16, mode=t.mode)
            pe_cache[row:row + 1, half:t.rope] = pl.cast(hi, target_type=pl.BF16, mode=t.mode)
