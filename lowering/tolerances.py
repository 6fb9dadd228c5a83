"""Every tolerance number of the project lives here: the unit roundoffs the bounds are built
from, and the pypto-lib ratio presets.

Two ways to judge an output (``--tolerance``):

- ``bound`` (the default): exact-or-bounded. Each element must equal the reference where the
  stage leaves the kernel no freedom, and lie inside a per-element bound derived from the
  operands where it reduces in another order (``lowering.bounds``; docs/verdicts.md). The bounds
  are built from ``U32`` (fp32 unit roundoff) and :func:`gamma`; nothing else is tunable.
- ``pypto-lib``: upstream's ``ratio_allclose`` convention, kept as a named preset. bf16 outputs
  ``atol=1e-4, rtol=1/128, max_error_ratio=0.005``; int8 codes ``|Δ| <= 1`` on at most 0.5% of
  elements; scales ``atol=2.5e-5, rtol=5e-3`` with no bad element. Its figures are reported
  beside the default verdict either way.

NaN/Inf on either side always fails; −0.0 == +0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCES = ("bound", "pypto-lib")
DEFAULT_TOLERANCE = "bound"

U32 = 2.0**-24  # fp32 unit roundoff: |fl(x) − x| <= U32·|x| for a round-to-nearest fp32 op
U64 = 2.0**-53  # float64 unit roundoff: the slack of the bounds' own float64 arithmetic
#: the largest error of an fp32 ``exp`` a kernel may use, in ulps of its result (numpy's SIMD
#: float32 exp measured at 2.54 ulps on this project's CPUs over [−87, 0], torch's at 0.57;
#: Ascend's vector exp is assumed within the same): the softmax bound of ``sparse_attn``
EXP_ULPS = 4


def gamma(n: int | np.ndarray, u: float = U32) -> float | np.ndarray:
    """``γ_n = n·u / (1 − n·u)`` (Higham): n roundings of relative size ``u`` compound to at
    most ``γ_n``. Raises for ``n·u >= 1`` (no bound)."""
    nu = np.asarray(n, dtype=np.float64) * u
    if np.any(nu >= 1):
        raise ValueError(f"gamma: n·u = {float(np.max(nu))} >= 1, no rounding-error bound")
    g = nu / (1.0 - nu)
    return float(g) if np.ndim(g) == 0 else g


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A ratio preset (pypto-lib's convention). An element is bad when
    ``|got − want| > atol + rtol·|want|`` (or, for integer codes, when ``|Δ| > max_int_diff``);
    the output passes when the bad fraction is at most ``max_error_ratio`` and no element is
    off by more than ``max_int_diff`` (integers)."""

    name: str
    atol: float = 0.0
    rtol: float = 0.0
    max_error_ratio: float = 0.0
    max_int_diff: int | None = None  # integer outputs: allowed |Δ| on the bad elements


PRESETS: dict[str, Preset] = {
    "bf16": Preset(name="bf16", atol=1e-4, rtol=1 / 128, max_error_ratio=0.005),
    "int8_codes": Preset(name="int8_codes", max_int_diff=1, max_error_ratio=0.005),
    "scale": Preset(name="scale", atol=2.5e-5, rtol=5e-3, max_error_ratio=0.0),
    # fp32 intermediates (matmul accumulators, dequantised q) under the ratio convention
    "fp32": Preset(name="fp32", atol=1e-5, rtol=1e-4, max_error_ratio=0.0),
    "exact": Preset(name="exact", max_error_ratio=0.0, max_int_diff=0),
}


def preset_for(name: str, dtype: np.dtype) -> Preset:
    """The pypto-lib ratio preset of an output, by dtype (and name, for fp32 scales)."""
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":
        return PRESETS["bf16"]
    if dt == np.int8:
        return PRESETS["int8_codes"]
    if dt.kind == "f":
        return PRESETS["scale" if "scale" in name else "fp32"]
    return PRESETS["exact"]


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"tolerance preset: expected one of {sorted(PRESETS)}, got {name!r}") from None


def check_tolerance(name: str) -> str:
    """``name`` if it is a tolerance (``bound`` | ``pypto-lib``), else ValueError (exit 2)."""
    if name not in TOLERANCES:
        raise ValueError(f"--tolerance: expected one of {', '.join(TOLERANCES)}, got {name!r}")
    return name
