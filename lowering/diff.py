"""Comparators and metrics: one kernel output against its reference value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import ml_dtypes
import numpy as np

from dsref.explore import ulps as ulp_distance
from lowering.tolerances import Preset

FIRST_N = 8  # mismatching indices listed per output


@dataclass
class OutputDiff:
    """Metrics of one output. ``ok`` is the preset's verdict; ``message`` says why not."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    preset: str
    ok: bool
    message: str
    max_abs: float
    max_rel: float
    max_ulp: int  # bf16 ulps for bf16 outputs, fp32 ulps for fp32, |Δ| for integers
    mismatch_ratio: float  # fraction of elements bad under the preset
    differ_ratio: float  # fraction of elements not bit-identical (−0.0 == +0.0)
    cosine: float
    rel_l2: float
    first_mismatches: list[tuple[int, ...]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["first_mismatches"] = [list(i) for i in self.first_mismatches]
        return d


def compare(name: str, got: np.ndarray, want: np.ndarray, preset: Preset) -> OutputDiff:
    """Compare ``got`` (kernel) with ``want`` (reference) under ``preset``.

    Only elements whose bits differ (or that are NaN/Inf) are examined one by one, so a
    33M-element cache with a few written rows costs two passes over its bytes; the cosine and
    rel-L2 use the full-array norm of ``want`` plus corrections from those elements."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return _mismatch(name, got, want, preset,
                         f"{name}: expected {want.dtype.name}{list(want.shape)}, "
                         f"got {got.dtype.name}{list(got.shape)}")
    gf, wf = got.reshape(-1), want.reshape(-1)
    is_float = want.dtype.kind == "f" or want.dtype == np.dtype(ml_dtypes.bfloat16)
    nonfinite = ~(np.isfinite(gf) & np.isfinite(wf)) if is_float else np.zeros(gf.size, bool)
    word = np.dtype(f"u{want.dtype.itemsize}")
    idx = np.flatnonzero((gf.view(word) != wf.view(word)) | nonfinite)
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
        first = np.unravel_index(int(np.flatnonzero(nonfinite)[0]), want.shape)
        reasons.append(f"{int(nonfinite.sum())} NaN/Inf element(s), first at {[int(i) for i in first]}")
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
        first_mismatches=[tuple(int(i) for i in np.unravel_index(int(k), want.shape)) for k in shown],
    )


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
                      differ_ratio=1.0, cosine=0.0, rel_l2=inf)
