"""FAIL (kernel defect): the kernel's own code raises (a shape check of its own)."""
import pypto.language as pl


@pl.jit
def kernel(x: pl.Tensor[[16, 16], pl.FP32], y: pl.Out[pl.Tensor[[16, 16], pl.FP32]]):
    if x.shape[0] % 32:
        raise ValueError("rows must be a multiple of 32")
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
