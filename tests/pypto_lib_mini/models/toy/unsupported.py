"""CANNOT RUN: uses a pl name the emulator does not have (pl.not_an_op), named with its line."""
import pypto.language as pl


@pl.jit
def kernel(x: pl.Tensor[[16, 16], pl.FP32], y: pl.Out[pl.Tensor[[16, 16], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="k"):
        y[:, :] = pl.not_an_op(x[:, :])
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [16, 16], torch.float32, init_value=torch.randn),
            TensorSpec("y", [16, 16], torch.float32, is_output=True)]


def golden_kernel(tensors):
    tensors["y"][:] = tensors["x"]


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=kernel, specs=build_tensor_specs(), golden_fn=golden_kernel)
