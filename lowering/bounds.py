"""How far a kernel's output may legitimately sit from dsref's: per stage and output, an allowed
interval ``[lo, hi]`` per element (docs/verdicts.md derives every bound).

A kernel computes a stage's semantics with the same rounding points as dsref, except that it
sums in its own order: an RMSNorm's ``Σx²`` in column chunks added in fp32, a projection's dot
in K chunks accumulated in fp32. Everything after such a sum is a chain of correctly rounded
fp32 operations, narrowings and casts, each *monotone* in each argument. So the set of values a
kernel can produce is bounded by evaluating dsref's own formula in **interval arithmetic**:

- a reduction returns the interval of every fp32 value the kernel's summation can produce
  (:func:`fsum`, :func:`dot`), from the operands' actual magnitudes and the accumulation model
  (:class:`Accum`): ``|ŝ − S| ≤ γ_k · Σ|P_i|`` for k exactly rounded partials ``P_i`` combined
  in fp32 in any order, ``γ_{n}·Σ|t_j|`` for n terms in any order, and exactly ``S`` when every
  partial sum in any order is representable (:func:`_exact_rows`). Where the order is the
  program's (``ordered``: the emulated kernels' ``matmul`` → ``matmul_acc`` and
  ``acc = add(acc, row_sum(chunk))`` chains) and the operands are points, the sum is the one
  value ``fl(…fl(fl(P_1) + fl(P_2))…)``: each ``fl(P_j)`` from our float64 partial, then fp32
  adds in chunk order — an interval only where a partial lies within float64 slack of an fp32
  rounding boundary;
- every later op maps intervals to intervals with the op's own rounding at each end
  (monotone ops: the image of ``[lo, hi]`` is ``[f(lo), f(hi)]``; products and differences take
  the extreme combinations). Where no reduction is involved the interval is a point: the stage
  is bitwise (RoPE, casts, quantisation, cache writes), −0.0 == +0.0.

Inputs may themselves be intervals (an intermediate nobody stored, e.g. ``normed`` under
``diff-files``): the same arithmetic carries them through. dsref's own output is one legitimate
evaluation, so it always lies inside — :mod:`lowering.diff` checks that on every judgement, which
keeps this module in step with dsref (and the tests compare both bitwise with zero slack). Under
the kernel's own order dsref (exact sum, rounded once) is a different order: there the check is
against each output's ``envelope``, the ordered chunk bound (``Accum.relaxed``).

Values are float64 arrays holding numbers on the fp32 (or a narrower) grid, as in dsref.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from dsref.v32 import owned as v32_owned
from lowering.backends import _rounding
from lowering.tolerances import EXP_ULPS, U32, U64, gamma

BF16 = np.dtype(ml_dtypes.bfloat16)
F8 = np.dtype(ml_dtypes.float8_e4m3fn)
_F32 = np.float32
AMAX_FLOOR = float(np.float32(1e-4))  # dsref.quant: all-zero rows
FP8_MAX, FP8_BLOCK = 448.0, 64  # dsref.quant.fp8_qdq_blocks (official V4 act_quant)


class Unmodelled(Exception):
    """The config asks for semantics this module has no bound for (a variant it does not know):
    the output is then judged by the pypto-lib ratio preset, and the report says so."""


# ---- accumulation models ---------------------------------------------------------------------


@dataclass(frozen=True)
class Accum:
    """How a kernel accumulates a stage's fp32 reduction of n terms.

    ``any``: fp32 additions of the terms in any order and grouping (hardware, torch goldens,
    kernel files whose tiling is unknown). ``chunks``: partials of ``width`` consecutive terms,
    each the exact partial rounded once to fp32 (the emulator's ``row_sum`` / ``matmul`` of one
    tile), combined by fp32 additions in any order. ``ordered``: the same partials added in
    index order, ``acc = fl(acc + p_j)`` — what a ``matmul`` → ``matmul_acc`` chain or an
    ``acc = add(acc, row_sum(chunk))`` loop does (each step needs the previous accumulator):
    over point operands the one value that chain gives (:func:`_partial32`,
    :func:`_chain_add`); ``interval=True`` (or interval operands): the ordered chunk bound of
    :func:`_finish`, which also holds for dsref's single rounding (the envelope).
    ``reference``: the exact sum rounded once (dsref itself; the zero-slack self-test)."""

    kind: str = "any"
    width: int = 0
    interval: bool = False  # ordered only: the chunk bound instead of the order's one value

    def __post_init__(self) -> None:
        if self.kind not in ("any", "chunks", "ordered", "reference"):
            raise ValueError(f"accumulation: {self.kind!r}")
        if self.kind in ("chunks", "ordered") and self.width < 1:
            raise ValueError(f"accumulation chunks of {self.width}")

    def describe(self) -> str:
        return {"any": "fp32, any order", "reference": "exact, rounded once",
                "chunks": f"fp32 over {self.width}-wide exact partials, any order"}.get(
            self.kind, f"fp32 over {self.width}-wide exact partials, in order"
            + (" (bound)" if self.interval else " (the order's value)"))

    @property
    def sequential(self) -> bool:
        """``ordered`` evaluated as the one fp32 value the order gives (point operands)."""
        return self.kind == "ordered" and not self.interval

    def relaxed(self) -> Accum:
        """The interval model of the same order: every value the ordered chain can return
        under the chunk bound (:func:`_finish`) — the envelope dsref's own output lies in."""
        return Accum(self.kind, self.width, True) if self.kind == "ordered" else self


ANY = Accum("any")
REFERENCE = Accum("reference")


def chunks(width: int) -> Accum:
    return Accum("chunks", int(width))


def ordered(width: int, interval: bool = False) -> Accum:
    return Accum("ordered", int(width), interval)


# ---- intervals -------------------------------------------------------------------------------


class Iv:
    """Per-element closed intervals ``[lo, hi]`` (float64 arrays); a point has ``hi is lo``.

    ``envelope`` (set by :func:`stage_bounds` on a stage output under a sequential ``ordered``
    accumulation): the interval of every value any summation order with the same chunks may
    produce — it contains dsref's own output (which rounds the exact sum once) where
    ``[lo, hi]``, the kernel's order, need not; :mod:`lowering.diff` self-checks against it."""

    __slots__ = ("lo", "hi", "envelope")

    def __init__(self, lo: Any, hi: Any = None) -> None:
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = self.lo if hi is None else np.asarray(hi, dtype=np.float64)
        self.envelope: Iv | None = None

    @property
    def is_point(self) -> bool:
        return self.hi is self.lo

    @property
    def shape(self) -> tuple[int, ...]:
        return self.lo.shape

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Iv:
        """A structural op (slice, reshape, gather) applied to both ends."""
        return Iv(fn(self.lo)) if self.is_point else Iv(fn(self.lo), fn(self.hi))

    def __getitem__(self, key: Any) -> Iv:
        return self.map(lambda a: a[key])

    def reshape(self, *shape: Any) -> Iv:
        return self.map(lambda a: a.reshape(*shape))


@dataclass
class RowsIv:
    """An output equal to ``base`` except on ``rows`` (axis 0; with ``lead`` = 2, flat indices
    over the first two axes), which lie in ``iv`` — a cache with a few rows written (the rest
    of the 33M-element V3.2 cache is never copied), dispatch_buf's (node, entry) slots."""

    base: np.ndarray
    rows: np.ndarray
    iv: Iv
    lead: int = 1


def point(x: Any) -> Iv:
    """A stored array (bf16, fp32, int8, int32) as a point interval (exact widening)."""
    return Iv(np.asarray(x).astype(np.float64))


def _iv(x: Any) -> Iv:
    return x if isinstance(x, Iv) else point(x)


class _Intervals(Mapping):
    """A stage's inputs as intervals, each widened to float64 when a bound first reads it: a
    weight the dot bound takes raw, or a cache the write bound never reads whole, is not
    copied (V3.2's two caches: 300 MB of float64 per call)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values
        self._done: dict[str, Iv] = {}

    def __getitem__(self, name: str) -> Iv:
        if name not in self._done:
            self._done[name] = _iv(self._values[name])
        return self._done[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _r32(x: np.ndarray) -> np.ndarray:
    """Round float64 to the nearest fp32 (ties to even): for + − × of fp32 values (exact in
    float64) and ÷, sqrt (correctly rounded in float64, 53 >= 2·24 + 2), one IEEE fp32 op."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, np.float64).astype(_F32).astype(np.float64)


def _up32(x: np.ndarray) -> np.ndarray:
    """The smallest fp32 value >= x."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.asarray(x, np.float64).astype(_F32)
        r = np.where(r.astype(np.float64) < x, np.nextafter(r, _F32(np.inf)), r)
    return r.astype(np.float64)


def _down32(x: np.ndarray) -> np.ndarray:
    """The largest fp32 value <= x."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.asarray(x, np.float64).astype(_F32)
        r = np.where(r.astype(np.float64) > x, np.nextafter(r, _F32(-np.inf)), r)
    return r.astype(np.float64)


def _mono(fn: Callable[[np.ndarray], np.ndarray], a: Iv, increasing: bool = True) -> Iv:
    if a.is_point:
        return Iv(fn(a.lo))
    lo, hi = fn(a.lo), fn(a.hi)
    return Iv(lo, hi) if increasing else Iv(hi, lo)


def _combos(op: Callable, a: Iv, b: Iv) -> Iv:
    """fp32 ``op`` over the extreme combinations (valid for × everywhere, ÷ by intervals that
    exclude 0): the rounding is monotone, so it commutes with min / max."""
    if a.is_point and b.is_point:
        return Iv(_r32(op(a.lo, b.lo)))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        vals = [op(x, y) for x in {id(a.lo): a.lo, id(a.hi): a.hi}.values()
                for y in {id(b.lo): b.lo, id(b.hi): b.hi}.values()]
    # folded pair by pair into fresh products: a reduce over the list would stack them first
    lo, hi = np.minimum(vals[0], vals[1]), np.maximum(vals[0], vals[1], out=vals[1])
    for v in vals[2:]:
        np.minimum(lo, v, out=lo)
        np.maximum(hi, v, out=hi)
    return Iv(_r32(lo), _r32(hi))


