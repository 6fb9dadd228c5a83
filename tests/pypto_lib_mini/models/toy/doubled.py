"""PASS: y = 2·x through rowops.double_rows (a helper module without a __main__)."""
import pypto.language as pl
from rowops import double_rows


@pl.jit
def doubled(x: pl.Tensor[[16, 32], pl.FP32], y: pl.Out[pl.Tensor[[16, 32], pl.FP32]]):
    return double_rows(x, y, 16, 32)


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [16, 32], torch.float32, init_value=torch.randn),
            TensorSpec("y", [16, 32], torch.float32, is_output=True)]


def golden_doubled(tensors):
    tensors["y"][:] = tensors["x"] * 2.0


if __name__ == "__main__":
    from golden import run_jit

    result = run_jit(fn=doubled, specs=build_tensor_specs(), golden_fn=golden_doubled,
                     rtol=0.0, atol=0.0)
    if not result.passed:
        raise SystemExit(1)
