"""Projections ``y = x @ W`` with pypto-lib's ``[in, out]`` weight layout."""

from __future__ import annotations

import jax

from dsref.numerics import dot, idot, r32, rbf16, widen


def proj_bf16(x: jax.Array, w: jax.Array, *, accumulate: str = "exact", cast: str = "rne"):
    """ds32 Linear: ``bf16(x @ w)`` (bf16 operands, fp32 sum, one rounding to bf16)."""
    return rbf16(dot(x, w, accumulate), cast)


def proj_f32(x: jax.Array, w: jax.Array, *, accumulate: str = "exact"):
    """``x @ w`` left in fp32 (V4 ``qr_proj_matmul`` / ``kv_proj_matmul``: no rounding)."""
    return dot(x, w, accumulate)


def proj_int8(qr: jax.Array, qr_scale: jax.Array, w: jax.Array, w_scale: jax.Array):
    """W8A8 projection with dequant: ``(f32(qr @ w) · qr_scale[t]) · w_scale[c]``.

    The int32 accumulator is exact; ``f32(acc)`` rounds RNE, which matters only above 2**24:
    with K ≤ 1024 (V4 Flash) ``|acc| ≤ K·128·128 ≤ 2**24`` and the rounding is skipped.
    """
    k = qr.shape[-1]
    acc = idot(qr, w) if k * 128 * 128 <= 2**24 else r32(idot(qr, w))
    return r32(r32(acc * widen(qr_scale)) * widen(w_scale))
