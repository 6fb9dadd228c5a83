"""pl.cast rounding modes against independent constructions (bit patterns, exact fractions)."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowering.tile import make_tile, pl

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
NARROW = {"BF16": (BF16, pl.BF16, 0x7F7F), "FP16": (F16, pl.FP16, 0x7BFF)}


def cast(x: np.ndarray, dtype, mode) -> np.ndarray:  # noqa: ANN001
    return pl.cast(make_tile(x), dtype, mode=mode).numpy()


def from_bits(u: np.ndarray, dt: np.dtype) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return u.astype(np.uint16).view(dt).astype(np.float64)


def tie_cases(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every midpoint between consecutive positive finite values: (mid, lower bits, upper)."""
    dt, _, max_bits = NARROW[name]
    u = np.arange(0x0001, max_bits, dtype=np.int64)  # u + 1 <= max finite
    lo = from_bits(u, dt)
    hi = from_bits(u + 1, dt)
    mid = (lo + hi) / 2
    assert np.all(mid.astype(np.float32).astype(np.float64) == mid)  # exact in fp32
    return mid.astype(np.float32), u, u + 1


@pytest.mark.parametrize("name", ["BF16", "FP16"])
def test_every_tie_every_mode_both_signs(backend, name: str) -> None:
    dt, pdt, _ = NARROW[name]
    mid, ulo, uhi = tie_cases(name)
    lo, hi = from_bits(ulo, dt), from_bits(uhi, dt)
    even = np.where(ulo % 2 == 0, lo, hi)
    expect = {"rint": even, "none": even, "round": hi, "floor": lo, "ceil": hi, "trunc": lo}
    for mode, want in expect.items():
        got = cast(mid, pdt, mode).astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=f"+ {mode}")
    expect_neg = {"rint": -even, "none": -even, "round": -hi, "floor": -hi, "ceil": -lo,
                  "trunc": -lo}
    for mode, want in expect_neg.items():
        got = cast(-mid, pdt, mode).astype(np.float64)
        np.testing.assert_array_equal(got, want, err_msg=f"- {mode}")


@pytest.mark.parametrize("name", ["BF16", "FP16"])
def test_just_off_ties_round_to_nearest(backend, name: str) -> None:
    dt, pdt, _ = NARROW[name]
    mid, ulo, uhi = tie_cases(name)
    lo, hi = from_bits(ulo, dt), from_bits(uhi, dt)
    above = np.nextafter(mid, np.float32(np.inf))
    below = np.nextafter(mid, np.float32(0))
    for mode in ("rint", "round"):
        np.testing.assert_array_equal(cast(above, pdt, mode).astype(np.float64), hi)
        np.testing.assert_array_equal(cast(below, pdt, mode).astype(np.float64), lo)
    np.testing.assert_array_equal(cast(above, pdt, "floor").astype(np.float64), lo)
    np.testing.assert_array_equal(cast(below, pdt, "ceil").astype(np.float64), hi)


def test_rint_is_the_library_cast() -> None:
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    np.testing.assert_array_equal(cast(x, pl.BF16, "rint").view(np.uint16),
                                  x.astype(BF16).view(np.uint16))
    np.testing.assert_array_equal(cast(x, pl.FP16, "rint").view(np.uint16),
                                  x.astype(F16).view(np.uint16))


def test_semantics_pins(backend) -> None:
    x = np.float32([1 + 2**-8, -(1 + 2**-8)])
    assert cast(x, pl.BF16, "rint").astype(np.float32).tolist() == [1.0, -1.0]
    assert cast(x, pl.BF16, "round").astype(np.float32).tolist() == [1.0078125, -1.0078125]
    # the default mode is ties-away
    assert pl.cast(make_tile(x), pl.BF16).numpy().astype(np.float32).tolist() == [
        1.0078125, -1.0078125]


def test_overflow_and_specials(backend) -> None:
    bmax = float(ml_dtypes.finfo(BF16).max)
    half_ulp = 2.0 ** (127 - 8)
    x = np.float32([bmax + half_ulp, np.inf, -np.inf, np.nan, bmax])
    r = cast(x, pl.BF16, "rint").astype(np.float64)
    assert r[0] == np.inf and r[1] == np.inf and r[2] == -np.inf and np.isnan(r[3])
    assert r[4] == bmax
    assert cast(x[:1], pl.BF16, "round").astype(np.float64)[0] == np.inf
    assert cast(x[:1], pl.BF16, "floor").astype(np.float64)[0] == bmax
    assert cast(x[:1], pl.BF16, "trunc").astype(np.float64)[0] == bmax
    big = np.float32([70000.0, -70000.0])
    assert cast(big, pl.FP16, "floor").astype(np.float64).tolist() == [65504.0, -np.inf]
    assert cast(big, pl.FP16, "trunc").astype(np.float64).tolist() == [65504.0, -65504.0]
    # signed zeros
    tiny = np.float32([1e-45, -1e-45])
    z = cast(tiny, pl.FP16, "trunc")
    assert np.signbit(z.astype(np.float32)).tolist() == [False, True]


