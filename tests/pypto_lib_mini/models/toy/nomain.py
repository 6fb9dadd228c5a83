"""PASS without a main block: its single kernel, build_tensor_specs() and golden_* are run."""
import pypto.language as pl


@pl.jit
def square(x: pl.Tensor[[16, 32], pl.FP32], y: pl.Out[pl.Tensor[[16, 32], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="square"):
        t = x[:, :]
        y[:, :] = pl.mul(t, t)
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [16, 32], torch.float32, init_value=torch.randn),
            TensorSpec("y", [16, 32], torch.float32, is_output=True)]


def golden_square(tensors):
    tensors["y"][:] = tensors["x"] * tensors["x"]
