"""Per-row symmetric int8 quantisation (V4 ``qr_quant``), on carried fp32 values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dsref.numerics import div, int8_codes, r32

AMAX_FLOOR = float(np.float32(1e-4))  # all-zero rows: scale = 1e-4 / 127, codes 0


def quant_int8(v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``amax = max(max|v|, 1e-4)``; ``sq = 127 / amax``; ``scale = 1 / sq`` (true fp32
    divisions); ``codes = int8(fp16(int32_rne(v · sq)))``. Returns carried (codes, scale)."""
    amax = jnp.maximum(jnp.max(jnp.abs(v), axis=-1, keepdims=True), AMAX_FLOOR)
    sq = div(127.0, amax)
    scale = div(1.0, sq)
    return int8_codes(r32(v * sq)), scale
