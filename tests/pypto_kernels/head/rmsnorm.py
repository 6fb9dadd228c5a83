"""A pypto-lib HEAD style RMSNorm file (test input): the token ``x [T, D]`` (a dynamic T) and a
**bf16** ``norm_w [D]`` in, ``x_normed [T, D]`` out — the names and layout dsref's
``v4.qkv_proj_rope[attn_norm]`` takes as ``x [B, S, D]``, an fp32 ``norm_w`` and ``tok``.
D = 1536 (v4-tiny). Its own golden, ``__main__`` and ratio comparator, as upstream files have.

``RMS_BUG=hf`` applies the weight after rounding ``x·inv_rms`` to bf16 (HF's two-rounding
RMSNorm): within the file's ratio comparator, 1 bf16 ulp off dsref on a quarter of the
elements."""

import os

import pypto.language as pl

T_DYN = pl.dynamic("T_DYN")
D = 1536
T_TILE = 4  # rows per block
K_CHUNK = 512  # the variance sums three chunks: another order than dsref's exact sum
EPS = 1e-6
BUG = os.environ.get("RMS_BUG", "")


@pl.jit
def rms_norm_test(x: pl.Tensor[[T_DYN, D], pl.BF16], norm_w: pl.Tensor[[D], pl.BF16],
                  x_normed: pl.Out[pl.Tensor[[T_DYN, D], pl.BF16]]):
    x.bind_dynamic(0, T_DYN)
    x_normed.bind_dynamic(0, T_DYN)
    t = pl.tensor.dim(x, 0)
    w = pl.reshape(norm_w, [1, D])
    for t0 in pl.parallel(0, t, T_TILE):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="rms_norm"):
            sq = pl.full([T_TILE, 1], dtype=pl.FP32, value=0.0)
            for k0 in pl.range(0, D, K_CHUNK):
                xc = pl.cast(x[t0:t0 + T_TILE, k0:k0 + K_CHUNK], target_type=pl.FP32)
                sq = pl.add(sq, pl.row_sum(pl.mul(xc, xc)))
            inv = pl.recip(pl.sqrt(pl.add(pl.mul(sq, 1.0 / D), EPS)))
            for k0 in pl.range(0, D, K_CHUNK):
                xc = pl.cast(x[t0:t0 + T_TILE, k0:k0 + K_CHUNK], target_type=pl.FP32)
                y = pl.row_expand_mul(xc, inv)
                if BUG == "hf":
                    y = pl.cast(pl.cast(y, target_type=pl.BF16), target_type=pl.FP32)
                wc = pl.cast(w[0:1, k0:k0 + K_CHUNK], target_type=pl.FP32)
                x_normed[t0:t0 + T_TILE, k0:k0 + K_CHUNK] = pl.cast(
                    pl.col_expand_mul(y, wc), target_type=pl.BF16, mode="rint")
    return x_normed


def build_tensor_specs(t):
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [t, D], torch.bfloat16, init_value=lambda: torch.randn(t, D)),
            TensorSpec("norm_w", [D], torch.bfloat16,
                       init_value=lambda: 1 + 0.1 * torch.randn(D)),
            TensorSpec("x_normed", [t, D], torch.bfloat16, is_output=True)]


def golden_rms_norm_test(tensors):
    import torch

    x = tensors["x"].float()
    inv = torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS)
    tensors["x_normed"][:] = (x * inv * tensors["norm_w"].float()).to(torch.bfloat16)


if __name__ == "__main__":
    from golden import ratio_allclose, run_jit

    run_jit(fn=rms_norm_test, specs=build_tensor_specs(8), golden_fn=golden_rms_norm_test,
            compare_fn={"x_normed": ratio_allclose(atol=1e-4, rtol=1 / 128,
                                                   max_error_ratio=0.005)})
