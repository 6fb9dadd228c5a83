"""FAIL: overrun.widen reads x[1:17] of a 16-row x (the defect is in overrun.py)."""
import pypto.language as pl
from overrun import widen


@pl.jit
def widened(x: pl.Tensor[[16, 32], pl.FP32], y: pl.Out[pl.Tensor[[16, 32], pl.FP32]]):
    return widen(x, y, 16, 32)


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [16, 32], torch.float32, init_value=torch.randn),
            TensorSpec("y", [16, 32], torch.float32, is_output=True)]


def golden_widened(tensors):
    tensors["y"][:] = tensors["x"]


if __name__ == "__main__":
    from golden import run_jit

    result = run_jit(fn=widened, specs=build_tensor_specs(), golden_fn=golden_widened,
                     rtol=0.0, atol=0.0)
    if not result.passed:
        raise SystemExit(1)
