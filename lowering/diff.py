"""Judging one kernel output against its reference: exact-or-bounded (the default) or the
pypto-lib ratio preset, with the metrics of both in one :class:`OutputDiff`.

:func:`judge` takes the reference value the kernel should have produced from the inputs it
consumed and the allowance of :mod:`lowering.bounds` (``None``: bitwise); :func:`compare` is
the ratio comparator alone (metrics, pypto-lib figures). −0.0 == +0.0; NaN/Inf on either side
fails under every tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from dsref.explore import ulps as ulp_distance
from dsref.numerics import bf16_nonfinite
from lowering.bounds import Iv, RowsIv, TopkSet
from lowering.tolerances import DEFAULT_TOLERANCE, Preset, check_tolerance, preset_for

FIRST_N = 8  # mismatching indices listed per output


class BoundModelError(AssertionError):
    """dsref's own output lies outside the bound computed for it: the bound model of
    ``lowering.bounds`` and dsref disagree on the stage's semantics (a bug, never a verdict)."""


@dataclass
class OutputDiff:
    """One output's verdict (``ok`` under ``tolerance``; ``message`` says why not) and metrics
    against the reference the kernel should have produced (``max_*``, ``differ_ratio``,
    ``cosine``, ``rel_l2``), the bound's figures, the pypto-lib ratio figures and, along a chain,
    the drift from the pure reference."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    preset: str  # what decided: "exact" | "bound" | a pypto-lib ratio preset
    ok: bool
    message: str
    max_abs: float
    max_rel: float
    max_ulp: int  # bf16 ulps for bf16 outputs, fp32 ulps for fp32, |Δ| for integers
    mismatch_ratio: float  # fraction of elements bad under the pypto-lib ratio preset
    differ_ratio: float  # fraction of elements not bit-identical (−0.0 == +0.0)
    cosine: float
    rel_l2: float
    first_mismatches: list[tuple[int, ...]] = field(default_factory=list)
    tolerance: str = "pypto-lib"  # the tolerance ``ok`` follows
    bound_ratio: float | None = None  # max |got − ref| / allowance: ≤ 1 inside; inf: off where exact
    outside: int = 0  # elements outside the bound
    pinned: float | None = None  # fraction of elements whose bound allows one value only
    max_width_ulp: int | None = None  # widest allowed interval, in output ulps
    accumulation: str = ""  # the accumulation model the bound assumes
    ratio_preset: str = ""  # the pypto-lib preset the ratio figures use
    ratio_ok: bool | None = None
    ratio_message: str = ""
    drift: dict[str, float] | None = None  # vs the pure reference (chained / files / run-kernel)
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["first_mismatches"] = [list(i) for i in self.first_mismatches]
        return d


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt == np.dtype(ml_dtypes.bfloat16)


def compare(name: str, got: np.ndarray, want: np.ndarray, preset: Preset) -> OutputDiff:
    """Compare ``got`` (kernel) with ``want`` (reference) under the ratio ``preset``.

    Only elements whose bits differ (or that are NaN/Inf) are examined one by one, so a
    33M-element cache with a few written rows costs two passes over its bytes; the cosine and
    rel-L2 use the full-array norm of ``want`` plus corrections from those elements."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return _mismatch(name, got, want, preset,
                         f"{name}: expected {want.dtype.name}{list(want.shape)}, "
                         f"got {got.dtype.name}{list(got.shape)}")
    gf, wf = got.reshape(-1), want.reshape(-1)
    is_float = _is_float(want.dtype)
    idx, nonfinite = _differing(gf, wf, is_float)
    g, w = gf[idx].astype(np.float64), wf[idx].astype(np.float64)
    fin = ~nonfinite[idx]
    d = np.where(fin, np.abs(g - w), np.inf)
    if is_float:
        bad = ~fin | (d > preset.atol + preset.rtol * np.abs(w))
        ulps = ulp_distance(gf[idx], wf[idx])
        differ = (g != w) & ~(np.isnan(g) & np.isnan(w))  # −0.0 == +0.0
    else:
        ulps = d.astype(np.int64)
        bad = differ = ulps > 0
    n = max(gf.size, 1)
    ratio = float(bad.sum()) / n
    reasons = []
    if nonfinite.any():
        reasons.append(_nonfinite_reason(nonfinite, want.shape))
    if preset.max_int_diff is not None and not is_float and ulps.size and ulps.max() > preset.max_int_diff:
        reasons.append(f"|Δ| up to {int(ulps.max())} > {preset.max_int_diff}")
    if ratio > preset.max_error_ratio:
        reasons.append(f"{ratio:.4%} of elements outside tolerance (allowed {preset.max_error_ratio:.2%})")
    rel = np.where(np.abs(w) > 0, d / np.maximum(np.abs(w), 1e-30), np.where(d > 0, np.inf, 0.0))
    cosine, rel_l2 = _cosine_rel_l2(wf, nonfinite, np.where(fin, g, 0.0), np.where(fin, w, 0.0))
    shown = idx[bad | differ][:FIRST_N]
    return OutputDiff(
        name=name, dtype=want.dtype.name, shape=want.shape, preset=preset.name, ok=not reasons,
        message="; ".join(reasons), max_abs=_max(d), max_rel=_max(rel),
        max_ulp=int(ulps.max()) if ulps.size else 0, mismatch_ratio=ratio,
        differ_ratio=float(differ.sum()) / n, cosine=cosine, rel_l2=rel_l2,
        first_mismatches=_unravel(shown, want.shape), ratio_preset=preset.name,
        ratio_ok=not reasons, ratio_message="; ".join(reasons),
    )


