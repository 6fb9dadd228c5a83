"""y = 2·x + b, rows across pl.parallel, columns in chunks: PASS."""
import pypto.language as pl

ROWS, COLS, ROW_TILE, COL_TILE = 32, 64, 16, 32


@pl.jit
def scale(x: pl.Tensor[[ROWS, COLS], pl.FP32], b: pl.Tensor[[1, COLS], pl.FP32],
          y: pl.Out[pl.Tensor[[ROWS, COLS], pl.FP32]]):
    for r in pl.parallel(0, ROWS, ROW_TILE):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="scale_rows"):
            for c in pl.range(0, COLS, COL_TILE):
                t = pl.mul(x[r:r + ROW_TILE, c:c + COL_TILE], 2.0)
                y[r:r + ROW_TILE, c:c + COL_TILE] = pl.col_expand_add(t, b[:, c:c + COL_TILE])
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [ROWS, COLS], torch.float32, init_value=torch.randn),
            TensorSpec("b", [1, COLS], torch.float32, init_value=torch.randn),
            TensorSpec("y", [ROWS, COLS], torch.float32, is_output=True)]


def golden_scale(tensors):
    tensors["y"][:] = tensors["x"] * 2.0 + tensors["b"]


if __name__ == "__main__":
    import argparse

    from golden import run_jit

    parser = argparse.ArgumentParser()
    parser.add_argument("-p", "--platform", default="a2a3")
    args = parser.parse_args()
    result = run_jit(fn=scale, specs=build_tensor_specs(), golden_fn=golden_scale,
                     runtime_cfg=dict(platform=args.platform), rtol=0.0, atol=0.0)
    if not result.passed:
        raise SystemExit(1)
