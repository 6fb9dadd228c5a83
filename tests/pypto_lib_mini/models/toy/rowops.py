"""A module with no main block: an inline helper the kernels import (as pypto-lib's
rope_interleave.py is). Judged through doubled.py, whose run executes it: PASS."""
import pypto.language as pl


@pl.jit.inline
def double_rows(x, y, rows: int, cols: int):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="double_rows"):
        y[0:rows, 0:cols] = pl.mul(x[0:rows, 0:cols], 2.0)
    return y