def judge(name: str, got: np.ndarray, want: np.ndarray,
          bound: Iv | RowsIv | TopkSet | None | str, *,
          tolerance: str = DEFAULT_TOLERANCE, pure: np.ndarray | None = None,
          accumulation: str = "", preset: Preset | None = None) -> OutputDiff:
    """The verdict on ``got`` given ``want`` (the reference stage on the inputs the kernel
    consumed) and ``bound`` (:func:`lowering.bounds.stage_bounds`: ``None`` bitwise, an interval
    per element, or a string saying why no bound model applies — then the ratio preset judges).
    ``pure``: the pure reference value, for the drift figures. Raises :class:`BoundModelError`
    when ``want`` itself lies outside ``bound``."""
    check_tolerance(tolerance)
    got, want = np.asarray(got), np.asarray(want)
    d = compare(name, got, want, preset or preset_for(name, want.dtype))
    d.tolerance, d.accumulation = tolerance, accumulation
    if pure is not None and np.shape(pure) == want.shape:
        p = compare(name, got, np.asarray(pure), preset_for(name, want.dtype))
        d.drift = {"max_ulp": p.max_ulp, "differ_ratio": p.differ_ratio, "cosine": p.cosine,
                   "rel_l2": p.rel_l2}
    if got.shape != want.shape or got.dtype != want.dtype:
        return d
    if isinstance(bound, str):
        d.note = f"no bound model ({bound}): judged by the pypto-lib ratio preset"
        return d
    if isinstance(bound, TopkSet):
        return _judge_set(d, name, got, want, bound, tolerance)
    fig = _bound_figures(name, got, want, bound)
    d.bound_ratio, d.outside, d.pinned, d.max_width_ulp = fig["ratio"], fig["outside"], \
        fig["pinned"], fig["width"]
    if tolerance == "pypto-lib":
        return d
    d.preset = "exact" if bound is None else "bound"
    d.ok = fig["outside"] == 0
    reasons = []
    if fig["nonfinite"]:
        reasons.append(_nonfinite_reason(fig["nonfinite_mask"], want.shape))
    n_bad = fig["outside"] - fig["nonfinite"]
    if n_bad:
        what = "differ where the stage is bitwise" if bound is None else "outside the bound"
        reasons.append(f"{n_bad} element(s) {what} (max {_fmt_ratio(fig['ratio'])} the "
                       f"allowance; pypto-lib ratio: {'ok' if d.ratio_ok else 'FAIL'})")
    d.message = "; ".join(reasons)
    if fig["bad"].size:
        d.first_mismatches = _unravel(fig["bad"][:FIRST_N], want.shape)
    return d


def _judge_set(d: OutputDiff, name: str, got: np.ndarray, want: np.ndarray, bound: TopkSet,
               tolerance: str) -> OutputDiff:
    """A top-k judged as a set (:class:`lowering.bounds.TopkSet`): each entry's positions, in
    any order, must be a top-k of some scores inside their bounds."""
    own = bound.problems(want)
    if own:
        b, slot, why = own[0]
        raise BoundModelError(f"{name}: the reference's entry {b} (slot {slot}) is not a top-k "
                              f"of its own score bounds: {why}")
    bad = bound.problems(got)
    d.outside, d.bound_ratio = len(bad), None
    if tolerance == "pypto-lib":
        return d
    d.preset, d.ok = "set", not bad
    d.first_mismatches = [(b, slot) for b, slot, _ in bad[:FIRST_N]]
    d.message = "" if not bad else (
        f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'} not a top-{bound.slots} of their "
        f"scores (first: entry {bad[0][0]}, slot {bad[0][1]}: {bad[0][2]})")
    return d


