"""Quantisation on carried fp32 values: per-row symmetric int8 (V4 ``qr_quant``) and the
official V4 FP8 e4m3 block quantise–dequantise of the kv nope dims."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dsref.config import FP8_BLOCK  # columns per scale: official act_quant(kv[..., :-rd], 64)
from dsref.numerics import FP8_MAX, div, int8_codes, pow2_ceil, r32, rbf16, rf8e4m3

AMAX_FLOOR = float(np.float32(1e-4))  # all-zero rows: scale = 1e-4 / 127, codes 0


def quant_int8(v: jax.Array, form: str = "div") -> tuple[jax.Array, jax.Array]:
    """``amax = max(max|v|, 1e-4)``; ``sq = 127 / amax``; ``scale = 1 / sq`` (true fp32
    divisions); ``codes = int8(fp16(int32_rne(v · sq)))``. Returns carried (codes, scale).
    ``form="mul_recip"``: ``sq = 127 · f32(1 / amax)`` (two roundings: PR #332's torch golden)."""
    amax = jnp.maximum(jnp.max(jnp.abs(v), axis=-1, keepdims=True), AMAX_FLOOR)
    if form == "div":
        sq = div(127.0, amax)
    elif form == "mul_recip":
        sq = r32(127.0 * div(1.0, amax))
    else:
        raise ValueError(f"qr_scale_form: expected 'div' or 'mul_recip', got {form!r}")
    scale = div(1.0, sq)
    return int8_codes(r32(v * sq)), scale


_FP8_INV = float(np.float32(1.0 / FP8_MAX))  # fp8_max_inv, an fp32 constant in the kernel


def fp8_qdq_blocks(v: jax.Array, cast: str = "rne") -> jax.Array:
    """The official V4 ``act_quant(x, 64, "ue8m0", inplace=True)`` on bf16 values ``v``
    (carried), per row and 64-column block:

        amax = max(max|v|, 1e-4);  s = 2**ceil(log2(f32(amax · f32(1/448))))   (ue8m0)
        y    = bf16(f32(e4m3(clamp(v / s, -448, 448))) · s)

    ``v / s`` and ``· s`` are exact (powers of two); e4m3 rounds to nearest, ties to even.
    For bf16 ``amax`` the scale equals ``2**ceil(log2(amax / 448))`` (the product can only
    round onto a power of two when ``amax / 448`` is one). Returns bf16-grid values."""
    *lead, n = v.shape
    blocks = v.reshape(*lead, n // FP8_BLOCK, FP8_BLOCK)
    amax = jnp.maximum(jnp.max(jnp.abs(blocks), axis=-1, keepdims=True), AMAX_FLOOR)
    s = pow2_ceil(r32(amax * _FP8_INV))
    codes = rf8e4m3(jnp.clip(blocks / s, -FP8_MAX, FP8_MAX))
    return rbf16(r32(codes * s), cast).reshape(v.shape)
