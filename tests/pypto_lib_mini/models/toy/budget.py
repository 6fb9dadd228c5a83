"""FAIL (budget): one [256, 512] fp32 tile (512 KiB) in a scope, over a2a3's 184 KiB Vec."""
import pypto.language as pl

R, C = 256, 512


@pl.jit
def copy(x: pl.Tensor[[R, C], pl.FP32], y: pl.Out[pl.Tensor[[R, C], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="whole_tile"):
        y[:, :] = pl.add(x[:, :], 0.0)
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [R, C], torch.float32, init_value=torch.randn),
            TensorSpec("y", [R, C], torch.float32, is_output=True)]


def golden_copy(tensors):
    tensors["y"][:] = tensors["x"]


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=copy, specs=build_tensor_specs(), golden_fn=golden_copy, rtol=0, atol=0)
