"""Cache writes: one row per batch entry, every other row bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def decode_rows(seq_lens: jax.Array, max_seq: int) -> jax.Array:
    """Cache row of each batch entry's new token: ``b·MAX_SEQ + (seq_lens[b] − 1)``."""
    b = jnp.arange(seq_lens.shape[0], dtype=jnp.int32)
    return b * max_seq + (seq_lens.astype(jnp.int32) - 1)


def write_rows(cache: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
    """A new cache with ``cache[rows[i]] = values[i]``; rows must be distinct and in range
    (``dsref.run`` validates ``seq_lens`` before this runs).

    The rows move as raw 16-bit words: a pure copy, and XLA CPU scatters a bf16 cache about
    twice as slowly as the same bytes typed uint16."""
    values = values.astype(cache.dtype)
    if cache.dtype.itemsize != 2:
        return cache.at[rows].set(values, mode="promise_in_bounds")
    bits = jax.lax.bitcast_convert_type(cache, jnp.uint16)
    bits = bits.at[rows].set(jax.lax.bitcast_convert_type(values, jnp.uint16), mode="promise_in_bounds")
    return jax.lax.bitcast_convert_type(bits, cache.dtype)