def _fmt_ratio(r: float) -> str:
    return "∞×" if not np.isfinite(r) else f"{r:.3g}×"


def _nonfinite(a: np.ndarray) -> np.ndarray:
    """NaN/Inf mask of a flat float array (bf16 by its bits)."""
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return bf16_nonfinite(a)
    return ~np.isfinite(a)


def _differing(gf: np.ndarray, wf: np.ndarray, is_float: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices whose bits differ or that are NaN/Inf, and the non-finite mask."""
    nonfinite = _nonfinite(gf) | _nonfinite(wf) if is_float else np.zeros(gf.size, bool)
    word = np.dtype(f"u{wf.dtype.itemsize}")
    return np.flatnonzero((gf.view(word) != wf.view(word)) | nonfinite), nonfinite


def _bound_figures(name: str, got: np.ndarray, want: np.ndarray, bound: Iv | RowsIv | None
                   ) -> dict[str, Any]:
    """Elements outside ``bound``, the max error in units of the allowance, the pinned
    fraction and the widest interval (ulps); the self-check that ``want`` lies inside."""
    gf, wf = got.reshape(-1), want.reshape(-1)
    is_float = _is_float(want.dtype)
    idx, nonfinite = _differing(gf, wf, is_float)
    g, w = gf[idx].astype(np.float64), wf[idx].astype(np.float64)
    lo = hi = w
    pinned, width = 1.0, 0
    if isinstance(bound, Iv):
        blo = np.broadcast_to(bound.lo, want.shape).reshape(-1)
        bhi = np.broadcast_to(bound.hi, want.shape).reshape(-1)
        _self_check(name, wf, *_envelope(bound, blo, bhi, want.shape), np.arange(wf.size),
                    want.shape)
        if bound.envelope is not None:
            idx, g, w = _with_ref_outside(idx, gf, wf, np.arange(wf.size), blo, bhi, nonfinite)
        lo, hi = blo[idx], bhi[idx]
        pinned = float(np.mean(blo == bhi)) if blo.size else 1.0
        width = _width(blo, bhi, want.dtype)
    elif isinstance(bound, RowsIv):
        lead, tail = want.shape[:bound.lead], want.shape[bound.lead:]
        row_len = int(np.prod(tail, dtype=np.int64))
        where = np.full(int(np.prod(lead, dtype=np.int64)), -1, np.int64)
        where[bound.rows] = np.arange(bound.rows.size)
        rshape = (bound.rows.size, *tail)
        rlo = np.broadcast_to(bound.iv.lo, rshape).reshape(-1)
        rhi = np.broadcast_to(bound.iv.hi, rshape).reshape(-1)
        flat_rows = (bound.rows[:, None] * row_len + np.arange(row_len)[None, :]).reshape(-1)
        _self_check(name, wf[flat_rows], *_envelope(bound.iv, rlo, rhi, rshape), flat_rows,
                    want.shape)
        if bound.iv.envelope is not None:
            idx, g, w = _with_ref_outside(idx, gf, wf, flat_rows, rlo, rhi, nonfinite)
        pos = where[idx // row_len]
        k = np.where(pos >= 0, pos * row_len + idx % row_len, 0)
        lo = np.where(pos >= 0, rlo[k] if rlo.size else w, w)
        hi = np.where(pos >= 0, rhi[k] if rhi.size else w, w)
        pinned = 1.0 - float(np.sum(rlo != rhi)) / max(wf.size, 1)
        width = _width(rlo, rhi, want.dtype)
    fin = ~nonfinite[idx]
    out = ~fin | (g < lo) | (g > hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        allow = np.where(g > w, hi - w, w - lo)
        err = np.abs(g - w)
        ratio = np.where(err == 0, 0.0, np.where(allow > 0, err / allow, np.inf))
    ratio = np.where(fin & ~(out & (err == 0)), ratio, np.inf)  # = ref where ref is excluded
    return {"outside": int(out.sum()), "bad": idx[out], "ratio": _max(ratio), "pinned": pinned,
            "width": width, "nonfinite": int(nonfinite.sum()), "nonfinite_mask": nonfinite}


def _envelope(bound: Iv, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """What the reference must lie in: ``bound.envelope`` where the bound is the kernel's own
    order (a point dsref, rounding the exact sum once, need not equal), else the bound."""
    env = bound.envelope
    if env is None:
        return lo, hi
    return (np.broadcast_to(env.lo, shape).reshape(-1),
            np.broadcast_to(env.hi, shape).reshape(-1))


def _with_ref_outside(idx: np.ndarray, gf: np.ndarray, wf: np.ndarray, flat: np.ndarray,
                      lo: np.ndarray, hi: np.ndarray, nonfinite: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``idx`` (elements differing from the reference) plus those of ``flat`` (bounded by
    ``lo``, ``hi``) equal to a reference the bound excludes — a kernel-order bound, where
    matching dsref is itself a difference; with their got / ref values in float64."""
    r = wf[flat].astype(np.float64)
    excl = flat[~nonfinite[flat] & ((r < lo) | (r > hi))]
    if excl.size:
        idx = np.union1d(idx, excl)
    return idx, gf[idx].astype(np.float64), wf[idx].astype(np.float64)


def _self_check(name: str, ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, flat: np.ndarray,
                shape: tuple[int, ...]) -> None:
    r = ref.astype(np.float64)
    bad = np.isfinite(r) & ~((lo <= r) & (r <= hi))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        at = [int(v) for v in np.unravel_index(int(flat[i]), shape)]
        raise BoundModelError(
            f"{name}: the reference value {r[i]!r} at {at} lies outside its own bound "
            f"[{lo[i]!r}, {hi[i]!r}] ({int(bad.sum())} element(s)): lowering.bounds and dsref "
            "disagree on this stage's semantics")


def _width(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype) -> int:
    if lo.size == 0:
        return 0
    if not _is_float(dtype):
        return int(np.max(hi - lo))
    wide = (lo != hi) & np.isfinite(lo) & np.isfinite(hi)  # a pinned element is 0 ulps wide
    if not wide.any():
        return 0
    return int(np.max(ulp_distance(lo[wide].astype(dtype), hi[wide].astype(dtype))))


def _nonfinite_reason(nonfinite: np.ndarray, shape: tuple[int, ...]) -> str:
    first = np.unravel_index(int(np.flatnonzero(nonfinite)[0]), shape)
    return f"{int(nonfinite.sum())} NaN/Inf element(s), first at {[int(i) for i in first]}"


def _unravel(flat: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in np.unravel_index(int(k), shape)) for k in flat]