def test_float_to_int_modes_and_saturation(backend) -> None:
    x = np.float32([0.5, 1.5, 2.5, -2.5, -0.5, 2.7, -2.7])
    assert cast(x, pl.INT32, "rint").tolist() == [0, 2, 2, -2, 0, 3, -3]
    assert cast(x, pl.INT32, "round").tolist() == [1, 2, 3, -3, -1, 3, -3]
    assert cast(x, pl.INT32, "floor").tolist() == [0, 1, 2, -3, -1, 2, -3]
    assert cast(x, pl.INT32, "ceil").tolist() == [1, 2, 3, -2, 0, 3, -2]
    assert cast(x, pl.INT32, "trunc").tolist() == [0, 1, 2, -2, 0, 2, -2]
    assert cast(x, pl.INT32, "none").tolist() == [0, 1, 2, -2, 0, 2, -2]
    s = np.float32([200.0, -300.0, 127.4, np.nan, np.inf, -np.inf])
    assert cast(s, pl.INT8, "rint").tolist() == [127, -128, 127, 0, 127, -128]
    assert cast(np.float32([3e9, -3e9]), pl.INT32, "rint").tolist() == [2**31 - 1, -(2**31)]
    assert cast(np.float16([300.0]), pl.INT8, "trunc").tolist() == [127]


def test_quant_chain_is_exact(backend) -> None:
    v = np.arange(-127, 128, dtype=np.float32)
    i32 = pl.cast(make_tile(v), pl.INT32, mode="rint")
    f16 = pl.cast(i32, pl.FP16, mode="round")
    i8 = pl.cast(f16, pl.INT8, mode="trunc")
    assert i8.numpy().tolist() == list(range(-127, 128))


def test_int_to_narrow_float_single_rounding(backend) -> None:
    # ties between fp16 neighbours (ulp 2 in [2048, 4096)): 2049 -> 2048 (rint) / 2050 (round)
    x = np.arange(2048, 8192, dtype=np.int32)
    for mode in ("rint", "round", "floor", "ceil", "trunc"):
        got = cast(x, pl.FP16, mode).astype(np.float64)
        want = np.array([ref_round(Fraction(int(v)), "FP16", mode) for v in x[::37]])
        np.testing.assert_array_equal(got[::37], want, err_msg=mode)
    # ml_dtypes rounds int32/float64 -> bf16 through fp32 (double rounding); we must not
    v = np.int32([2**30 + 2**22 + 1, 257, -(2**30 + 2**22 + 1)])
    got = cast(v, pl.BF16, "rint").astype(np.float64).tolist()
    assert got == [2.0**30 + 2.0**23, 256.0, -(2.0**30 + 2.0**23)]
    assert cast(v[1:2], pl.BF16, "round").astype(np.float64).tolist() == [258.0]
    assert cast(np.int32([1 << 24 | 1]), pl.FP32, "round").tolist() == [16777218.0]


# -- independent exact reference ------------------------------------------------------------

_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _table(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in _TABLES:
        dt = NARROW[name][0]
        u = np.arange(0, 0x10000, dtype=np.int64)
        v = from_bits(u, dt)
        keep = np.isfinite(v) & ~((v == 0) & (u != 0))
        order = np.argsort(v[keep], kind="stable")
        _TABLES[name] = (v[keep][order], u[keep][order])
    return _TABLES[name]


def ref_round(x: Fraction, name: str, mode: str) -> float:
    """Round the exact value x to the narrow format by searching the table of all values."""
    vals, bits = _table(name)
    big = 2.0**128 if name == "BF16" else 65536.0
    k = int(np.searchsorted(vals, float(x), side="right"))  # vals[k-1] <= x (float(x) exact)
    lo = Fraction(float(vals[k - 1])) if k > 0 else Fraction(-big)
    if lo == x:
        return float(lo)
    hi = Fraction(float(vals[k])) if k < len(vals) else Fraction(big)
    lo_even = k == 0 or bits[k - 1] % 2 == 0 or abs(lo) == big

    def out(f: Fraction) -> float:
        return float(np.copysign(np.inf, float(f))) if abs(f) == big else float(f)

    if mode == "floor":
        return out(lo)
    if mode == "ceil":
        return out(hi)
    if mode == "trunc":
        return out(lo if x > 0 else hi)
    dl, dh = x - lo, hi - x
    if dl != dh:
        return out(lo if dl < dh else hi)
    if mode in ("rint", "none"):
        return out(lo if lo_even else hi)
    return out(hi if x > 0 else lo)


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(x=finite_f32, name=st.sampled_from(["BF16", "FP16"]),
       mode=st.sampled_from(["rint", "round", "floor", "ceil", "trunc", "none"]))
def test_cast_matches_exact_reference(x: float, name: str, mode: str) -> None:
    got = float(cast(np.float32([x]), NARROW[name][1], mode).astype(np.float64)[0])
    assert got == ref_round(Fraction(x), name, mode)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(x=st.integers(-(2**31), 2**31 - 1), mode=st.sampled_from(["rint", "round", "floor"]))
def test_int32_to_bf16_matches_exact_reference(x: int, mode: str) -> None:
    got = float(cast(np.int32([x]), pl.BF16, mode).astype(np.float64)[0])
    assert got == ref_round(Fraction(x), "BF16", mode)
