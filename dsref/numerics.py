"""The rounding vocabulary: every narrowing dsref performs goes through this module.

XLA rewrites fp32 arithmetic (``x / c`` into ``x * (1/c)``, ``1/sqrt`` into ``rsqrt``, ``a*b + c``
into fused multiply-adds) and may keep excess precision across bf16 round trips, in jit and in
eager mode alike (measured on XLA CPU, jax 0.10; locked by tests/test_dsref_numerics.py). dsref
therefore never computes in float32. Inside a stage, every fp32 value is *carried in float64*
and rounded to the fp32 grid after every operation with :func:`r32`; bf16 / fp16 narrowing
rounds to those grids with :func:`rbf16` / :func:`rf16`. Because float64 holds the exact
product of two fp32 numbers and 53 >= 2*24 + 2, each ``r32(a op b)`` for op in + - * / sqrt
is the correctly rounded fp32 operation, whatever the compiler fuses. Divisions by data go
through :func:`div`, which hides the divisor from the algebraic simplifier.

``reduce_precision`` flushes results below the smallest normal to zero; the grids here are
completed with an exact subnormal branch (scale by a power of two, round to an integer, scale
back), so every function agrees with ml_dtypes / numpy casts on the whole range, signed zeros,
infinities and NaN included.

All functions here take and return float64 jax arrays ("carried" values) and must run with
x64 enabled — :func:`x64` is the scope dsref uses; it never flips the user's global config.
The public converters at the bottom (:func:`to_bf16`, :func:`quant_int8`, ...) accept and
return numpy arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
CAST_MODES = ("rne", "rhaz")  # ties to even | ties away from zero (PyPTO's default pl.cast)

_F32_TINY = 2.0**-126  # smallest normal fp32 (and bf16); fp16: 2**-14


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """Enable float64 for dsref's own computations only."""
    with jax.enable_x64(True):
        yield


def _grid(v: jax.Array, exponent_bits: int, mantissa_bits: int, tiny: float, quantum: float):
    """Round carried float64 ``v`` to a binary format's grid, RNE, subnormals exact."""
    normal = jax.lax.reduce_precision(v, exponent_bits=exponent_bits, mantissa_bits=mantissa_bits)
    sub = jnp.round(v * (1.0 / quantum)) * quantum  # power-of-two scaling: exact
    return jnp.where(jnp.abs(v) < tiny, sub, normal)


def r32(v: jax.Array) -> jax.Array:
    """Round to the nearest fp32 value, ties to even (the result of one IEEE fp32 op)."""
    return _grid(v, 8, 23, _F32_TINY, 2.0**-149)


def _rbf16_rne(v: jax.Array) -> jax.Array:
    return _grid(v, 8, 7, _F32_TINY, 2.0**-133)


def rbf16(v: jax.Array, mode: str = "rne") -> jax.Array:
    """Round a carried fp32 value to bf16: ``rne`` (ties to even) or ``rhaz`` (ties away).

    Ties away is derived exactly from the RNE result: ``d = v - r`` is exact in float64; ``v``
    is a tie iff ``d != 0`` and ``r + 2d`` (the other neighbour) is itself on the bf16 grid,
    which no non-tie can satisfy (``|2d|`` is then below the local spacing).
    """
    r = _rbf16_rne(v)
    if mode == "rne":
        return r
    if mode != "rhaz":
        raise ValueError(f"cast mode: expected one of {CAST_MODES}, got {mode!r}")
    d = v - r
    other = r + 2.0 * d
    tie = (d != 0) & (_rbf16_rne(other) == other) & jnp.isfinite(r)
    return jnp.where(tie & (jnp.abs(other) > jnp.abs(r)), other, r)


def rf16(v: jax.Array) -> jax.Array:
    """Round to fp16, ties to even (overflow to inf, subnormals exact)."""
    return _grid(v, 5, 10, 2.0**-14, 2.0**-24)


FP8_MAX = 448.0  # largest finite float8_e4m3fn


def rf8e4m3(v: jax.Array) -> jax.Array:
    """Round to float8_e4m3fn, ties to even, for ``|v| <= 448`` (callers clamp first: e4m3fn
    has no infinity). Normals (``|v| >= 2**-6``) keep 4 significant bits; subnormals are
    multiples of ``2**-9``. Exact: 3 mantissa bits under fp32's exponent range, which equals
    e4m3fn's grid on ``[2**-6, 448]`` (no value there rounds past 448)."""
    return _grid(v, 8, 3, 2.0**-6, 2.0**-9)


