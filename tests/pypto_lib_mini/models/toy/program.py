"""PASS: a @pl.program class run with golden.run(program, ...), scalar argument included."""
import pypto.language as pl

R, C = 16, 32


@pl.program
class AddScalar:
    @pl.function(type=pl.FunctionType.Opaque)
    def main(self, x: pl.Tensor[[R, C], pl.FP32], alpha: pl.Scalar[pl.FP32],
             y: pl.Out[pl.Tensor[[R, C], pl.FP32]]):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="add_scalar"):
            y[:, :] = pl.add(x[:, :], alpha)
        return y


def build_tensor_specs():
    import torch
    from golden import ScalarSpec, TensorSpec

    return [TensorSpec("x", [R, C], torch.float32, init_value=torch.randn),
            ScalarSpec("alpha", torch.float32, 0.5),
            TensorSpec("y", [R, C], torch.float32, is_output=True)]


def golden_add_scalar(tensors):
    tensors["y"][:] = tensors["x"] + tensors["alpha"]


if __name__ == "__main__":
    from golden import run

    run(program=AddScalar, specs=build_tensor_specs(), golden_fn=golden_add_scalar, rtol=0, atol=0)
