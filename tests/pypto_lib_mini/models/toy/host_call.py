"""A file that runs its kernel itself, as qwen3_14b decode_layer_a8w8.py does: no
golden.run_jit; it compiles the kernel, calls the compiled program on torch tensors, then
checks what it got back. HOST_CALL_PLANT=race makes every iteration store to the first rows
(a race, and rows never written); =wrong computes 2x + 1 (the file's own check fails)."""
import os

import pypto.language as pl

ROWS, COLS, TILE = 32, 64, 16
PLANT = os.environ.get("HOST_CALL_PLANT", "")


@pl.jit
def double(x: pl.Tensor[[ROWS, COLS], pl.FP32], y: pl.Out[pl.Tensor[[ROWS, COLS], pl.FP32]]):
    for r in pl.parallel(0, ROWS, TILE):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="double_rows"):
            t = pl.add(x[r:r + TILE, :], x[r:r + TILE, :])
            if PLANT == "wrong":
                t = pl.add(t, 1.0)
            row = 0 if PLANT == "race" else r
            y[row:row + TILE, :] = t
    return y


def main() -> None:
    import torch
    from pypto.runtime import RunConfig

    config = RunConfig(platform="a2a3")
    torch.manual_seed(0)
    x = torch.randn(ROWS, COLS)
    y = torch.zeros(ROWS, COLS)
    program = double.compile(x, y, config=config)
    program(x, y, config=config)
    if not torch.equal(y, 2 * x):
        raise RuntimeError("double: y != 2x")
    y2 = torch.zeros(ROWS, COLS)
    double(x, y2)  # a direct host call: pypto runs it on the device too
    assert torch.equal(y2, y)
    print("double passed")


if __name__ == "__main__":
    main()
