"""The tile language (``pl``, pypto.language names) and its eager emulator with checks.

Write a kernel as a plain function over GM tensors::

    import numpy as np
import numpy.typing

from lowering.tile import pl

    def kernel(x, y, *, tiling):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="scale"):
            for r in pl.range(0, x.shape[0], tiling.rows):
                y[r:r + tiling.rows, :] = pl.mul(x[r:r + tiling.rows, :], 2.0)

and run it with ``run_kernel(kernel, inputs={"x": ...}, outputs={"y": (shape, pl.FP32)},
kwargs={"tiling": ...})``. See ``runner.run_kernel`` for the checks.
"""

import numpy as np
import numpy.typing

from lowering.tile import pl
from lowering.tile.budget import LIMITS, PLATFORMS, SPACES, BudgetReport, SpaceUsage
from lowering.tile.core import Tensor, Tile
from lowering.tile.dtypes import DType, as_dtype
from lowering.tile.findings import CHECKS, Finding
from lowering.tile.runner import KernelRun, run_kernel


def make_tile(array: np.typing.ArrayLike, dtype: DType | str | None = None) -> Tile:
    """A tile holding ``array`` (converted to ``dtype`` by the library cast if given), made
    outside any kernel run: for trying ops interactively and in tests."""
    from lowering.tile import core

    rt = core.current()
    a = np.asarray(array)
    dt = as_dtype(dtype if dtype is not None else a.dtype)
    if np.dtype(rt.bk.native(dt.name)) != a.dtype:
        a = a.astype(rt.bk.native(dt.name))
    return rt.new_tile(rt.bk.from_numpy(a, dt.name), dt)


__all__ = [
    "CHECKS",
    "LIMITS",
    "PLATFORMS",
    "SPACES",
    "BudgetReport",
    "DType",
    "Finding",
    "KernelRun",
    "SpaceUsage",
    "Tensor",
    "Tile",
    "as_dtype",
    "make_tile",
    "pl",
    "run_kernel",
]
