"""Comparators and metrics: one kernel output against its reference value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import ml_dtypes
import numpy as np

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


def ulp_distance(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in units of the storage format's last place (bf16, fp32 or fp16), signed
    zeros equal. Uses the ordered integer image of the bit patterns."""
    dt = np.dtype(got.dtype)
    width = {2: np.int16, 4: np.int32}[dt.itemsize]
    a = np.ascontiguousarray(got).view(width).astype(np.int64)
    b = np.ascontiguousarray(want).view(width).astype(np.int64)
    sign = 1 << (8 * dt.itemsize - 1)
    a = np.where(a < 0, -(a + sign), a)  # negative floats: ordered below zero, −0 → 0
    b = np.where(b < 0, -(b + sign), b)
    return np.abs(a - b)


def compare(name: str, got: np.ndarray, want: np.ndarray, preset: Preset) -> OutputDiff:
    """Compare ``got`` (kernel) with ``want`` (reference) under ``preset``."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return _mismatch(name, got, want, preset,
                         f"{name}: expected {want.dtype.name}{list(want.shape)}, "
                         f"got {got.dtype.name}{list(got.shape)}")
    g, w = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(g) & np.isfinite(w)
    diff = np.where(finite, np.abs(g - w), np.inf)
    is_float = want.dtype.kind == "f" or want.dtype == np.dtype(ml_dtypes.bfloat16)
    if is_float:
        bad = ~finite | (diff > preset.atol + preset.rtol * np.abs(w))
        ulps = ulp_distance(got, want)
    else:
        ulps = diff.astype(np.int64)
        bad = ulps > 0
    differ = (g != w) & ~(np.isnan(g) & np.isnan(w)) if is_float else ulps > 0
    ratio = float(bad.mean()) if bad.size else 0.0
    reasons = []
    if (~finite).any():
        n = int((~finite).sum())
        reasons.append(f"{n} NaN/Inf element(s), first at {_idx(~finite)}")
    if preset.max_int_diff is not None and not is_float and ulps.size and ulps.max() > preset.max_int_diff:
        reasons.append(f"|Δ| up to {int(ulps.max())} > {preset.max_int_diff}")
    if ratio > preset.max_error_ratio:
        reasons.append(f"{ratio:.4%} of elements outside tolerance (allowed {preset.max_error_ratio:.2%})")
    rel = np.where(np.abs(w) > 0, diff / np.maximum(np.abs(w), 1e-30), np.where(diff > 0, np.inf, 0.0))
    fin_g, fin_w = np.where(finite, g, 0.0).ravel(), np.where(finite, w, 0.0).ravel()
    denom = np.linalg.norm(fin_g) * np.linalg.norm(fin_w)
    return OutputDiff(
        name=name, dtype=want.dtype.name, shape=want.shape, preset=preset.name, ok=not reasons,
        message="; ".join(reasons), max_abs=_max(diff), max_rel=_max(rel),
        max_ulp=int(ulps.max()) if ulps.size else 0, mismatch_ratio=ratio,
        differ_ratio=float(differ.mean()) if differ.size else 0.0,
        cosine=float(fin_g @ fin_w / denom) if denom else float(np.array_equal(fin_g, fin_w)),
        rel_l2=float(np.linalg.norm(fin_g - fin_w) / max(np.linalg.norm(fin_w), 1e-30)),
        first_mismatches=[tuple(int(i) for i in ix) for ix in np.argwhere(bad | differ)[:FIRST_N]],
    )


def _max(a: np.ndarray) -> float:
    return float(a.max()) if a.size else 0.0


def _idx(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.argwhere(mask)[0]]


def _mismatch(name: str, got: np.ndarray, want: np.ndarray, preset: Preset, msg: str) -> OutputDiff:
    inf = float("inf")
    return OutputDiff(name=name, dtype=want.dtype.name, shape=want.shape, preset=preset.name, ok=False,
                      message=msg, max_abs=inf, max_rel=inf, max_ulp=-1, mismatch_ratio=1.0,
                      differ_ratio=1.0, cosine=0.0, rel_l2=inf)
