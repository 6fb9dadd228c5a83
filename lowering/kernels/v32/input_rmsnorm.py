"""input_rmsnorm — ds32 RMSNorm of the hidden states (PR #134 tiling).

    normed[B, D] = bf16( w[1, D] · (x · inv_rms(x)) ),  inv_rms = 1 / sqrt(Σx² · (1/D) + eps)

dtypes: x bf16 → fp32 (exact); Σx² per 512-wide chunk (row_sum) added in fp32; the variance
per the ``variance`` variant: ``mean`` one true fp32 division Σx² / D (pl.div, the default),
``mul_inv`` Σx² · fp32(1/D) — PR #134's form, 1 ulp off on ~half the rows for D = 7168; sqrt
and recip each one rounding; x·r, then ·w, each one fp32 op; one cast to bf16 (``rint`` for
the default RNE semantics).
"""

from __future__ import annotations

from lowering.kernels.v32._shared import rms_norm_kernel
from lowering.kernels.v32._tiling import RmsNormTiling as Tiling
from lowering.kernels.v32._tiling import rms_norm_tiling


def make_tiling(cfg, shapes) -> Tiling:
    return rms_norm_tiling(cfg, shapes["hidden_states"][1], "D")


def input_rmsnorm(hidden_states, input_rms_weight, normed, *, tiling: Tiling) -> None:
    rms_norm_kernel(hidden_states, input_rms_weight, normed, tiling, "input_rmsnorm")
