"""The rounding vocabulary against ml_dtypes / numpy, exhaustively where the space is small."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsref import numerics
from dsref.numerics import dequant_int8, quant_int8, to_bf16, x64

BF16 = ml_dtypes.bfloat16
N = 64  # fixed array length: one compilation per test


def _all_finite_bf16() -> np.ndarray:
    b = np.arange(0, 0x7F80, dtype=np.uint16).view(BF16)  # +0 .. largest finite
    return b


def _midpoints(sign: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = _all_finite_bf16().astype(np.float64) * sign
    lo, hi = b[:-1], b[1:]
    mid = (lo + hi) / 2  # 9 significant bits: exact in fp32
    return mid.astype(np.float32), lo, hi


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rne_exhaustive_ties_match_ml_dtypes(sign):
    mid, lo, hi = _midpoints(sign)
    got = to_bf16(mid, "rne")
    assert_bitwise(got, mid.astype(BF16), "rne")
    even = np.where(lo.astype(BF16).view(np.uint16) % 2 == 0, lo, hi)
    np.testing.assert_array_equal(got.astype(np.float64), even)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rhaz_exhaustive_ties_go_away_from_zero(sign):
    mid, lo, hi = _midpoints(sign)
    away = np.where(np.abs(hi) > np.abs(lo), hi, lo)
    np.testing.assert_array_equal(to_bf16(mid, "rhaz").astype(np.float64), away)


def test_rhaz_equals_rne_off_ties():
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    x = x[oracle.rb(x, "rne") == oracle.rb(x, "rhaz")]  # drop the rare exact ties
    assert x.size > 4000
    assert_bitwise(to_bf16(x, "rhaz"), x.astype(BF16), "rhaz off ties")


def test_semantics_examples():
    x = np.array([1 + 2**-8, -(1 + 2**-8)], np.float32)
    np.testing.assert_array_equal(to_bf16(x, "rne").astype(np.float32), [1.0, -1.0])
    np.testing.assert_array_equal(to_bf16(x, "rhaz").astype(np.float32), [1.0078125, -1.0078125])


f32_elems = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@given(hnp.arrays(np.float32, N, elements=f32_elems))
def test_to_bf16_rne_matches_ml_dtypes(x):
    assert_bitwise(to_bf16(x, "rne"), x.astype(BF16), "to_bf16")


@given(hnp.arrays(np.float32, N, elements=f32_elems))
def test_to_bf16_rhaz_matches_oracle(x):
    assert_bitwise(to_bf16(x, "rhaz"), oracle.bf16(x, "rhaz"), "to_bf16 rhaz")


@jax.jit
def _grids(v):
    return numerics.r32(v), numerics.rf16(v)


@given(hnp.arrays(np.float64, N, elements=st.floats(allow_nan=True, allow_infinity=True,
                                                    allow_subnormal=True)))
def test_fp32_and_fp16_grids_match_numpy_casts(v):
    with x64():
        r32, r16 = (np.asarray(a) for a in _grids(jnp.asarray(v)))
    with np.errstate(over="ignore"):
        assert_bitwise(r32, v.astype(np.float32).astype(np.float64), "r32")
        assert_bitwise(r16, v.astype(np.float16).astype(np.float64), "rf16")


def test_fp32_grid_subnormals_and_overflow():
    tiny = np.float32(2.0**-149)
    v = np.array([tiny * 0.5, tiny * 1.5, tiny * 2.5, -tiny * 0.5, 2.0**-126 * (1 - 2**-25),
                  3.4028235677973366e38 * (1 + 2**-25), 1e39, -1e39], np.float64)
    with x64():
        got = np.asarray(jax.jit(numerics.r32)(jnp.asarray(v)))
    with np.errstate(over="ignore"):
        assert_bitwise(got, v.astype(np.float32).astype(np.float64), "r32 edges")
    assert np.signbit(got[3]) and got[3] == 0  # -tiny/2 rounds to -0.0


@jax.jit
def _codes(v):
    return numerics.int8_codes(v)


@given(hnp.arrays(np.float32, N, elements=st.floats(-1e6, 1e6, width=32)))
def test_int8_chain_saturates_like_numpy(x):
    with x64():
        got = np.asarray(_codes(jnp.asarray(x.astype(np.float64))))
    n = np.rint(x.astype(np.float64))  # int32_rne, then fp16 (exact here or inf), trunc, sat
    with np.errstate(over="ignore"):
        h = n.astype(np.float16).astype(np.float64)
    want = np.clip(np.trunc(h), -128, 127)
    np.testing.assert_array_equal(got, want)


def test_int8_ties_at_unit_scale():
    # amax = 127 makes sq = 1 exactly: 0.5 → 0, 1.5 → 2, 2.5 → 2, -2.5 → -2 (ties to even)
    codes, scale = quant_int8(np.array([[0.5, 1.5, 2.5, -2.5, 127.0]], np.float32))
    np.testing.assert_array_equal(codes, [[0, 2, 2, -2, 127]])
    assert scale[0, 0] == np.float32(1.0)


def test_int8_all_zero_row_uses_the_amax_floor():
    codes, scale = quant_int8(np.zeros((2, 8), np.float32))
    assert not codes.any()
    sq = np.float32(127) / np.float32(1e-4)
    assert_bitwise(scale, np.full((2, 1), np.float32(1) / sq), "scale floor")


def test_quant_matches_oracle_and_dequant_inverts():
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    codes, scale = quant_int8(x)
    want_codes, want_scale = oracle.quant_int8(x)
    assert_bitwise(codes, want_codes, "codes")
    assert_bitwise(scale, want_scale, "scale")
    back = dequant_int8(codes, scale)
    assert np.abs(back - x).max() <= scale.max() * 0.5 * (1 + 1e-6)


def test_division_is_not_rewritten_to_a_reciprocal_multiply():
    # x / 7168 and x * (1/7168) differ on about half of all fp32 values (measured)
    x = np.random.default_rng(0).uniform(1, 1000, 4096).astype(np.float32)
    with x64():
        got = np.asarray(jax.jit(lambda v: numerics.div(v, 7168.0))(jnp.asarray(x, jnp.float64)))
    want = x / np.float32(7168)
    assert (want != x * np.float32(1 / 7168)).mean() > 0.2  # the test can tell them apart
    assert_bitwise(got, want.astype(np.float64), "div")


def test_rope_interleave_tables_and_their_rotation_equal_the_pair_rope_bitwise():
    """pypto-lib HEAD's rope_interleave.py tables, against numpy: ``cos_il[j] =
    cos_half[j >> 1]``, ``sin_signed[j] = ±sin_half[j >> 1]`` (− for even j); the rotation
    ``x·cos_il + x[j ^ 1]·sin_signed`` in numpy float32 (one rounding per op) equals dsref's
    interleaved pair rope bit for bit, signed zeros included."""
    from dsref.rope import rope_interleave, rope_interleaved

    rng = np.random.default_rng(3)
    n, r = 5, 16
    ch = rng.standard_normal((n, r // 2)).astype(np.float32)
    sh = rng.standard_normal((n, r // 2)).astype(np.float32)
    sh[0, 0], ch[1, 1] = 0.0, -0.0
    x = rng.standard_normal((n, r)).astype(np.float32)
    x[2, 4:6] = [0.0, -0.0]
    with x64():
        cos_il, sin_signed = (np.asarray(a) for a in rope_interleave(jnp.asarray(ch),
                                                                      jnp.asarray(sh)))
        full_c = np.concatenate([ch, np.full_like(ch, np.nan)], axis=-1)  # pair: cols < R/2
        full_s = np.concatenate([sh, np.full_like(sh, np.nan)], axis=-1)
        want = np.asarray(rope_interleaved(jnp.asarray(x, jnp.float64),
                                           jnp.asarray(full_c, jnp.float64),
                                           jnp.asarray(full_s, jnp.float64))).astype(np.float32)
    j = np.arange(r)
    assert_bitwise(cos_il, ch[:, j >> 1], "cos_il")
    assert_bitwise(sin_signed, sh[:, j >> 1] * np.where(j % 2, 1, -1).astype(np.float32),
                   "sin_signed")
    got = x * cos_il + x[:, j ^ 1] * sin_signed  # numpy float32: each op rounded once
    assert_bitwise(got, want, "rotation")