_CHUNK = 1 << 20


def _cosine_rel_l2(want_flat: np.ndarray, nonfinite: np.ndarray, g: np.ndarray, w: np.ndarray):
    """Cosine and rel-L2 of got vs want with non-finite elements zeroed, from the full norm of
    ``want`` and the differing elements ``g``/``w`` (all other elements are equal)."""
    ww = 0.0
    for i in range(0, want_flat.size, _CHUNK):  # float64 a chunk at a time: the V3.2 caches
        wd = want_flat[i:i + _CHUNK].astype(np.float64)  # are 33M elements
        wd[nonfinite[i:i + _CHUNK]] = 0.0
        ww += float(wd @ wd)
    gg = ww + float(g @ g - w @ w)
    gw = ww + float((g - w) @ w)
    dd = float((g - w) @ (g - w))
    if ww == 0.0 or gg <= 0.0:
        cosine = 1.0 if dd == 0.0 else 0.0
    else:
        cosine = gw / np.sqrt(gg * ww)
    return cosine, float(np.sqrt(dd) / max(np.sqrt(ww), 1e-30))


def _max(a: np.ndarray) -> float:
    return float(a.max()) if a.size else 0.0


def _mismatch(name: str, got: np.ndarray, want: np.ndarray, preset: Preset, msg: str) -> OutputDiff:
    inf = float("inf")
    return OutputDiff(name=name, dtype=want.dtype.name, shape=want.shape, preset=preset.name, ok=False,
                      message=msg, max_abs=inf, max_rel=inf, max_ulp=-1, mismatch_ratio=1.0,
                      differ_ratio=1.0, cosine=0.0, rel_l2=inf, ratio_preset=preset.name,
                      ratio_ok=False, ratio_message=msg)
