"""FAIL (mismatch + coverage warning): T // 2 row tiles drop the last row when T is odd."""
import pypto.language as pl

T, D = 9, 16
T_TILE = T // 2


@pl.jit
def double(x: pl.Tensor[[T, D], pl.FP32], y: pl.Out[pl.Tensor[[T, D], pl.FP32]]):
    for t in pl.parallel(0, 2, 1):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="double"):
            r = t * T_TILE
            y[r:r + T_TILE, :] = pl.add(x[r:r + T_TILE, :], x[r:r + T_TILE, :])
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [T, D], torch.float32, init_value=torch.randn),
            TensorSpec("y", [T, D], torch.float32, is_output=True)]


def golden_double(tensors):
    tensors["y"][:] = tensors["x"] * 2.0


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=double, specs=build_tensor_specs(), golden_fn=golden_double, rtol=1e-6, atol=1e-6)
