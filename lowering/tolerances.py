"""Named comparator presets — the ONLY place tolerance numbers live.

Defaults follow pypto-lib / CANN conventions (SEMANTICS.md, "Comparator defaults"):
bf16 outputs ``ratio_allclose(atol=1e-4, rtol=1/128, max_error_ratio=0.005)``; int8 codes
``|Δ| <= 1`` on at most 0.5% of elements; scales ``atol=2.5e-5, rtol=5e-3`` with no bad
element. NaN/Inf on either side always fails; −0.0 == +0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Preset:
    """An element is bad when ``|got − want| > atol + rtol·|want|`` (or, for integer codes,
    when ``|Δ| > max_int_diff``); the output passes when the bad fraction is at most
    ``max_error_ratio`` and no element is off by more than ``max_int_diff`` (integers)."""

    name: str
    atol: float = 0.0
    rtol: float = 0.0
    max_error_ratio: float = 0.0
    max_int_diff: int | None = None  # integer outputs: allowed |Δ| on the bad elements


PRESETS: dict[str, Preset] = {
    "bf16": Preset(name="bf16", atol=1e-4, rtol=1 / 128, max_error_ratio=0.005),
    "int8_codes": Preset(name="int8_codes", max_int_diff=1, max_error_ratio=0.005),
    "scale": Preset(name="scale", atol=2.5e-5, rtol=5e-3, max_error_ratio=0.0),
    # fp32 intermediates (matmul accumulators, dequantised q): kernels accumulate in chunks,
    # the reference rounds the exact sum once — a few fp32 ulps apart.
    "fp32": Preset(name="fp32", atol=1e-5, rtol=1e-4, max_error_ratio=0.0),
    "exact": Preset(name="exact", max_error_ratio=0.0, max_int_diff=0),
    # fp32 intermediates in chained mode: their inputs already carry the upstream kernels'
    # bf16 roundings (a 1-ulp bf16 token moves a whole qr32 row by ~1e-4) and int8 codes
    # (a code off by one moves a qf row), so they are held to the bf16 comparator's numbers.
    "fp32_chained": Preset(name="fp32_chained", atol=1e-4, rtol=1 / 128, max_error_ratio=0.005),
}


def preset_for(name: str, dtype: np.dtype, mode: str = "isolated") -> Preset:
    """The default preset of an output by dtype (and name, for fp32 scales); ``mode``
    ``"chained"`` holds fp32 intermediates to ``fp32_chained``."""
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":
        return PRESETS["bf16"]
    if dt == np.int8:
        return PRESETS["int8_codes"]
    if dt.kind == "f":
        if "scale" in name:
            return PRESETS["scale"]
        return PRESETS["fp32_chained" if mode == "chained" else "fp32"]
    return PRESETS["exact"]


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"tolerance preset: expected one of {sorted(PRESETS)}, got {name!r}") from None
