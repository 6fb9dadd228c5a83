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
    (``dsref.run`` validates ``seq_lens`` before this runs)."""
    return cache.at[rows].set(values.astype(cache.dtype), mode="promise_in_bounds")