def add(a: Any, b: Any) -> Iv:
    a, b = _iv(a), _iv(b)
    if a.is_point and b.is_point:
        return Iv(_r32(a.lo + b.lo))
    return Iv(_r32(a.lo + b.lo), _r32(a.hi + b.hi))


def sub(a: Any, b: Any) -> Iv:
    a, b = _iv(a), _iv(b)
    if a.is_point and b.is_point:
        return Iv(_r32(a.lo - b.lo))
    return Iv(_r32(a.lo - b.hi), _r32(a.hi - b.lo))


def mul(a: Any, b: Any) -> Iv:
    return _combos(np.multiply, _iv(a), _iv(b))


def div(a: Any, b: Any) -> Iv:
    """True fp32 division; ``b`` must not contain 0 (it never does here: b >= eps or a count)."""
    return _combos(np.divide, _iv(a), _iv(b))


def sqrt(a: Iv) -> Iv:
    return _mono(lambda x: _r32(np.sqrt(x)), a)


def square(a: Iv) -> Iv:
    """``fl(x·x)``: [0, max] where the interval straddles 0."""
    if a.is_point:
        return Iv(_r32(a.lo * a.lo))
    lo2, hi2 = _r32(a.lo * a.lo), _r32(a.hi * a.hi)
    straddle = (a.lo < 0) & (a.hi > 0)
    return Iv(np.where(straddle, 0.0, np.minimum(lo2, hi2)), np.maximum(lo2, hi2))


def absolute(a: Iv) -> Iv:
    if a.is_point:
        return Iv(np.abs(a.lo))
    straddle = (a.lo < 0) & (a.hi > 0)
    return Iv(np.where(straddle, 0.0, np.minimum(np.abs(a.lo), np.abs(a.hi))),
              np.maximum(np.abs(a.lo), np.abs(a.hi)))


def maximum(a: Any, b: Any) -> Iv:
    a, b = _iv(a), _iv(b)
    if a.is_point and b.is_point:
        return Iv(np.maximum(a.lo, b.lo))
    return Iv(np.maximum(a.lo, b.lo), np.maximum(a.hi, b.hi))


def row_max(a: Iv) -> Iv:
    return _mono(lambda x: np.max(x, axis=-1, keepdims=True), a)


def concat(parts: list[Iv], axis: int = -1) -> Iv:
    if all(p.is_point for p in parts):
        return Iv(np.concatenate([p.lo for p in parts], axis=axis))
    return Iv(np.concatenate([p.lo for p in parts], axis=axis),
              np.concatenate([p.hi for p in parts], axis=axis))


def stack_last(a: Iv, b: Iv) -> Iv:
    """``[a0, b0, a1, b1, …]`` along the last axis (interleaved pairs)."""
    def st(x, y):
        return np.stack([x, y], axis=-1).reshape(*x.shape[:-1], -1)
    if a.is_point and b.is_point:
        return Iv(st(a.lo, b.lo))
    return Iv(st(a.lo, b.lo), st(a.hi, b.hi))


_MODES = {"rne": "rint", "rhaz": "round"}


def _narrow(x: np.ndarray, dtype: np.dtype, mode: str) -> np.ndarray:
    return _rounding.round_to_float(np.asarray(x, np.float64).astype(_F32), dtype,
                                    mode).astype(np.float64)


def rbf16(a: Iv, cast: str = "rne") -> Iv:
    """bf16 rounding with dsref's cast variant (``rne`` ties to even, ``rhaz`` ties away)."""
    mode = _MODES[cast]
    return _mono(lambda x: _narrow(x, BF16, mode), a)


def int8_codes(p: Iv) -> Iv:
    """dsref's ``int8(fp16(int32_rne(v)))``: rint, fp16 RNE, truncate, saturate — monotone."""
    def codes(x):
        n = np.rint(x)
        with np.errstate(over="ignore"):
            h = n.astype(np.float16).astype(np.float64)
        return np.clip(np.trunc(h), -128.0, 127.0)
    return _mono(codes, p)


# ---- reductions ------------------------------------------------------------------------------


_NO_LSB = np.iinfo(np.int16).max  # a zero's (or non-finite value's) lowest set bit: +inf


def _lsb_bf16_cols(w: np.ndarray, rows: int = 32) -> np.ndarray:
    """``min(lsb_exponent(w), axis=0, keepdims=True)`` of a stored bf16 matrix, from its bits
    (no float64 copy of a weight): a table lookup per bit pattern, ``rows`` rows at a time
    (the lookups of a block stay in cache; a whole weight at once was 3-6x slower)."""
    bits = np.ascontiguousarray(w).view(np.uint16)
    col = np.full(bits.shape[1], _NO_LSB, np.int16)
    block = np.empty((min(rows, bits.shape[0]), bits.shape[1]), np.int16)
    for r0 in range(0, bits.shape[0], rows):
        part = bits[r0:r0 + rows]
        lsb = np.take(_LSB_BF16, part, out=block[:len(part)])
        np.minimum(col, lsb.min(axis=0), out=col)
    return _as_exponent(col[None])


def lsb_exponent(x: np.ndarray) -> np.ndarray:
    """For each value, the exponent of its lowest set significand bit (x is a multiple of
    ``2**lsb``); +inf for zeros (and non-finite values). Values on the fp32 grid (every caller's)
    are read from their fp32 bits: ``x = sig · 2^(max(e, 1) − 150)`` with ``sig`` the 24-bit
    significand, whose trailing zeros are the exponent of its lowest set bit (a power of two,
    converted exactly to fp32). Others take float64's 53 bits by ``frexp``."""
    return _as_exponent(_lsb_codes(x))


def min_lsb(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.min(lsb_exponent(x), axis=axis, keepdims=True)``, the minimum taken over the int16
    codes (no float64 array of the size of ``x``: with the NaN-free fast path of
    :func:`_lsb_codes`, 0.20 -> 0.11 s over the V4 Flash q heads' bound, Intel Xeon)."""
    return _as_exponent(np.min(_lsb_codes(x), axis=axis, keepdims=True))


def _as_exponent(codes: np.ndarray) -> np.ndarray:
    """int16 lowest-set-bit codes as float64 exponents, :data:`_NO_LSB` as +inf."""
    out = codes.astype(np.float64)
    out[codes == _NO_LSB] = np.inf
    return out


def _lsb_codes(x: np.ndarray) -> np.ndarray:
    """:func:`lsb_exponent` as int16, :data:`_NO_LSB` for zeros and non-finite values (every
    exponent of a float64, -1074 .. 1023, fits)."""
    x = np.asarray(x)
    f = x.astype(np.float32)
    # the common case first: no NaN, so the cheaper comparison decides
    if x.dtype != np.float32 and not (np.array_equal(f, x)
                                      or np.array_equal(f, x, equal_nan=True)):
        m, e = np.frexp(x.astype(np.float64))
        mant = np.abs(m * 2.0**53).astype(np.int64)
        low = (mant & -mant).astype(np.float64)  # a power of two: frexp reads it exactly
        out = (e - 54 + np.frexp(low)[1]).astype(np.int16)
        out[(mant == 0) | ~np.isfinite(x)] = _NO_LSB
        return out
    bits = f.view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int16)
    sig = (bits & 0x7FFFFF) | ((e > 0).astype(np.uint32) << 23)
    low = sig & (~sig + np.uint32(1))
    out = (low.astype(np.float32).view(np.uint32) >> 23).astype(np.int16)  # 127 + its exponent
    out += np.maximum(e, 1)
    out -= 150 + 127
    out[(sig == 0) | (e == 0xFF)] = _NO_LSB
    return out


#: the exponent of the lowest set bit of every bf16 bit pattern (int16; :data:`_NO_LSB` for zeros
#: and non-finite values), from :func:`lsb_exponent` of its exact fp32 value
_LSB_BF16 = _lsb_codes(np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16)
                       .astype(np.float32))


def _exact_rows(lsb_min: np.ndarray, magnitude: np.ndarray, bits: int = 24) -> np.ndarray:
    """True where every partial sum of the terms, in any order and grouping, is representable
    in fp32 (then every summation is exact): all terms are multiples of ``2**lsb_min`` and
    ``Σ|t| <= 2**(24 + lsb_min)`` — each partial sum is ``m·2**lsb_min`` with ``|m| <= 2**24``.
    ``bits=53``: the same test for float64 (our sums and the emulator's)."""
    with np.errstate(over="ignore"):
        limit = np.ldexp(1.0, np.clip(bits + lsb_min, -1100, 1100).astype(np.int64))
    return np.isfinite(lsb_min) & (magnitude <= limit)