def pow2_ceil(v: jax.Array) -> jax.Array:
    """``2**ceil(log2(v))`` of positive normal carried values: ``v`` itself when it is a
    power of two (the official kernels' ``fast_round_scale`` on the fp32 bits: the exponent,
    plus one when any mantissa bit is set)."""
    m, e = jnp.frexp(v)  # v = m · 2**e, m in [0.5, 1)
    return jnp.ldexp(jnp.ones_like(v), jnp.where(m == 0.5, e - 1, e))


def widen(x: jax.Array) -> jax.Array:
    """Widen a stored array (bf16, fp32, int8, int32) to a carried float64 value (exact)."""
    return jnp.asarray(x).astype(jnp.float64)


def div(a: jax.Array, b: jax.Array) -> jax.Array:
    """True fp32 division ``a / b``, kept from being rewritten into ``a * (1/b)``.

    The divisor is broadcast to the full shape behind an optimization barrier, so neither a
    constant nor a runtime scalar divisor is visible to XLA's algebraic simplifier.
    """
    shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b))
    b_full = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(b, jnp.float64), shape))
    return r32(a / b_full)


def sqrt(v: jax.Array) -> jax.Array:
    """Correctly rounded fp32 square root."""
    return r32(jnp.sqrt(v))


def row_sum(v: jax.Array) -> jax.Array:
    """fp32 reduction over the last axis: accumulated in float64, rounded once to fp32.

    The float64 sum is pairwise (zero-padded to a power of two, then halved): XLA CPU fuses
    the halving adds with the producer of ``v``, where ``jnp.sum`` hands a materialised
    float64 copy of ``v`` to its reduction library (4x slower for the V4 q heads).
    """
    n = v.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, width - n)])
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return r32(v)


def bf16_words(x: jax.Array) -> jax.Array:
    """The raw ``uint16`` words of a bf16 array (bit-exact, no rounding)."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16)


def concat_bf16(parts: list[jax.Array], axis: int = -1) -> jax.Array:
    """Concatenate bf16 arrays as raw words: XLA CPU upcasts a bf16 concatenate to an fp32
    buffer and converts back (a full-size pass), a ``uint16`` one is a plain copy."""
    words = jnp.concatenate([bf16_words(p.astype(jnp.bfloat16)) for p in parts], axis=axis)
    return jax.lax.bitcast_convert_type(words, jnp.bfloat16)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ResidentWeight:
    """A projection weight prepared once for many dots (:class:`dsref.Prepared`).

    ``t`` is the weight transposed to ``[out, in]`` and stored in the dtype the dot reads:
    float64 for an exact bf16 dot (the widening is paid once, not per call), the stored dtype
    otherwise. XLA CPU contracts a small ``[T, K]`` activation with a ``[N, K]`` weight 1.7-2.5x
    faster than with a ``[K, N]`` one (bf16, V3.2 and V4 Flash shapes). Same products, same
    float64 sum, same single rounding: only the speed differs from a dot on the stored
    ``[in, out]`` weight.
    """

    t: jax.Array


def resident_weight(w: jax.Array, accumulate: str = "exact") -> ResidentWeight:
    """``w [in, out]`` as a :class:`ResidentWeight` for :func:`dot` (bf16) or :func:`idot` (int8)."""
    t = jnp.asarray(w).T
    if accumulate == "exact" and t.dtype != jnp.int8:
        t = widen(t)
    return ResidentWeight(t)


def _contract(a: jax.Array, b, **kw) -> jax.Array:
    """``a @ b`` over ``a``'s last axis, for a stored ``[in, out]`` or a resident weight."""
    if isinstance(b, ResidentWeight):
        return jax.lax.dot_general(a, b.t, (((a.ndim - 1,), (1,)), ((), ())), **kw)
    return jnp.dot(a, b, **kw)


def dot(a: jax.Array, b, accumulate: str = "exact") -> jax.Array:
    """``a @ b`` of bf16 operands, as a carried fp32 value (int8 operands: :func:`idot`).

    ``exact``: the products are exact in float64 and summed there, then rounded once to fp32
    (the float64 sum differs from the exact one by ~K·2**-53 relative, so the fp32 result is
    the correctly rounded sum unless it lies that close to an fp32 rounding boundary).
    ``fp32``: XLA's native fp32-accumulated dot on the stored operands, order unspecified —
    faster, not bitwise portable. ``b`` is a stored ``[in, out]`` weight or a
    :class:`ResidentWeight` prepared for the same ``accumulate``.
    """
    if accumulate == "exact":
        wide = b if isinstance(b, ResidentWeight) else widen(b)
        return r32(_contract(widen(a), wide, precision=jax.lax.Precision.HIGHEST))
    if accumulate == "fp32":
        return widen(_contract(a, b, preferred_element_type=jnp.float32))
    raise ValueError(f"accumulate: expected 'exact' or 'fp32', got {accumulate!r}")


