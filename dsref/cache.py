"""Cache writes: one row per batch entry, every other row bit-identical."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsref.numerics import bf16_words


def decode_rows(seq_lens: jax.Array, max_seq: int) -> jax.Array:
    """Cache row of each batch entry's new token: ``b·MAX_SEQ + (seq_lens[b] − 1)``."""
    b = jnp.arange(seq_lens.shape[0], dtype=jnp.int32)
    return b * max_seq + (seq_lens.astype(jnp.int32) - 1)


def write_rows(cache: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
    """A new cache with ``cache[rows[i]] = values[i]``; rows must be distinct and in range
    (``dsref.run`` validates ``seq_lens`` before this runs).

    The rows move as raw 16-bit words, a pure copy. A bf16 cache may also be carried as its
    ``uint16`` words (:func:`bf16_words`), which is how ``dsref.run`` and
    :class:`dsref.Prepared` carry it: XLA CPU converts a whole bf16 array to fp32 and back
    around a row update (35 ms for the 75 MB V3.2 caches), while a donated ``uint16`` cache
    is updated in place (microseconds)."""
    if cache.dtype == jnp.uint16:
        return cache.at[rows].set(bf16_words(values.astype(jnp.bfloat16)), mode="promise_in_bounds")
    values = values.astype(cache.dtype)
    if cache.dtype.itemsize != 2:
        return cache.at[rows].set(values, mode="promise_in_bounds")
    bits = bf16_words(cache)
    bits = bits.at[rows].set(bf16_words(values), mode="promise_in_bounds")
    return jax.lax.bitcast_convert_type(bits, cache.dtype)
