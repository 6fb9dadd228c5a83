"""Shapes from a config that parses argv and reads TOY_VARIANT at import: PASS; the row
count says which variant ran (16 small, 64 big)."""
import pypto.language as pl
from config import ROWS

COLS = 32


@pl.jit
def negate(x: pl.Tensor[[ROWS, COLS], pl.FP32], y: pl.Out[pl.Tensor[[ROWS, COLS], pl.FP32]]):
    for r in pl.parallel(0, ROWS, 16):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="negate"):
            y[r:r + 16, :] = pl.neg(x[r:r + 16, :])
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [ROWS, COLS], torch.float32, init_value=torch.randn),
            TensorSpec("y", [ROWS, COLS], torch.float32, is_output=True)]


def golden_negate(tensors):
    tensors["y"][:] = -tensors["x"]


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=negate, specs=build_tensor_specs(), golden_fn=golden_negate, rtol=0, atol=0)