def edot(spec: str, a: jax.Array, b: jax.Array, accumulate: str = "exact") -> jax.Array:
    """The contraction ``jnp.einsum(spec, a, b)`` (per-head and batched dots) with :func:`dot`'s
    rounding: ``exact`` products summed in float64 and rounded once to fp32; ``fp32`` XLA's
    fp32 accumulation. Operands are bf16 or fp32 values (stored or carried)."""
    if accumulate == "exact":
        return r32(jnp.einsum(spec, widen(a), widen(b), precision=jax.lax.Precision.HIGHEST))
    if accumulate == "fp32":
        f = jnp.float32
        return widen(jnp.einsum(spec, jnp.asarray(a).astype(f), jnp.asarray(b).astype(f),
                                precision=jax.lax.Precision.HIGHEST, preferred_element_type=f))
    raise ValueError(f"accumulate: expected 'exact' or 'fp32', got {accumulate!r}")


def idot(a: jax.Array, b) -> jax.Array:
    """int8 x int8 -> the exact int32 accumulator, carried as float64.

    XLA's integer dot accumulates in int32, which is exact here (|sum| <= K·2**14 < 2**31 for
    K < 2**17) and about 4x faster on CPU than a float64 dot of the widened operands."""
    return _contract(a, b, preferred_element_type=jnp.int32).astype(jnp.float64)


def int8_codes(v: jax.Array) -> jax.Array:
    """The kernels' quantisation chain ``int8(fp16(int32_rne(v)))`` on carried values.

    fp32 -> int32 rounds to nearest, ties to even (``pl.cast(mode="rint")``); int32 -> fp16
    rounds to nearest; fp16 -> int8 truncates and saturates to [-128, 127]. Exact for
    |v| <= 127.
    """
    n = jnp.round(v)  # half to even
    h = rf16(n)
    return jnp.clip(jnp.trunc(h), -128.0, 127.0)


# ---------------------------------------------------------------------------------------------
# Public converters (numpy in, numpy out)
# ---------------------------------------------------------------------------------------------


@jax.jit
def _to_bf16_rne(v):
    return _rbf16_rne(v)


@jax.jit
def _to_bf16_rhaz(v):
    return rbf16(v, "rhaz")


#: a bf16's exponent field in its 16 bits: all ones is Inf or NaN
BF16_EXPONENT = 0x7F80


def bf16_nonfinite(a: np.ndarray) -> np.ndarray:
    """The Inf/NaN mask of a bf16 numpy array, from its bits (``ml_dtypes``' isfinite widens
    each element first: 55 vs 33 ms on a 33M-element cache, Intel Xeon)."""
    return (np.ascontiguousarray(a).view(np.uint16) & BF16_EXPONENT) == BF16_EXPONENT


def to_bf16(x, mode: str = "rne") -> np.ndarray:
    """Round fp32 values to bf16 (``rne`` ties to even, ``rhaz`` ties away); numpy in and out.

    ``x`` is first taken as fp32 (a float64 input is rounded to fp32 first, like ``.float()``).
    """
    if mode not in CAST_MODES:
        raise ValueError(f"cast mode: expected one of {CAST_MODES}, got {mode!r}")
    v = np.asarray(x, dtype=np.float32).astype(np.float64)
    with x64():
        r = (_to_bf16_rne if mode == "rne" else _to_bf16_rhaz)(v)
    return np.asarray(r).astype(np.float32).astype(BF16)


def quant_int8(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 quantisation (V4 ``qr_quant``): returns (codes int8, scale fp32).

    ``amax = max(max|v|, 1e-4)``; ``sq = 127 / amax`` and ``scale = 1 / sq`` (true fp32
    divisions); ``codes = int8(fp16(int32_rne(v * sq)))``.
    """
    v = np.asarray(x, dtype=np.float32).astype(np.float64)
    with x64():
        codes, scale = _quant_rows()(v)
    return np.asarray(codes).astype(np.int8), np.asarray(scale).astype(np.float32)


@functools.cache
def _quant_rows():
    from dsref.quant import quant_int8 as quant_rows  # dsref.quant builds on this module

    return jax.jit(quant_rows)


def dequant_int8(codes, scale) -> np.ndarray:
    """``f32(codes) * scale`` rounded to fp32 (per-row or per-channel scale, broadcast)."""
    return (np.asarray(codes).astype(np.float32) * np.asarray(scale, np.float32)).astype(np.float32)
