"""Rotary position embedding on carried fp32 values; callers round the result.

Two layouts: ``half`` (x = [lo | hi], the pypto-lib V3.2 kernels) and ``interleaved``
(pairs (x[2i], x[2i+1]), the official ds32 ``apply_rotary_emb`` and the V4 kernels). Tables
``c, s`` are broadcastable to ``x``'s shape and carry the full rope width R.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsref.numerics import r32


def rope_half(x: jax.Array, c: jax.Array, s: jax.Array) -> jax.Array:
    """``lo' = x_lo·c_lo − x_hi·s_lo``, ``hi' = x_hi·c_hi + x_lo·s_hi`` (each op fp32).

    The table halves are read separately (a real table's halves are equal)."""
    h = x.shape[-1] // 2
    x_lo, x_hi = x[..., :h], x[..., h:]
    lo = r32(r32(x_lo * c[..., :h]) - r32(x_hi * s[..., :h]))
    hi = r32(r32(x_hi * c[..., h:]) + r32(x_lo * s[..., h:]))
    return jnp.concatenate([lo, hi], axis=-1)


def rope_interleaved(x: jax.Array, c: jax.Array, s: jax.Array, *, table: str = "pair"):
    """``y_e = x_e·c − x_o·s``, ``y_o = x_e·s + x_o·c`` per pair (each op fp32).

    ``table="pair"``: pair i reads column i (columns R/2.. are never read).
    ``table="element"``: element j reads column j (CANN; tables repeat-interleaved).
    """
    h = x.shape[-1] // 2
    x_e, x_o = x[..., 0::2], x[..., 1::2]
    if table == "pair":
        c_e = c_o = c[..., :h]
        s_e = s_o = s[..., :h]
    elif table == "element":
        c_e, c_o, s_e, s_o = c[..., 0::2], c[..., 1::2], s[..., 0::2], s[..., 1::2]
    else:
        raise ValueError(f"rope_table: expected 'pair' or 'element', got {table!r}")
    y_e = r32(r32(x_e * c_e) - r32(x_o * s_e))
    y_o = r32(r32(x_e * s_o) + r32(x_o * c_o))
    return jnp.stack([y_e, y_o], axis=-1).reshape(x.shape)


def rope_interleave(cos_half: jax.Array, sin_half: jax.Array) -> tuple[jax.Array, jax.Array]:
    """pypto-lib's per-element tables for the interleaved rotation, from half-width rows
    ``[..., R/2]``: ``cos_il[..., j] = cos_half[..., j // 2]``, ``sin_signed[..., j] =
    sin_half[..., j // 2] · (−1 if j is even else +1)`` — a gather and a sign flip, exact.
    Then ``y[j] = x[j]·cos_il[j] + x[j ^ 1]·sin_signed[j]`` is :func:`rope_interleaved`
    (``table="pair"``) bit for bit: negating a factor is exact, and the sum's operands are the
    same two rounded products."""
    cos_il = jnp.repeat(cos_half, 2, axis=-1)
    sign = jnp.tile(jnp.array([-1, 1], sin_half.dtype), sin_half.shape[-1])
    return cos_il, jnp.repeat(sin_half, 2, axis=-1) * sign


def rope(x: jax.Array, c: jax.Array, s: jax.Array, *, layout: str, table: str = "pair"):
    """Dispatch on ``layout`` (``half`` | ``interleaved``)."""
    if layout == "half":
        return rope_half(x, c, s)
    if layout == "interleaved":
        return rope_interleaved(x, c, s, table=table)
    raise ValueError(f"rope_layout: expected 'half' or 'interleaved', got {layout!r}")
