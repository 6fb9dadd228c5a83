"""RMSNorm: the ds32 form (one rounding) and HF's two-rounding variant.

All values are carried fp32 (float64 arrays on the fp32 grid, see :mod:`dsref.numerics`).
"""

from __future__ import annotations

import jax
import numpy as np

from dsref.numerics import div, r32, rbf16, row_sum, sqrt


def inv_rms(v: jax.Array, *, eps: float, variance: str = "mean") -> jax.Array:
    """``1 / sqrt(mean(v²) + eps)`` over the last axis, keepdims; every op one fp32 rounding.

    ``variance="mean"``: ``sum(r32(v·v)) / N`` (true division); ``"mul_inv"``:
    ``sum · f32(1/N)``, what the kernels compute. The sum is exact, rounded once.
    """
    n = v.shape[-1]
    s = row_sum(r32(v * v))
    if variance == "mean":
        var = div(s, float(n))
    elif variance == "mul_inv":
        var = r32(s * float(np.float32(1.0 / n)))
    else:
        raise ValueError(f"variance: expected 'mean' or 'mul_inv', got {variance!r}")
    return div(1.0, sqrt(r32(var + float(np.float32(eps)))))


def rms_norm(
    x: jax.Array, w: jax.Array, *, eps: float, variance: str = "mean", kind: str = "ds32",
    cast: str = "rne",
) -> jax.Array:
    """RMSNorm of carried ``x`` with fp32 weight ``w``, returned on the bf16 grid.

    ``kind="ds32"``: ``bf16(w · (x · inv_rms(x)))``, weight applied in fp32, one rounding.
    ``kind="hf"``: ``bf16(bf16(w) · bf16(x · inv_rms(x)))`` (HF DeepseekV3RMSNorm).
    """
    normed = r32(x * inv_rms(x, eps=eps, variance=variance))
    if kind == "ds32":
        return rbf16(r32(w * normed), cast)
    if kind == "hf":
        return rbf16(r32(rbf16(w) * rbf16(normed, cast)), cast)
    raise ValueError(f"rmsnorm: expected 'ds32' or 'hf', got {kind!r}")
