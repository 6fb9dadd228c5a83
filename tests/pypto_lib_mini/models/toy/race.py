"""FAIL (race): a GM scratch tensor created outside the parallel loop is shared by every
iteration, as in the PR #332 review's cross-head race."""
import pypto.language as pl

H, D = 4, 32


@pl.jit
def per_head_scale(x: pl.Tensor[[H, D], pl.FP32], y: pl.Out[pl.Tensor[[H, D], pl.FP32]]):
    scratch = pl.create_tensor([1, D], dtype=pl.FP32)
    for h in pl.parallel(0, H, 1):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="stage"):
            scratch[0:1, :] = pl.mul(x[h:h + 1, :], 3.0)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy_out"):
            y[h:h + 1, :] = scratch[0:1, :]
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [H, D], torch.float32, init_value=torch.randn),
            TensorSpec("y", [H, D], torch.float32, is_output=True)]


def golden_per_head_scale(tensors):
    tensors["y"][:] = tensors["x"] * 3.0


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=per_head_scale, specs=build_tensor_specs(), golden_fn=golden_per_head_scale,
            rtol=0, atol=0)
