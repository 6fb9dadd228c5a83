"""A module with no main block whose helper reads past its input's last row (rows + 1): FAIL,
found through widened.py's run, which fails at this file's line."""
import pypto.language as pl


@pl.jit.inline
def widen(x, y, rows: int, cols: int):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="widen"):
        y[0:rows, 0:cols] = pl.add(x[1:rows + 1, 0:cols], 0.0)
    return y