def _partial32(p: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ends of every fp32 value ``fl(P)`` of a chunk partial can take, given our float64
    partial ``p`` within ``err`` of the exact ``P`` (0 where float64 is exact): the emulator's
    own float64 sum is within ``err`` of ``P`` too, so it lies in ``[p − 2·err, p + 2·err]``
    (those ends widened by ``(|p| + 2·err)·2⁻⁵¹``, over twice what rounding ``p ± 2·err`` to
    float64 can take back: the float64 ends lie outside the exact ones, at a fraction of
    ``np.nextafter``'s per-element cost), and RNE to fp32 is monotone. One value unless ``P``
    is within ``2·err`` (≈ 2⁻⁴⁵·|P|) of an fp32 rounding boundary."""
    with np.errstate(over="ignore", invalid="ignore"):
        e = 2.0 * err
        e = np.where(e > 0, e + (np.abs(p) + e) * 2.0**-51, 0.0)
        return _r32(p - e), _r32(p + e)


def _chain_add(acc: tuple[np.ndarray, np.ndarray] | None, part: tuple[np.ndarray, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """One step ``acc = fl(acc + p_j)`` of the kernel's in-order chain, on both ends: fp32
    addition is monotone in each argument, so the low ends added in order bound every chain
    from below and the high ends from above (the first step, ``fl(0 + p_1) = p_1``)."""
    if acc is None:
        return part
    return _r32(acc[0] + part[0]), _r32(acc[1] + part[1])


def _chain_iv(acc: tuple[np.ndarray, np.ndarray]) -> Iv:
    lo, hi = acc
    return Iv(lo) if np.array_equal(lo, hi) else Iv(lo, hi)


def _finish(s_lo: np.ndarray, s_hi: np.ndarray, k: int, parts: np.ndarray, slack: np.ndarray,
            acc: Accum, exact: np.ndarray | None, prefix: np.ndarray | None = None) -> Iv:
    """The fp32 values a summation can return, given the float64 sums ``s_lo..s_hi`` of the
    terms (their own error at most ``slack``), ``k`` partials of magnitude sum ``parts`` and,
    for ``ordered``, the magnitude sum ``prefix`` of the running sums ``S_2 .. S_k``.

    ``ordered``: ``ŝ_j = fl(ŝ_{j−1} + fl(P_j))`` errs by ``e_j = e_{j−1} + (fl(P_j) − P_j) +
    ε_j(ŝ_{j−1} + fl(P_j))``, so ``|e_k| ≤ u(1+u)Σ|P_j| + u Σ_{j≥2}(|S_j| + |e_{j−1}|)``, and
    with ``|e_{j−1}| ≤ |e|_max``: ``|e_k| ≤ (u(1+u)Σ|P_j| + uΣ_{j≥2}|S_j|) / (1 − (k−1)u)``."""
    # our float64 sum and the emulator's each err by at most `slack`; "reference" is the
    # zero-slack model of dsref's own float64 sum rounded once (the self-test's bitwise mode)
    e = 0.0 if acc.kind == "reference" else 2.0 * slack
    if acc.kind == "reference" or k == 1:
        # one exactly rounded partial added to 0: the correctly rounded sum (± float64 slack)
        lo, hi = _r32(s_lo - e), _r32(s_hi + e)
    else:
        if acc.kind == "ordered" and prefix is not None:
            d = (U32 * (1 + U32) * (parts + e) + U32 * (prefix + k * e)) / (1 - k * U32) + e
        else:
            d = gamma(k) * (parts + e) + e
        lo, hi = _up32(s_lo - d), _down32(s_hi + d)
    if exact is not None and exact.any():
        lo = np.where(exact, s_lo, lo)
        hi = np.where(exact, s_hi, hi)
    return Iv(lo) if (exact is not None and exact.all() and s_lo is s_hi) else Iv(lo, hi)


def fsum(t: Iv, acc: Accum) -> Iv:
    """The fp32 sum over the last axis (keepdims) of fp32 terms ``t``, accumulated per ``acc``.

    ``any`` (n terms, exact fp32 values, any order): ``|ŝ − S| ≤ γ_{n−1}·Σ|t_j|``, used as
    ``γ_n``. ``chunks`` of w: k = ⌈n/w⌉ partials ``p_i = fl(P_i)`` combined in any order:
    ``|ŝ − S| ≤ γ_k·Σ|P_i|``; k = 1 is the correctly rounded sum. Rows whose terms pass
    :func:`_exact_rows` are exact. Plus the float64 slack of our own sums."""
    n = t.shape[-1]
    s_lo = np.sum(t.lo, axis=-1, keepdims=True)
    s_hi = s_lo if t.is_point else np.sum(t.hi, axis=-1, keepdims=True)
    mag = np.sum(_mag(t), axis=-1, keepdims=True)
    slack = gamma(n + 2, U64) * mag
    prefix = None
    if acc.kind in ("chunks", "ordered"):
        w = min(acc.width, n)
        k = -(-n // w)
        pad = [(0, 0)] * (t.lo.ndim - 1) + [(0, k * w - n)]

        def part(x):
            return np.sum(np.pad(x, pad).reshape(*x.shape[:-1], k, w), axis=-1)
        plo = part(t.lo)
        if acc.sequential and t.is_point:
            return _fsum_chain(t.lo, plo, w, k, part)
        phi = plo if t.is_point else part(t.hi)
        parts = np.sum(np.maximum(np.abs(plo), np.abs(phi)), axis=-1, keepdims=True)
        if acc.kind == "ordered":  # running sums S_2 .. S_k lie in [Σ lo, Σ hi] of each prefix
            clo, chi = np.cumsum(plo, axis=-1), np.cumsum(phi, axis=-1)
            prefix = np.sum(np.maximum(np.abs(clo), np.abs(chi))[..., 1:], axis=-1,
                            keepdims=True)
    else:
        k, parts = (n if acc.kind == "any" else 1), mag
    exact = None
    if t.is_point:
        lsb = min_lsb(t.lo, axis=-1)
        exact = _exact_rows(lsb, mag)
    return _finish(s_lo, s_hi, k, parts, slack, acc, exact, prefix)


def _fsum_chain(t: np.ndarray, parts: np.ndarray, w: int, k: int,
                part: Callable[[np.ndarray], np.ndarray]) -> Iv:
    """``ordered`` over point terms: the kernel's one value ``fl(…fl(fl(P_1) + fl(P_2))…)``.
    ``parts[..., j]`` are our float64 chunk sums; each errs by at most ``γ^{(53)}_{w+2}·Σ|t|``
    over its chunk, and by nothing where the chunk passes the float64 lowest-set-bit test."""
    mag = part(np.abs(t))
    pad = [(0, 0)] * (t.ndim - 1) + [(0, k * w - t.shape[-1])]
    lsb_c = _as_exponent(np.min(np.pad(_lsb_codes(t), pad, constant_values=_NO_LSB)
                                .reshape(*t.shape[:-1], k, w), axis=-1))
    err = np.where(_exact_rows(lsb_c, mag, 53), 0.0, gamma(w + 2, U64) * mag)
    acc = None
    for j in range(k):
        acc = _chain_add(acc, _partial32(parts[..., j:j + 1], err[..., j:j + 1]))
    return _chain_iv(acc)


def _mag(x: Iv) -> np.ndarray:
    """``max |v|`` over each element's interval."""
    return np.abs(x.lo) if x.is_point else np.maximum(np.abs(x.lo), np.abs(x.hi))


def _split(x: Iv) -> tuple[np.ndarray, np.ndarray | None]:
    """Midpoint and radius of an interval operand (radius None for a point)."""
    if x.is_point:
        return x.lo, None
    return 0.5 * x.lo + 0.5 * x.hi, 0.5 * x.hi - 0.5 * x.lo


#: elements of one float64 block of weight rows in :func:`dot` (8 MiB): a weight converted
#: whole was a fresh allocation per call, and first touches of fresh memory cost up to
#: 1 s/GB on the VMs we measure on (V3.2 scope 1 at full dims, cProfile, Intel Xeon: the
#: conversions were 0.45 s of dot's 0.94 s; dot 0.79 s after)
_BLOCK_ELEMS = 1 << 20


def dot(a: Iv, w: np.ndarray, acc: Accum) -> Iv:
    """The fp32 accumulator of ``a [M, K] @ w [K, N]`` (bf16 operands: every product exact in
    fp32), over every value ``a`` can take, accumulated per ``acc`` (see :func:`fsum`).

    The exact value is ``mid @ w ± rad @ |w|`` in float64 (one GEMM per K chunk and, for an
    interval ``a``, one for the radius); ``any`` needs ``Σ|a_j·w_j|`` — one more GEMM,
    ``|a| @ |w|``. Our float64 GEMMs err by at most ``γ^{(53)}_K·‖a‖₂‖w‖₂`` (Cauchy–Schwarz),
    added as slack."""
    m, kdim = a.shape
    mid, rad = _split(a)
    amag = _mag(a)
    width = min(acc.width, kdim) if acc.kind in ("chunks", "ordered") else kdim
    k = -(-kdim // width)
    s = np.zeros((m, w.shape[1]))
    r = np.zeros_like(s) if rad is not None else None
    parts = np.zeros_like(s)
    prefix = np.zeros_like(s)  # Σ_{j≥2} |S_j|, the running sums after each chunk
    cs = np.zeros_like(s)  # Σ over chunks of ‖a_chunk‖·‖w_chunk‖ >= Σ|a_j·w_j|
    lsb_w = np.full((1, w.shape[1]), np.inf)
    w_bits = np.asarray(w).dtype == BF16
    chain = None  # the kernel's in-order fp32 accumulator (sequential ``ordered``, point ``a``)
    n = w.shape[1]
    any_parts = np.zeros_like(s) if acc.kind == "any" else None  # |a| @ |w|
    step = max(16, _BLOCK_ELEMS // max(n, 1) // 16 * 16)  # weight rows per float64 block
    wbuf = np.empty((min(step, kdim), n))
    for c0 in range(0, kdim, width):
        c1 = min(c0 + width, kdim)
        p = np.zeros_like(s)
        rc = np.zeros_like(s) if rad is not None else None
        wsq = np.zeros(n)  # Σ_j w_j² per column
        for b0 in range(c0, c1, step):  # the chunk's GEMMs, a block of weight rows at a time
            b1 = min(b0 + step, c1)
            wb = wbuf[:b1 - b0]
            np.copyto(wb, w[b0:b1], casting="unsafe")  # exact: bf16 / fp32 in float64
            p += mid[:, b0:b1] @ wb
            wsq += np.einsum("ij,ij->j", wb, wb)
            if rc is not None or any_parts is not None:
                np.abs(wb, out=wb)
                if rc is not None:
                    rc += rad[:, b0:b1] @ wb
                if any_parts is not None:
                    any_parts += amag[:, b0:b1] @ wb
        s += p
        part = np.abs(p)
        if rc is not None:
            r += rc
            part += rc
        parts += part
        if c0 > 0:
            prefix += np.abs(s) if r is None else np.abs(s) + r
        na = np.sqrt(np.sum(amag[:, c0:c0 + width] ** 2, axis=1, keepdims=True))
        csc = na * np.sqrt(wsq)[None, :]
        cs += csc
        if rad is None:
            lsb_wc = (_lsb_bf16_cols(w[c0:c0 + width]) if w_bits
                      else min_lsb(np.asarray(w[c0:c1]), axis=0))
            lsb_w = np.minimum(lsb_w, lsb_wc)
            if acc.sequential:  # this chunk's partial: exact in float64, or within err of it
                lsb_c = min_lsb(mid[:, c0:c0 + width], axis=1)
                err = np.where(_exact_rows(lsb_c + lsb_wc, csc, 53), 0.0,
                               gamma(width + 4, U64) * 2.0 * csc)
                chain = _chain_add(chain, _partial32(p, err))
    if chain is not None:
        return _chain_iv(chain)
    slack = gamma(kdim + 4, U64) * 4.0 * cs
    s_lo, s_hi = (s, s) if r is None else (s - r, s + r)
    if acc.kind == "any":
        k, parts = kdim, any_parts
    elif acc.kind == "reference":
        k = 1
    exact = None
    if rad is None:
        lsb_a = min_lsb(a.lo, axis=1)
        exact = _exact_rows(lsb_a + lsb_w, np.minimum(cs, parts if acc.kind == "any" else cs))
    if r is None:
        s_hi = s_lo
    return _finish(s_lo, s_hi, k, parts, slack, acc, exact, prefix)


def idot(a: Iv, w: np.ndarray) -> Iv:
    """``a @ w`` of int8 codes: the int32 accumulator is exact in any order
    (``|Σ| <= K·128·128 < 2**31``); float64 holds every partial sum exactly."""
    mid, rad = _split(a)
    wf = np.asarray(w).astype(np.float64)
    s = mid @ wf
    if rad is None:
        return Iv(s)
    r = rad @ np.abs(wf)
    return Iv(s - r, s + r)


# ---- dsref's stage formulas, in intervals -------------------------------------------------------


def inv_rms(v: Iv, cfg: Any, acc: Accum) -> Iv:
    """dsref.rmsnorm.inv_rms: ``1 / sqrt(var + eps)``, ``var = Σfl(v²) / N`` (``mean``) or
    ``Σfl(v²) · f32(1/N)`` (``mul_inv``), every op one fp32 rounding."""
    return _inv_sqrt(_mean_of(fsum(square(v), acc), v.shape[-1], cfg.variance), cfg.eps)


def _inv_sqrt(var: Iv, eps: float) -> Iv:
    """dsref.rmsnorm._inv_sqrt: ``1 / sqrt(var + eps)``, each op one fp32 rounding."""
    return div(1.0, sqrt(add(var, float(np.float32(eps)))))


def _mean_of(s: Iv, n: int, variance: str) -> Iv:
    """dsref.rmsnorm.mean_of: ``s / n`` or ``s · f32(1/n)`` (``variance="mul_inv"``)."""
    if variance == "mean":
        return div(s, float(n))
    if variance == "mul_inv":
        return mul(s, float(np.float32(1.0 / n)))
    raise Unmodelled(f"variance={variance!r}")


def rms_norm(x: Iv, w: Iv, cfg: Any, acc: Accum, stats: Iv | None = None) -> Iv:
    """dsref.rmsnorm.rms_norm (``ds32`` | ``hf``; ``stats``: the variance of another array)."""
    normed = mul(x, inv_rms(x if stats is None else stats, cfg, acc))
    if cfg.rmsnorm == "ds32":
        return rbf16(mul(w, normed), cfg.cast)
    if cfg.rmsnorm == "hf":
        return rbf16(mul(rbf16(w), rbf16(normed, cfg.cast)), cfg.cast)
    raise Unmodelled(f"rmsnorm={cfg.rmsnorm!r}")


def rope_half(x: Iv, c: np.ndarray, s: np.ndarray) -> Iv:
    """dsref.rope.rope_half: ``lo' = x_lo·c_lo − x_hi·s_lo``, ``hi' = x_hi·c_hi + x_lo·s_hi``."""
    h = x.shape[-1] // 2
    xl, xh = x[..., :h], x[..., h:]
    lo = sub(mul(xl, c[..., :h]), mul(xh, s[..., :h]))
    hi = add(mul(xh, c[..., h:]), mul(xl, s[..., h:]))
    return concat([lo, hi])


def rope_interleaved(x: Iv, c: np.ndarray, s: np.ndarray, table: str) -> Iv:
    """dsref.rope.rope_interleaved: ``y_e = x_e·c − x_o·s``, ``y_o = x_e·s + x_o·c``."""
    h = x.shape[-1] // 2
    xe, xo = x[..., 0::2], x[..., 1::2]
    if table == "pair":
        ce = co = c[..., :h]
        se = so = s[..., :h]
    elif table == "element":
        ce, co, se, so = c[..., 0::2], c[..., 1::2], s[..., 0::2], s[..., 1::2]
    else:
        raise Unmodelled(f"rope_table={table!r}")
    return stack_last(sub(mul(xe, ce), mul(xo, se)), add(mul(xe, so), mul(xo, co)))


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


# -- V3.2 ----------------------------------------------------------------------------------------


def _v32_rotate(x: Iv, seq_lens: np.ndarray, cos: np.ndarray, sin: np.ndarray, cfg: Any,
                layout: str | None = None) -> Iv:
    pos = np.asarray(seq_lens).astype(np.int64) - 1
    extra = (1,) * (len(x.shape) - 2)
    c = _f64(cos)[pos].reshape(pos.shape + extra + (-1,))
    s = _f64(sin)[pos].reshape(pos.shape + extra + (-1,))
    layout = layout or cfg.rope_layout
    if layout == "half":
        y = rope_half(x, c, s)
    elif layout == "interleaved":
        y = rope_interleaved(x, c, s, "pair")
    else:
        raise Unmodelled(f"rope_layout={layout!r}")
    return rbf16(y, cfg.cast)


def _v32_proj(x: Iv, w: np.ndarray, cfg: Any, acc: Accum) -> Iv:
    return rbf16(dot(x, w, acc), cfg.cast)


def _q_norm_input(cfg: Any) -> str:
    return getattr(cfg, "q_norm_input", "bf16")


def v32_stage(stage: str, cfg: Any, ins: Mapping[str, Iv], acc: Accum, raw: Mapping) -> dict:
    if stage == "input_rmsnorm":
        return {"normed": rms_norm(ins["hidden_states"], ins["input_rms_weight"], cfg, acc)}
    if stage == "q_lora_proj":
        y = dot(ins["normed"], raw["wq_a"], acc)
        return {"qr_raw": y if _q_norm_input(cfg) == "fp32" else rbf16(y, cfg.cast)}
    if stage == "q_lora_rmsnorm":
        qr = ins["qr_raw"]
        if _q_norm_input(cfg) == "fp32":
            return {"qr_out": rms_norm(rbf16(qr, cfg.cast), ins["q_norm_weight"], cfg, acc,
                                       stats=qr)}
        return {"qr_out": rms_norm(qr, ins["q_norm_weight"], cfg, acc)}
    if stage == "q_head_proj":
        return {"q": _v32_proj(ins["qr_out"], raw["wq_b"], cfg, acc)}
    if stage == "kv_a_proj":
        return {"kv_a_out": _v32_proj(ins["normed"], raw["wkv_a"], cfg, acc)}
    if stage == "q_rope":
        q = ins["q"]
        b = q.shape[0]
        q3 = q.reshape(b, cfg.heads, cfg.head_dim)
        pe = _v32_rotate(q3[..., cfg.nope:], raw["seq_lens"], raw["rope_cos"], raw["rope_sin"], cfg)
        return {"q_nope_out": q3[..., :cfg.nope].reshape(b, -1), "q_pe_out": pe.reshape(b, -1)}
    if stage == "kv_rmsnorm":
        return {"kv_normed": rms_norm(ins["kv_a_out"][:, :cfg.kv_lora], ins["kv_norm_weight"],
                                      cfg, acc)}
    if stage == "decode_cache_write":
        rows = v32_owned(cfg, "kv_cache", raw)
        pe = _v32_rotate(ins["kv_a_out"][:, cfg.kv_lora:], raw["seq_lens"], raw["rope_cos"],
                         raw["rope_sin"], cfg)
        return {"kv_cache": RowsIv(raw["kv_cache"], rows, ins["kv_normed"]),
                "pe_cache": RowsIv(raw["pe_cache"], rows, pe)}
    if stage == "q_idx_proj":
        return {"q_idx": _v32_proj(ins["qr_out"], raw["wq_b_idx"], cfg, acc)}
    if stage == "k_idx_proj":
        x = ins["normed"] if cfg.index_input == "normed" else ins["hidden_states"]
        return {"k_idx": _v32_proj(x, raw["wk_idx"], cfg, acc)}
    if stage == "idx_hadamard":
        q = ins["q_idx_rope"]
        b = q.shape[0]
        qh = _v32_proj(q.reshape(b * cfg.index_heads, cfg.index_head_dim), raw["hadamard_q"],
                       cfg, acc)
        return {"q_idx_h": qh.reshape(b, -1),
                "k_idx_h": _v32_proj(ins["k_idx_rope"], raw["hadamard_k"], cfg, acc)}
    if stage == "k_idx_cache_write":
        rows = v32_owned(cfg, "k_cache_idx", raw)
        return {"k_cache_idx": RowsIv(raw["k_cache_idx"], rows, ins["k_idx_h"])}
    if stage in V32_SCOPE234:
        return V32_SCOPE234[stage](cfg, ins, acc, raw)
    raise KeyError(stage)




# -- V3.2 scopes 2-4: the indexer, top-k and sparse attention --------------------------------------


def bmm(a: Iv, b: Iv, acc: Accum, exact_products: bool = True) -> Iv:
    """The fp32 accumulator of the batched matmul ``a [..., M, K] @ b [..., K, N]`` over every
    value ``a`` and ``b`` can take (the per-head and per-entry contractions of scopes 2-4).

    Centre ``mid_a @ mid_b``, radius ``rad_a @ |mid_b| + (|mid_a| + rad_a) @ rad_b``; the sum
    errs by ``γ_k·Σ|a_j·b_j|`` (k partials: K for ``any``, ⌈K / width⌉ for chunks, 1 for one
    exactly rounded matmul or the reference). ``exact_products=False`` (an fp32 operand whose
    products with bf16 need more than 24 bits; each rounded once by a ``pl.mul``): one more
    rounding per term, ``γ_{K+1}`` in any order. Plus the float64 slack of our own GEMMs."""
    n = a.shape[-1]
    ma, ra = _split(a)
    mb, rb = _split(b)
    s = ma @ mb
    r = None if ra is None else ra @ np.abs(mb)
    if rb is not None:
        rr = (np.abs(ma) if ra is None else np.abs(ma) + ra) @ rb
        r = rr if r is None else r + rr
    mag = _mag(a) @ _mag(b)
    slack = gamma(n + 4, U64) * 4.0 * mag
    exact = None
    if ra is None and rb is None:
        # all products multiples of 2^lsb: our float64 sum is exact (no slack) where it fits 53
        # bits, and every fp32 summation order is exact where it fits 24 (then a point)
        lsb = min_lsb(ma, axis=-1) + min_lsb(mb, axis=-2)
        slack = np.where(_exact_rows(lsb, mag, 53), 0.0, slack)
        exact = _exact_rows(lsb, mag)
    if not exact_products and acc.kind != "reference":
        k, acc = n + 1, ANY
    else:
        k, acc = _partials(acc, n)
    s_lo, s_hi = (s, s) if r is None else (s - r, s + r)
    return _finish(s_lo, s_hi, k, mag, slack, acc, exact)


def _partials(acc: Accum, n: int) -> tuple[int, Accum]:
    """The number of exactly rounded partials ``acc`` makes of ``n`` terms (1: the reference's
    single rounding; ⌈n / width⌉ chunks; n in any order) and the model their fp32 sum follows
    (an ordered chain is bounded as any order: these sums have no point-valued chain)."""
    if acc.kind == "reference":
        return 1, acc
    if acc.kind in ("chunks", "ordered"):
        return -(-n // min(acc.width, n)), ANY if acc.kind == "ordered" else acc
    return n, acc


def _rows(x: Any, rows: np.ndarray) -> Iv:
    """Rows ``rows`` (axis 0) of a stored array, an interval or a cache with a few rows known
    only within bounds (:class:`RowsIv`), as intervals (a bf16 cache carried as ``uint16``
    words is read as bf16)."""
    if isinstance(x, Iv):
        return x[rows]
    if not isinstance(x, RowsIv):
        return Iv(_stored(np.asarray(x)[rows]))
    lo = _stored(x.base[rows])
    hi = lo.copy()
    at = np.full(np.shape(x.base)[0], -1, np.int64)
    at[x.rows] = np.arange(np.size(x.rows))
    hit = at[rows]
    known = hit >= 0
    lo[known] = np.broadcast_to(x.iv.lo, (np.size(x.rows), *lo.shape[1:]))[hit[known]]
    hi[known] = np.broadcast_to(x.iv.hi, (np.size(x.rows), *hi.shape[1:]))[hit[known]]
    return Iv(lo) if x.iv.is_point else Iv(lo, hi)


def _source(ins: Mapping[str, Iv], raw: Mapping, name: str) -> Any:
    """An input as given (a stored array, a :class:`RowsIv` cache, a :class:`TopkSet`), or
    its interval: a cache is read a few rows at a time, never widened whole."""
    return raw[name] if name in raw else ins[name]


def _stored(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return (x.view(BF16) if x.dtype == np.uint16 else x).astype(np.float64)


def _index_x(cfg: Any, ins: Mapping[str, Iv]) -> Iv:
    return ins["normed"] if cfg.index_input == "normed" else ins["hidden_states"]


def _k_idx_layernorm(cfg, ins, acc, raw):
    """dsref.rmsnorm.layer_norm: mean, centre, biased variance, ``1 / sqrt(var + eps)``,
    weight, bias, bf16 — each fp32 op one rounding, both sums per ``acc``."""
    x, n = ins["k_idx"], ins["k_idx"].shape[-1]
    c = sub(x, _mean_of(fsum(x, acc), n, cfg.variance))
    inv = _inv_sqrt(_mean_of(fsum(square(c), acc), n, cfg.variance), cfg.eps)
    y = add(mul(mul(c, inv), ins["k_norm_weight"]), ins["k_norm_bias"])
    return {"k_idx_normed": rbf16(y, cfg.cast)}


def _idx_rope(cfg, ins, acc, raw):
    """RoPE (half layout) of the first ROPE dims of every index head and of k: bitwise."""
    q, k, r = ins["q_idx"], ins["k_idx_normed"], cfg.rope
    b = q.shape[0]
    q3 = q.reshape(b, cfg.index_heads, cfg.index_head_dim)
    tables = raw["seq_lens"], raw["rope_cos"], raw["rope_sin"]
    qp = _v32_rotate(q3[..., :r], *tables, cfg, layout="half")
    kp = _v32_rotate(k[:, :r], *tables, cfg, layout="half")
    return {"q_idx_rope": concat([qp, q3[..., r:]]).reshape(b, -1),
            "k_idx_rope": concat([kp, k[:, r:]])}


def _idx_weights(cfg, ins, acc, raw):
    """dsref.v32.idx_weights: ``x @ bf16(Wp)`` then the head scales (bf16 chain or one fp32
    factor)."""
    wp = np.asarray(raw["weights_proj"]).astype(np.float32)
    wp = _narrow(wp, BF16, _MODES[cfg.cast]).astype(BF16)
    y = dot(_index_x(cfg, ins), wp, acc)
    ih, d = cfg.index_heads, cfg.index_head_dim
    if cfg.index_weights == "fp32":
        return {"idx_weights": mul(y, float(np.float32(ih ** -0.5 * d ** -0.5)))}
    if cfg.index_weights != "bf16":
        raise Unmodelled(f"index_weights={cfg.index_weights!r}")
    w = rbf16(mul(rbf16(y, cfg.cast), float(np.float32(ih ** -0.5))), cfg.cast)
    return {"idx_weights": mul(w, float(np.float32(d ** -0.5)))}


def _keys(cfg: Any, cache: Any, batch: int) -> Iv:
    """Every cache row ``b·MAX_SEQ + t`` of each entry, ``[B, MAX_SEQ, ID]``."""
    return _rows(cache, np.arange(batch * cfg.max_seq)).reshape(batch, cfg.max_seq, -1)


def _index_score(cfg, ins, acc, raw):
    """dsref.v32.index_score in intervals: ``relu`` per-head logits, ReLU, × w, summed over
    heads; ``reduce_q`` one bf16 query ``Σ_h q_h·w_h``, then ``q_red @ k_t``. Every reduction
    in any order (the kernel's head and ID sums are two orders one tiling field cannot name)."""
    from dsref.v32 import NO_SCORE

    acc = ANY if acc.kind != "reference" else acc
    q, w = ins["q_idx_h"], ins["idx_weights"]
    b, d = q.shape[0], cfg.index_head_dim
    keys = _keys(cfg, _source(ins, raw, "k_cache_idx"), b)
    kt = keys.map(lambda a: a.swapaxes(1, 2))  # [B, ID, S]
    q3 = q.reshape(b, cfg.index_heads, d)
    w3 = w.reshape(b, cfg.index_heads, 1)
    if cfg.index_score == "relu":
        logits = maximum(bmm(q3, kt, acc), 0.0)  # [B, IH, S]
        score = fsum(mul(logits, w3).map(lambda a: a.swapaxes(1, 2)), acc)[..., 0]
    elif cfg.index_score == "reduce_q":
        q_red = rbf16(fsum(mul(q3, w3).map(lambda a: a.swapaxes(1, 2)), acc), cfg.cast)
        score = bmm(q_red.reshape(b, 1, d), kt, acc)[:, 0, :]
    else:
        raise Unmodelled(f"index_score={cfg.index_score!r}")
    live = np.arange(cfg.max_seq)[None, :] < np.asarray(raw["seq_lens"])[:, None]
    return {"index_scores": score.map(lambda a: np.where(live, a, NO_SCORE))}


@dataclass
class TopkSet:
    """The top-k selections a kernel may legitimately make (``index_topk``'s bound): per entry
    ``b``, ``n_b = min(TOPK, ctx_b)`` distinct positions ``t < ctx_b`` in any order, then
    ``NO_INDEX`` in the later slots, such that some scores inside their intervals
    ``[lo_t, hi_t]`` rank them first — ``min hi`` over the chosen ``≥ max lo`` over the rest.
    Ties and scores within rounding of the k-th are not decided: another of two equal scores
    is as right."""

    lo: np.ndarray  # [B, S] (past the context: never chosen)
    hi: np.ndarray
    ctx: np.ndarray  # [B]
    slots: int  # TOPK

    @property
    def n(self) -> np.ndarray:
        return np.minimum(self.ctx, self.slots)

    def problems(self, got: np.ndarray) -> list[tuple[int, int, str]]:
        """``(b, slot, why)`` for every entry whose selection no score inside the bounds
        gives (empty: a legitimate top-k)."""
        from dsref.v32 import NO_INDEX

        out = []
        got = np.asarray(got).astype(np.int64)
        for b in range(got.shape[0]):
            n, ctx = int(self.n[b]), int(self.ctx[b])
            row, tail = got[b, :n], got[b, n:]
            if (tail != NO_INDEX).any():
                out.append((b, n + int(np.flatnonzero(tail != NO_INDEX)[0]),
                            f"a slot past the first {n} holds {int(tail[tail != NO_INDEX][0])}, "
                            "not NO_INDEX"))
                continue
            bad = np.flatnonzero((row < 0) | (row >= ctx))
            if bad.size:
                out.append((b, int(bad[0]), f"position {int(row[bad[0]])} outside the context "
                                            f"[0, {ctx})"))
                continue
            _, first = np.unique(row, return_index=True)
            if first.size < n:
                dup = sorted(set(range(n)) - set(first.tolist()))[0]
                out.append((b, dup, f"position {int(row[dup])} chosen twice"))
                continue
            rest = np.setdiff1d(np.arange(ctx), row)
            if rest.size:
                j = int(np.argmin(self.hi[b, row]))
                t = int(rest[np.argmax(self.lo[b, rest])])
                if self.hi[b, row[j]] < self.lo[b, t]:
                    out.append((b, j, f"position {int(row[j])} (score ≤ {self.hi[b, row[j]]:.9g}) "
                                      f"chosen over {t} (score ≥ {self.lo[b, t]:.9g})"))
        return out

    def split(self, b: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Entry ``b``'s positions every allowed selection holds (``sure``), those some allowed
        selection holds (``maybe``), and how many of the latter a selection takes."""
        n, ctx = int(self.n[b]), int(self.ctx[b])
        if n >= ctx:
            return np.arange(ctx), np.arange(0), 0
        lo, hi = self.lo[b, :ctx], self.hi[b, :ctx]
        lo_s, hi_s = np.sort(lo)[::-1], np.sort(hi)[::-1]
        # the n-th largest lo (hi) among the others: the (n+1)-th overall when t is in the top n
        lo_n = np.where(lo >= lo_s[n - 1], lo_s[n], lo_s[n - 1])
        hi_n = np.where(hi >= hi_s[n - 1], hi_s[n], hi_s[n - 1])
        sure = np.flatnonzero(lo > hi_n)
        maybe = np.setdiff1d(np.flatnonzero(hi >= lo_n), sure)
        need = n - sure.size
        if need == maybe.size:
            return np.sort(np.concatenate([sure, maybe])), np.arange(0), 0
        return sure, maybe, need


def _index_topk(cfg, ins, acc, raw):
    s = ins["index_scores"]
    return {"topk_idx": TopkSet(s.lo, s.hi, np.asarray(raw["seq_lens"]).astype(np.int64),
                                cfg.index_topk)}


def _q_nope_latent(cfg, ins, acc, raw):
    """Per head ``q_nope_h @ w_q_nope_to_latent[h]``, bf16 (``q_latent="bf16"``) or fp32."""
    q = ins["q_nope_out"]
    b = q.shape[0]
    qh = q.reshape(b, cfg.heads, cfg.nope).map(lambda a: a.swapaxes(0, 1))  # [H, B, NOPE]
    lat = bmm(qh, point(raw["w_q_nope_to_latent"]), acc)  # [H, B, KL]
    if cfg.q_latent == "bf16":
        lat = rbf16(lat, cfg.cast)
    elif cfg.q_latent != "fp32":
        raise Unmodelled(f"q_latent={cfg.q_latent!r}")
    return {"q_latent": lat.map(lambda a: a.swapaxes(0, 1).reshape(b, -1))}


def _softmax_weights(sc: Iv, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The unnormalised softmax weights a kernel may compute from scores ``sc [..., n]``, up to
    one common factor: ``[lo, hi]`` around ``exp(s − M)``, ``M`` the largest upper end.

    A kernel computes ``exp(fl(s_j − m))`` with ``m`` its running (or final) maximum: ``EXP_ULPS``
    for the exp, the subtraction's rounding ``u·|s_j − m|``; online, each of up to ``steps − 1``
    rescales multiplies the earlier weights by one more exp (of ``fl(m_old − m_new)``, these
    arguments summing to at most the score span) and one more rounding. Underflow: ±2⁻¹²⁶.
    ``steps=0``: dsref's own float64 exp (the zero-slack model)."""
    top = np.max(sc.hi, axis=-1, keepdims=True)
    if steps == 0:
        kappa, tiny = 8 * U64, 0.0
    else:
        span = top - np.min(sc.lo, axis=-1, keepdims=True)
        arg = (top - sc.lo) + (span if steps > 1 else 0.0)
        kappa = np.expm1(steps * (np.log1p(EXP_ULPS * 2.0**-23) + np.log1p(U32)) + U32 * arg)
        kappa, tiny = kappa + 8 * U64, 2.0**-126
    w_lo = np.maximum(np.exp(sc.lo - top) * (1 - kappa) - tiny, 0.0)
    return w_lo, np.exp(sc.hi - top) * (1 + kappa) + tiny


def _quotient(n_lo: np.ndarray, n_hi: np.ndarray, d_lo: np.ndarray, d_hi: np.ndarray,
              hull: tuple[np.ndarray, np.ndarray] | None = None) -> Iv:
    """``fl(n / d)`` for every ``n`` in ``[n_lo, n_hi]``, ``d`` in ``[d_lo, d_hi]``: the extreme
    float64 quotients, nudged outward by their own rounding, then RNE to fp32 — intersected
    with ``hull`` (where the quotient is known to lie anyway), which alone bounds the elements
    whose ``d_lo`` is not positive."""
    pos = d_lo > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.stack(np.broadcast_arrays(n_lo / d_lo, n_lo / d_hi, n_hi / d_lo, n_hi / d_hi))
    nudge = 4 * U64 * np.max(np.abs(q), axis=0)
    lo, hi = np.min(q, axis=0) - nudge, np.max(q, axis=0) + nudge
    if hull is None:
        if not pos.all():
            raise Unmodelled("the bounds leave a divisor unbounded below")
        return Iv(_r32(lo), _r32(hi))
    lo = np.where(pos, np.maximum(lo, hull[0]), hull[0])
    hi = np.where(pos, np.minimum(hi, hull[1]), hull[1])
    return Iv(_r32(lo), _r32(hi))


def _pick_sums(lo: np.ndarray, hi: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Over any ``need`` of the terms along axis −2 (rows a selection may or may not hold): the
    smallest sum of their low ends and the largest of their high ends."""
    if lo.shape[-2] == 0:
        return np.zeros(lo.shape[:-2] + lo.shape[-1:]), np.zeros(hi.shape[:-2] + hi.shape[-1:])
    k = lo.shape[-2]
    return (np.sort(lo, axis=-2)[..., :need, :].sum(-2),
            np.sort(hi, axis=-2)[..., k - need:, :].sum(-2))


def _weighted(w_lo: np.ndarray, w_hi: np.ndarray, v: Iv, sure: int, need: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Σ_j w_j·v_j`` over the ``sure`` first rows and any ``need`` of the rest, for every
    ``w_j`` in ``[w_lo, w_hi]`` (``w >= 0``) and ``v_j`` in ``v``: ``(lo, hi, Σ|w·v|)`` in
    float64 (exact sums; the caller adds the fp32 error)."""
    vm, vr = _split(v)
    va = _mag(v)
    wm, wr = 0.5 * (w_lo[..., :sure] + w_hi[..., :sure]), 0.5 * (w_hi[..., :sure] - w_lo[..., :sure])
    c = wm @ vm[:sure]
    r = wr @ np.abs(vm[:sure]) + (0.0 if vr is None else w_hi[..., :sure] @ vr[:sure])
    v_lo, v_hi = v.lo[sure:], v.hi[sure:]
    a, b = w_lo[..., sure:, None], w_hi[..., sure:, None]
    t_lo = np.minimum(a * v_lo, b * v_lo)  # w >= 0: the low end of w·v at w_lo or w_hi
    t_hi = np.maximum(a * v_hi, b * v_hi)
    p_lo, p_hi = _pick_sums(t_lo, t_hi, need)
    mag = w_hi @ va
    return c - r + p_lo, c + r + p_hi, mag


def _attend(cfg: Any, ql: Iv, qp: Iv, kv: Iv, pe: Iv, acc: Accum, sure: int, need: int) -> Iv:
    """Sparse attention of one entry's heads ``ql [H, KL]``, ``qp [H, R]`` over cache rows
    ``kv [n, KL]``, ``pe [n, R]`` — the first ``sure`` selected, and any ``need`` of the rest
    (a top-k known only within bounds) — to bf16 ``[H, KL]`` (dsref.v32.sparse_attn, bounded).

    ``attn_probs="bf16"``: ``p_j = bf16(fl(e_j / Σe))`` from the weights' bounds and the sum's,
    then ``Σ p_j·kv_j`` per ``acc``. ``"exact"``: ``Σ_j w_j·kv_j / Σ_j w_j`` over weights in
    their bounds (online: rescaled up to n times), each fp32 sum within ``γ_{2n+4}`` of its
    magnitude (a product, an add and a rescale per step), then the division and bf16."""
    from dsref.v32 import attn_scale

    ref = acc.kind == "reference"
    s_nope = bmm(ql, kv.map(lambda a: a.T), acc, exact_products=cfg.q_latent == "bf16")
    s_pe = bmm(qp, pe.map(lambda a: a.T), acc)
    sc = mul(add(s_nope, s_pe), float(attn_scale(cfg)))  # [H, rows]
    n = sure + need
    g = n * U64 if ref else gamma(2 * n + 4)  # the sums: dsref's float64, or a kernel's fp32
    if cfg.attn_probs not in ("bf16", "exact"):
        raise Unmodelled(f"attn_probs={cfg.attn_probs!r}")
    w_lo, w_hi = _softmax_weights(sc, 0 if ref else (1 if cfg.attn_probs == "bf16" else n))
    d_lo, d_hi = _pick_sums(w_lo[..., None], w_hi[..., None], need)
    den_lo = (np.sum(w_lo[..., :sure], -1, keepdims=True) + d_lo) * (1 - g)
    den_hi = (np.sum(w_hi[..., :sure], -1, keepdims=True) + d_hi) * (1 + g)
    if cfg.attn_probs == "bf16":  # a probability lies in [0, 1] whatever the weights
        p = rbf16(_quotient(w_lo, w_hi, den_lo, den_hi, (np.zeros(1), np.ones(1))), cfg.cast)
        s_lo, s_hi, mag = _weighted(p.lo, p.hi, kv, sure, need)
        k, model = _partials(acc, max(n, 1))
        out = _finish(s_lo, s_hi, k, mag, gamma(n + 4, U64) * 4.0 * mag, model, None)
        return rbf16(out, cfg.cast)
    n_lo, n_hi, mag = _weighted(w_lo, w_hi, kv, sure, need)
    slack = (g + 4 * n * U64) * mag
    # a weighted mean with positive weights lies between its rows' smallest and largest
    # values, whatever the weights: within 3·g of the largest |kv| once the sums are rounded
    v_lo, v_hi = np.min(kv.lo, axis=0), np.max(kv.hi, axis=0)
    edge = (3 * g + 8 * U64) * np.maximum(np.abs(v_lo), np.abs(v_hi))
    return rbf16(_quotient(n_lo - slack, n_hi + slack, den_lo, den_hi,
                           (v_lo - edge, v_hi + edge)), cfg.cast)


def _sparse_attn(cfg, ins, acc, raw):
    """dsref.v32.sparse_attn, per entry over its selected rows; when the top-k is known only
    within bounds (a :class:`TopkSet`), over every selection it allows."""
    ql, qp = ins["q_latent"], ins["q_pe_out"]
    b, h = ql.shape[0], cfg.heads
    sel = _source(ins, raw, "topk_idx")
    ctx = np.asarray(raw["seq_lens"]).astype(np.int64)
    kv_src, pe_src = _source(ins, raw, "kv_cache"), _source(ins, raw, "pe_cache")
    lo = np.empty((b, h, cfg.kv_lora))
    hi = np.empty_like(lo)
    for i in range(b):
        if isinstance(sel, TopkSet):
            sure, maybe, need = sel.split(i)
            if maybe.size > MAYBE_ROWS:
                raise Unmodelled(f"entry {i}: {maybe.size} cache rows may or may not be in the "
                                 f"top-k within the score bounds (the bound takes {MAYBE_ROWS})")
        else:
            sure = np.asarray(sel)[i, :int(min(cfg.index_topk, ctx[i]))].astype(np.int64)
            maybe, need = np.arange(0), 0
        rows = i * cfg.max_seq + np.concatenate([sure, maybe])
        y = _attend(cfg, ql[i].reshape(h, cfg.kv_lora), qp[i].reshape(h, cfg.rope),
                    _rows(kv_src, rows), _rows(pe_src, rows), acc, sure.size, need)
        lo[i], hi[i] = y.lo, y.hi
    return {"ctx_latent": Iv(lo.reshape(b, -1), hi.reshape(b, -1))}


#: the most uncertain top-k rows an entry's sparse-attention bound takes (memory: H × rows × KL)
MAYBE_ROWS = 256


def _v_proj(cfg, ins, acc, raw):
    """Per head ``bf16(ctx_h @ w_latent_to_v[h])``."""
    c = ins["ctx_latent"]
    b = c.shape[0]
    ch = c.reshape(b, cfg.heads, cfg.kv_lora).map(lambda a: a.swapaxes(0, 1))
    v = rbf16(bmm(ch, point(raw["w_latent_to_v"]), acc), cfg.cast)
    return {"attn_front": v.map(lambda a: a.swapaxes(0, 1).reshape(b, -1))}


def _dispatch(cfg, ins, acc, raw):
    """``dispatch_buf[(b + layer) % EP, b] = attn_front[b]``: the slots as rows of the
    ``[EP·B, H·V]`` view."""
    node, b = v32_owned(cfg, "dispatch_buf", raw)
    nb = np.shape(raw["dispatch_buf"])[1]
    return {"dispatch_buf": RowsIv(raw["dispatch_buf"], node * nb + b, ins["attn_front"], lead=2)}


V32_SCOPE234: dict[str, Callable] = {
    "k_idx_layernorm": _k_idx_layernorm, "idx_rope": _idx_rope, "idx_weights": _idx_weights,
    "index_score": _index_score, "index_topk": _index_topk, "q_nope_latent": _q_nope_latent,
    "sparse_attn": _sparse_attn, "v_proj": _v_proj, "dispatch": _dispatch,
}


# -- V4 ------------------------------------------------------------------------------------------


def _v4_rotate(pe: Iv, cos: np.ndarray, sin: np.ndarray, cfg: Any) -> Iv:
    extra = (1,) * (len(pe.shape) - 2)
    c = _f64(cos).reshape(np.shape(cos)[:1] + extra + (-1,))
    s = _f64(sin).reshape(np.shape(sin)[:1] + extra + (-1,))
    return rbf16(rope_interleaved(pe, c, s, cfg.rope_table), cfg.cast)


def fp8_qdq_blocks(v: Iv, cast: str) -> Iv:
    """dsref.quant.fp8_qdq_blocks: per 64-column block ``s = 2**ceil(log2(fl(amax·f32(1/448))))``,
    ``y = bf16(fl(e4m3(clamp(v / s)) · s))`` — monotone in v, and in s for fixed v."""
    *lead, n = v.shape
    blocks = v.reshape(*lead, n // FP8_BLOCK, FP8_BLOCK)
    amax = maximum(row_max(absolute(blocks)), AMAX_FLOOR)

    def pow2_ceil(x):
        m, e = np.frexp(x)
        return np.ldexp(1.0, np.where(m == 0.5, e - 1, e))
    s = _mono(pow2_ceil, mul(amax, float(np.float32(1.0 / FP8_MAX))))
    q = div(blocks, s)
    q = _mono(lambda x: np.clip(x, -FP8_MAX, FP8_MAX), q)
    codes = _mono(lambda x: x.astype(_F32).astype(F8).astype(np.float64), q)
    return rbf16(mul(codes, s), cast).reshape(v.shape)


def head_norm_bf16(q: Iv, cfg: Any, acc: Accum) -> Iv:
    """dsref.rmsnorm.head_norm_bf16: ``bf16(q · bf16(1/sqrt(bf16(bf16(mean(bf16(q²))) + eps))))``."""
    sq = rbf16(square(q), cfg.cast)
    s, n = fsum(sq, acc), q.shape[-1]
    if cfg.variance == "mean":
        mean = div(s, float(n))
    elif cfg.variance == "mul_inv":
        mean = mul(s, float(np.float32(1.0 / n)))
    else:
        raise Unmodelled(f"variance={cfg.variance!r}")
    ve = rbf16(add(rbf16(mean, cfg.cast), float(np.float32(cfg.eps))), cfg.cast)
    r = rbf16(div(1.0, sqrt(ve)), cfg.cast)
    return rbf16(mul(q, r), cfg.cast)


def _norm_rope(v: Iv, gamma_: Iv | None, cos: np.ndarray, sin: np.ndarray, cfg: Any, acc: Accum,
               fp8_nope: bool = False) -> Iv:
    inv = inv_rms(v, cfg, acc)

    def normed(cols: slice) -> Iv:
        n = mul(v[..., cols], inv)
        return n if gamma_ is None else mul(n, gamma_[..., cols])
    nope = rbf16(normed(slice(None, cfg.nope)), cfg.cast)
    pe = normed(slice(cfg.nope, None))
    if cfg.rope_preround:
        pe = rbf16(pe, cfg.cast)
    if fp8_nope:
        nope = fp8_qdq_blocks(nope, cfg.cast)
    return concat([nope, _v4_rotate(pe, cos, sin, cfg)])


def _v4_proj(x: Iv, w: np.ndarray, cfg: Any, acc: Accum) -> Iv:
    y = dot(x, w, acc)
    return rbf16(y, cfg.cast) if getattr(cfg, "proj_out", "fp32") == "bf16" else y


def quant_int8(v: Iv, form: str = "div") -> tuple[Iv, Iv]:
    """dsref.quant.quant_int8: ``amax = max(max|v|, 1e-4)``, ``sq = 127/amax`` (``mul_recip``:
    ``127·fl(1/amax)``), ``scale = 1/sq``, ``codes = int8_codes(fl(v·sq))``."""
    amax = maximum(row_max(absolute(v)), AMAX_FLOOR)
    if form == "div":
        sq = div(127.0, amax)
    elif form == "mul_recip":
        sq = mul(127.0, div(1.0, amax))
    else:
        raise Unmodelled(f"qr_scale_form={form!r}")
    return int8_codes(mul(v, sq)), div(1.0, sq)


def v4_stage(stage: str, cfg: Any, ins: Mapping[str, Iv], acc: Accum, raw: Mapping) -> dict:
    if stage == "attn_norm":
        x = ins["x"]
        t = x.shape[0] * x.shape[1]
        return {"tok": rms_norm(x.reshape(t, -1), ins["norm_w"], cfg, acc)}
    if stage == "qr_proj_matmul":
        return {"qr32": _v4_proj(ins["tok"], raw["wq_a"], cfg, acc)}
    if stage == "qr_rms":
        v = ins["qr32"]
        qrn = mul(mul(v, inv_rms(v, cfg, acc)), ins["gamma_cq"])
        return {"qr_norm": rbf16(qrn, cfg.cast) if cfg.qr_prequant_round else qrn}
    if stage == "qr_quant":
        codes, scale = quant_int8(ins["qr_norm"], getattr(cfg, "qr_scale_form", "div"))
        return {"qr": codes, "qr_scale": scale}
    if stage == "qproj_matmul":
        qr = ins["qr"]
        a = idot(qr, raw["wq_b"])
        if qr.shape[-1] * 128 * 128 > 2**24:
            a = _mono(_r32, a)
        return {"qf": mul(mul(a, ins["qr_scale"]), ins["wq_b_scale"][None, :])}
    if stage == "q_head_rms_rope":
        qf = ins["qf"]
        v = qf.reshape(qf.shape[0], cfg.heads, cfg.head_dim)
        if getattr(cfg, "q_head_norm", "fp32") == "bf16":
            n = head_norm_bf16(rbf16(v, cfg.cast), cfg, acc)
            q = concat([n[..., :cfg.nope], _v4_rotate(n[..., cfg.nope:], raw["rope_cos"],
                                                        raw["rope_sin"], cfg)])
        else:
            q = _norm_rope(v, None, raw["rope_cos"], raw["rope_sin"], cfg, acc)
        return {"q": q}
    if stage == "kv_proj_matmul":
        return {"kv32": _v4_proj(ins["tok"], raw["wkv"], cfg, acc)}
    if stage == "kv_rms_rope":
        return {"kv": _norm_rope(ins["kv32"], ins["gamma_ckv"], raw["rope_cos"], raw["rope_sin"],
                                 cfg, acc, fp8_nope=getattr(cfg, "kv_nope_fp8", False))}
    raise KeyError(stage)


# ---- the stage table -----------------------------------------------------------------------------

MODELS = {"v32.decode_front": v32_stage, "v4.qkv_proj_rope": v4_stage}

#: stages with no reduction whose order a kernel chooses: bitwise for exact inputs
EXACT_STAGES = {"q_rope", "decode_cache_write", "qr_quant", "qproj_matmul", "k_idx_cache_write",
                "idx_rope", "dispatch"}

#: the tiling field that gives the width of a stage's exactly rounded partials (the K chunk of
#: a projection, the column chunk of an RMSNorm's Σx²) in the kernels of lowering/kernels
CHUNK_FIELD = {
    "input_rmsnorm": "k", "q_lora_proj": "k", "q_lora_rmsnorm": "k", "q_head_proj": "k",
    "kv_a_proj": "k", "kv_rmsnorm": "k", "attn_norm": "chunk", "qr_proj_matmul": "k",
    "qr_rms": "chunk", "q_head_rms_rope": "chunk", "kv_proj_matmul": "k",
    "kv_rms_rope": "chunk", "q_idx_proj": "k", "k_idx_proj": "k", "idx_hadamard": "k",
    "k_idx_layernorm": "k", "idx_weights": "k", "q_nope_latent": "k", "v_proj": "k",
}
DOT_STAGES = {"q_lora_proj", "q_head_proj", "kv_a_proj", "qr_proj_matmul", "kv_proj_matmul",
              "q_idx_proj", "k_idx_proj", "idx_hadamard", "idx_weights", "index_score",
              "q_nope_latent", "sparse_attn", "v_proj"}

#: stages whose every input has the token rows on axis 0 and whose output row t depends on
#: input row t alone: their bounds are worked out :data:`_BLOCK_ELEMS` elements of rows at a
#: time (the same values). A whole V4 q (T·64 heads × 512) is 34 MB per float64 temporary, and
#: first touches of fresh memory made the stage's first call in a process 4x its second (V4
#: Flash full dims, Intel Xeon: 1.66-1.87 s against 0.36-0.45 s)
ROW_WISE = {"q_head_rms_rope"}

#: the variant values whose semantics the interval formulas above implement
MODELLED: dict[str, tuple[Any, ...]] = {
    "rmsnorm": ("ds32", "hf"), "variance": ("mean", "mul_inv"), "cast": ("rne", "rhaz"),
    "accumulate": ("exact", "fp32"), "rope_layout": ("half", "interleaved"),
    "qr_prequant_round": (True, False), "rope_preround": (False, True),
    "rope_table": ("pair", "element"), "q_norm_input": ("bf16", "fp32"),
    "proj_out": ("fp32", "bf16"), "q_head_norm": ("fp32", "bf16"), "kv_nope_fp8": (False, True),
    "rope_table_dtype": ("bf16", "fp32"), "qr_scale_form": ("div", "mul_recip"),
    "index_input": ("normed", "hidden"), "index_score": ("relu", "reduce_q"),
    "index_weights": ("bf16", "fp32"), "q_latent": ("bf16", "fp32"),
    "attn_scale": ("yarn", "plain"), "attn_probs": ("bf16", "exact"),
}


def accum_for(stage: str, tiling: Any) -> Accum:
    """The accumulation model of an emulated kernel from its tiling: ``ordered`` partials of the
    tiling's chunk width (the kernels of lowering/kernels accumulate their chunks in a
    data-dependent chain starting at chunk 0: ``lowering.kernels.blocks.sum_squares`` /
    ``project_block``, ``v4._blocks.inv_rms_rows``, ``v4.qr_proj_matmul``), so the kernel's
    value itself; ``any`` when the tiling does not say."""
    width = getattr(tiling, CHUNK_FIELD.get(stage, ""), None)
    return ordered(width) if isinstance(width, int) and width > 0 else ANY


def check_modelled(stage: str, cfg: Any) -> None:
    """Raise :class:`Unmodelled` when a variant that can change ``stage`` has a value (or is a
    field) this module does not implement."""
    import importlib

    import dsref

    dcfg = importlib.import_module("dsref.config")  # the module (dsref.config is a function)
    relevant = getattr(dcfg, "STAGE_VARIANTS", {}).get(stage)
    for key, value in dsref.variant_values(cfg).items():
        if relevant is not None and key not in relevant:
            continue
        if value not in MODELLED.get(key, ()):
            raise Unmodelled(f"{key}={value!r}")


def stage_bounds(model: str, stage: str, cfg: Any, inputs: Mapping[str, Any], acc: Accum, *,
                 compute_exact: bool = False) -> dict[str, Iv | RowsIv | None]:
    """Per output of ``stage``: the interval of every value a kernel following ``cfg`` may
    produce from ``inputs`` (arrays, or :class:`Iv` for values known only within bounds),
    accumulating per ``acc``; ``None`` where the output must equal dsref's bitwise (an exact
    stage on exact inputs; ``compute_exact``: its point intervals all the same, for tests).
    Under a sequential ``ordered`` ``acc`` each output also carries its ``envelope`` (the same
    stage under ``acc.relaxed()``), which must contain dsref's own output.
    Raises :class:`Unmodelled` for semantics without a bound model."""
    from dsref.model import STAGES, get_model

    st = STAGES[stage]
    exact_inputs = not any((isinstance(v, Iv) and not v.is_point)
                           or (isinstance(v, RowsIv) and not v.iv.is_point)
                           or isinstance(v, TopkSet) for v in inputs.values())
    check_modelled(stage, cfg)
    if stage in EXACT_STAGES and not compute_exact and exact_inputs:
        return {n: None for n in st.outputs}
    if stage in DOT_STAGES and cfg.accumulate == "fp32":
        acc = ANY  # the reference itself sums in an unspecified fp32 order
    if stage in ROW_WISE:
        first = inputs[st.inputs[0]]
        rows = max(1, _BLOCK_ELEMS // max(int(np.prod(first.shape[1:])), 1))
        if first.shape[0] > rows and not any(isinstance(v, RowsIv) for v in inputs.values()):
            parts = [stage_bounds(model, stage, cfg, {n: v[r0:r0 + rows] for n, v in
                                                      inputs.items()}, acc)
                     for r0 in range(0, first.shape[0], rows)]
            return {n: _rows_joined([p[n] for p in parts]) for n in st.outputs}
    ins = _Intervals(inputs)
    raw = {n: v for n, v in inputs.items() if not isinstance(v, Iv)}
    family = get_model(model).family
    out = MODELS[family](stage, cfg, ins, acc, raw)
    if acc.sequential:
        # the kernel's order pins each sum to one value; dsref rounds the exact sum once, so its
        # output is checked against the interval of the same chunks in order instead
        env = MODELS[family](stage, cfg, ins, acc.relaxed(), raw)
        for n in st.outputs:
            _with_envelope(out[n], env[n])
    return {n: out[n] for n in st.outputs}


def _rows_joined(parts: list[Iv]) -> Iv:
    """The bounds of consecutive row blocks as one (envelopes joined too)."""
    out = concat(parts, axis=0)
    if parts[0].envelope is not None:
        out.envelope = concat([p.envelope for p in parts], axis=0)
    return out


def _with_envelope(b: Iv | RowsIv | TopkSet, env: Iv | RowsIv | TopkSet) -> None:
    if isinstance(b, TopkSet):
        return  # a set: no order to pin
    if isinstance(b, RowsIv):
        b.iv.envelope = env.iv
    else:
        b.envelope = env
