"""RMSNorm: the ds32 form (one rounding), HF's two-rounding variant, and the official V4
per-head q norm in bf16 tensor arithmetic; the V3.2 indexer's LayerNorm with bias.

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
    return _inv_sqrt(mean_of(row_sum(r32(v * v)), v.shape[-1], variance), eps)


def _inv_sqrt(var: jax.Array, eps: float) -> jax.Array:
    """``1 / sqrt(var + eps)``: the add, the sqrt and the division each one fp32 rounding."""
    return div(1.0, sqrt(r32(var + float(np.float32(eps)))))


def mean_of(s: jax.Array, n: int, variance: str = "mean") -> jax.Array:
    """A mean from its fp32 sum ``s`` over ``n`` values: ``s / n`` (a true fp32 division) or,
    ``variance="mul_inv"``, ``s · f32(1/n)`` (what the kernels compute)."""
    if variance == "mean":
        return div(s, float(n))
    if variance == "mul_inv":
        return r32(s * float(np.float32(1.0 / n)))
    raise ValueError(f"variance: expected 'mean' or 'mul_inv', got {variance!r}")


def layer_norm(x: jax.Array, w: jax.Array, b: jax.Array, *, eps: float, variance: str = "mean",
               cast: str = "rne") -> jax.Array:
    """LayerNorm with bias over the last axis (the V3.2 indexer's ``k_norm``), to bf16:

        mean = sum(x) / N;  c = x − mean;  var = sum(c·c) / N   (biased)
        bf16(((c · (1 / sqrt(var + eps))) · w) + b)

    every fp32 op one rounding, the sums exact and rounded once; ``variance`` picks how both
    means divide (:func:`mean_of`)."""
    n = x.shape[-1]
    c = r32(x - mean_of(row_sum(x), n, variance))
    inv = _inv_sqrt(mean_of(row_sum(r32(c * c)), n, variance), eps)
    return rbf16(r32(r32(r32(c * inv) * w) + b), cast)


def rms_norm(
    x: jax.Array, w: jax.Array, *, eps: float, variance: str = "mean", kind: str = "ds32",
    cast: str = "rne", stats: jax.Array | None = None,
) -> jax.Array:
    """RMSNorm of carried ``x`` with fp32 weight ``w``, returned on the bf16 grid.

    ``kind="ds32"``: ``bf16(w · (x · inv_rms(x)))``, weight applied in fp32, one rounding.
    ``kind="hf"``: ``bf16(bf16(w) · bf16(x · inv_rms(x)))`` (HF DeepseekV3RMSNorm).
    ``stats``: take ``inv_rms`` of this array instead of ``x`` (PR #134's q_norm: the variance
    of the fp32 qr, normalising the bf16-rounded qr).
    """
    normed = r32(x * inv_rms(x if stats is None else stats, eps=eps, variance=variance))
    if kind == "ds32":
        return rbf16(r32(w * normed), cast)
    if kind == "hf":
        return rbf16(r32(rbf16(w) * rbf16(normed, cast)), cast)
    raise ValueError(f"rmsnorm: expected 'ds32' or 'hf', got {kind!r}")


def head_norm_bf16(q: jax.Array, *, eps: float, variance: str = "mean", cast: str = "rne"
                   ) -> jax.Array:
    """The official V4 per-head q norm ``q *= rsqrt(q.square().mean(-1) + eps)`` on a bf16
    tensor, every tensor op rounded to bf16 (its fp32 interior rounded once to fp32 first):

        bf16(q · bf16(1 / sqrt(bf16(bf16(mean(bf16(q²))) + eps))))

    ``q`` carried on the bf16 grid; ``mean`` = the exact sum of the bf16 squares rounded once to
    fp32, then a true fp32 division by N (``variance="mul_inv"``: ``· f32(1/N)``, torch's CUDA
    mean; equal for N = 512), then bf16; ``+ eps`` in fp32 then bf16; the rsqrt as
    fp32 ``1 / sqrt`` (each one rounding), then bf16. Products of two bf16 values are exact in
    fp32, so ``q²`` and ``q · r`` are single roundings to bf16.
    """
    sq = rbf16(r32(q * q), cast)
    s, n = row_sum(sq), q.shape[-1]
    mean = rbf16(div(s, float(n)) if variance == "mean" else r32(s * float(np.float32(1.0 / n))),
                 cast)
    ve = rbf16(r32(mean + float(np.float32(eps))), cast)
    r = rbf16(div(1.0, sqrt(ve)), cast)
    return rbf16(r32(q * r), cast)
