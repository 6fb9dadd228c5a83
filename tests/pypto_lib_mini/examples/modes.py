"""Row sums of a bf16 matrix in fp32, per MODE (rows): PASS in every mode; --mode picks one."""
import pypto.language as pl

COLS = 64


def make_kernel(rows):
    @pl.jit
    def row_sums(x: pl.Tensor[[rows, COLS], pl.BF16], s: pl.Out[pl.Tensor[[rows, 1], pl.FP32]]):
        for r in pl.parallel(0, rows, 16):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="row_sums"):
                xf = pl.cast(x[r:r + 16, :], target_type=pl.FP32)
                s[r:r + 16, :] = pl.row_sum(xf)
        return s

    return row_sums


def build_tensor_specs(rows):
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [rows, COLS], torch.bfloat16, init_value=torch.randn),
            TensorSpec("s", [rows, 1], torch.float32, is_output=True)]


def golden_row_sums(tensors):
    tensors["s"][:] = tensors["x"].float().sum(dim=-1, keepdim=True)


if __name__ == "__main__":
    import argparse

    from golden import ratio_allclose, run_jit

    MODES = {"small": 16, "large": 48}
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
    args = parser.parse_args()
    for name in (list(MODES) if args.mode == "all" else [args.mode]):
        rows = MODES[name]
        result = run_jit(fn=make_kernel(rows), specs=build_tensor_specs(rows),
                         golden_fn=golden_row_sums,
                         compare_fn={"s": ratio_allclose(atol=1e-5, rtol=1e-5)})
        if not result.passed:
            raise SystemExit(1)
