"""Exact narrowing casts on numpy arrays, every rounding mode, derived from ml_dtypes/numpy.

Modes (PyPTO ``pl.cast`` names): ``rint`` round to nearest, ties to even; ``round`` round to
nearest, ties away from zero; ``floor``; ``ceil``; ``trunc`` (toward zero); ``none`` (float ->
float: ties to even; float -> int: truncate).

Float -> narrower float (``round_to_float``): the source values are widened exactly to float64.
A first candidate ``r0`` comes from the library cast (ml_dtypes / numpy, round to nearest even;
ml_dtypes' float64 -> bfloat16 goes through float32 and may double-round, so ``r0`` is only
trusted to be *adjacent* to x). Its neighbour toward x (``np.nextafter`` in the narrow dtype)
gives the bracket ``lo <= x <= hi`` of consecutive narrow values. The mode then picks ``lo`` or
``hi`` by exact float64 arithmetic: ``x - lo`` and ``hi - x`` are exact because x, lo and hi
are within one narrow ulp of each other and carry at most 32 significant bits. An infinite
``hi``/``lo`` stands for the value one ulp past the largest finite number (IEEE overflow rule:
round to nearest overflows to inf from max + ulp/2 on, which counts as the even side).
No bits are manipulated by hand; the only bit look-up is the parity of the last significand
bit, to break ties to even.

Float -> int (``round_to_int``): in float64 (exact for every fp32/fp16/bf16 value), then
saturation to the integer range; NaN becomes 0.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

MODES = ("none", "rint", "round", "floor", "ceil", "trunc")
_MODE_CODES = {0: "none", 1: "rint", 2: "round", 3: "floor", 4: "ceil", 5: "trunc"}

_UINT_OF = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def normalize_mode(mode: str | int) -> str:
    """Map a PyPTO cast mode (name or int code) to its name; raise for unknown or 'odd'."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        if mode not in _MODE_CODES:
            raise ValueError(f"cast mode code {mode} is not supported (known: {_MODE_CODES})")
        return _MODE_CODES[mode]
    if mode not in MODES:
        raise ValueError(f"cast mode {mode!r} is not supported (known: {MODES})")
    return mode


def is_float_dtype(dt: np.dtype) -> bool:
    """True for numpy floats and the ml_dtypes floats (bfloat16 has numpy kind 'V')."""
    dt = np.dtype(dt)
    return dt.kind == "f" or dt == np.dtype(ml_dtypes.bfloat16)


def _overflow_value(dt: np.dtype) -> float:
    """The value one ulp past the largest finite number of ``dt`` (a power of two)."""
    fmax = float(ml_dtypes.finfo(dt).max)
    return float(np.ldexp(1.0, int(np.frexp(fmax)[1])))


def round_to_float(x: np.ndarray, dst: np.dtype, mode: str) -> np.ndarray:
    """Round the values of ``x`` to float dtype ``dst`` (see ``_round_to_float``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _round_to_float(x, dst, mode)


def _round_to_float(x: np.ndarray, dst: np.dtype, mode: str) -> np.ndarray:
    """Round the values of ``x`` (any float/int array) to float dtype ``dst`` with ``mode``.

    Single rounding of the exact source value. ``mode`` 'none' and 'rint' are ties-to-even.
    Zero results keep the sign of x. NaN stays NaN.
    """
    dst = np.dtype(dst)
    mode = "rint" if mode == "none" else mode
    # fp32/fp16/bf16 and 8/16-bit int sources: the library cast is one RNE rounding (the
    # value is exact in float32 first). Wider ints may be double-rounded: r0 is then adjacent.
    single = (is_float_dtype(x.dtype) and x.dtype.itemsize <= 4) or (
        x.dtype.kind in "iub" and x.dtype.itemsize <= 2
    )
    r0 = x.astype(dst) if single else x.astype(np.float64).astype(dst)
    if mode == "rint" and single:
        return r0
    x64 = x.astype(np.float64)
    r64 = r0.astype(np.float64)
    toward = np.where(r64 < x64, np.inf, -np.inf).astype(dst)
    nb = np.nextafter(r0, toward)
    below = r64 <= x64
    lo = np.where(below, r0, nb)
    hi = np.where(below, nb, r0)
    big = _overflow_value(dst)
    lo64 = np.clip(lo.astype(np.float64), -big, big)
    hi64 = np.clip(hi.astype(np.float64), -big, big)
    exact = r64 == x64
    if mode == "floor":
        out = lo
    elif mode == "ceil":
        out = hi
    elif mode == "trunc":
        out = np.where(x64 > 0, lo, hi)
    else:
        dl = x64 - lo64
        dh = hi64 - x64
        if mode == "rint":
            u = _UINT_OF[dst.itemsize]
            lo_even = ((lo.view(u) & 1) == 0) | (np.abs(lo64) == big)
            tie_pick = np.where(lo_even, lo, hi)
        else:  # round: ties away from zero
            tie_pick = np.where(x64 > 0, hi, lo)
        out = np.where(dl < dh, lo, np.where(dh < dl, hi, tie_pick))
    out = np.where(exact | np.isnan(x64), r0, out)
    zero = out.astype(np.float64) == 0.0
    if zero.any():
        out = np.where(zero, np.copysign(np.zeros((), dst), x64).astype(dst), out)
    return out.astype(dst, copy=False)


def round_to_int(x: np.ndarray, dst: np.dtype, mode: str) -> np.ndarray:
    """Round float values to integer dtype ``dst`` with ``mode``, saturating; NaN -> 0."""
    dst = np.dtype(dst)
    x64 = x.astype(np.float64)
    if mode == "rint":
        r = np.rint(x64)
    elif mode == "round":
        r = np.where(x64 >= 0, np.floor(x64 + 0.5), np.ceil(x64 - 0.5))
    elif mode == "floor":
        r = np.floor(x64)
    elif mode == "ceil":
        r = np.ceil(x64)
    else:  # trunc, none
        r = np.trunc(x64)
    info = np.iinfo(dst)
    r = np.clip(r, info.min, info.max)
    r = np.where(np.isnan(r), 0.0, r)
    return r.astype(dst)


def int_to_int(x: np.ndarray, dst: np.dtype) -> np.ndarray:
    """Integer narrowing/widening with saturation."""
    dst = np.dtype(dst)
    info = np.iinfo(dst)
    return np.clip(x.astype(np.int64), info.min, info.max).astype(dst)
