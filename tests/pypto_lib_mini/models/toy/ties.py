"""FAIL (mismatch): casts fp32 → bf16 with pl.cast's default mode (ties away from zero)
where the golden rounds ties to even; the inputs are exact bf16 ties."""
import pypto.language as pl

R, C = 16, 32


@pl.jit
def narrow(x: pl.Tensor[[R, C], pl.FP32], y: pl.Out[pl.Tensor[[R, C], pl.BF16]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="narrow"):
        y[:, :] = pl.cast(x[:, :], target_type=pl.BF16)
    return y


def _ties():
    import torch

    # 1 + k·2⁻⁷ + 2⁻⁸: exactly halfway between two bf16 values
    k = torch.arange(R * C, dtype=torch.float32).reshape(R, C) % 64
    return 1.0 + k * 2.0 ** -7 + 2.0 ** -8


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [R, C], torch.float32, init_value=_ties),
            TensorSpec("y", [R, C], torch.bfloat16, is_output=True)]


def golden_narrow(tensors):
    tensors["y"][:] = tensors["x"].to(tensors["y"].dtype)


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=narrow, specs=build_tensor_specs(), golden_fn=golden_narrow, rtol=0, atol=0)
