"""Tile-language data types (names as in ``pypto.language``: ``pl.FP32``, ``pl.BF16``, ...)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    """An element type: ``name`` as in pypto, size in bytes, kind 'f' | 'i' | 'u' | 'b'."""

    name: str
    itemsize: int
    kind: str

    # the dataclass's own equality, with identity first: every op compares operand dtypes,
    # and the generated __eq__ builds two tuples each time (`!=` of two FP32s: 481 ns
    # generated, 210 ns here; Intel Xeon, timeit)
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not DType:
            return NotImplemented
        return (self.name, self.itemsize, self.kind) == (other.name, other.itemsize, other.kind)

    def __hash__(self) -> int:
        return hash((self.name, self.itemsize, self.kind))

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind in "iu"

    def __repr__(self) -> str:
        return f"pl.{self.name}"


FP32 = DType("FP32", 4, "f")
FP16 = DType("FP16", 2, "f")
BF16 = DType("BF16", 2, "f")
INT8 = DType("INT8", 1, "i")
INT16 = DType("INT16", 2, "i")
INT32 = DType("INT32", 4, "i")
INT64 = DType("INT64", 8, "i")
INDEX = DType("INDEX", 8, "i")
UINT8 = DType("UINT8", 1, "u")
UINT16 = DType("UINT16", 2, "u")
UINT32 = DType("UINT32", 4, "u")
UINT64 = DType("UINT64", 8, "u")
BOOL = DType("BOOL", 1, "b")

ALL = {
    d.name: d
    for d in (FP32, FP16, BF16, INT8, INT16, INT32, INT64, INDEX, UINT8, UINT16, UINT32, UINT64,
              BOOL)
}

_FROM_NUMPY = {
    np.dtype(np.float32): FP32,
    np.dtype(np.float16): FP16,
    np.dtype(ml_dtypes.bfloat16): BF16,
    np.dtype(np.int8): INT8,
    np.dtype(np.int16): INT16,
    np.dtype(np.int32): INT32,
    np.dtype(np.int64): INT64,
    np.dtype(np.uint8): UINT8,
    np.dtype(np.uint16): UINT16,
    np.dtype(np.uint32): UINT32,
    np.dtype(np.uint64): UINT64,
    np.dtype(np.bool_): BOOL,
}


def as_dtype(d: DType | str | np.dtype | type) -> DType:
    """Accept a DType, a pypto name ('BF16', 'bf16'), or a numpy/ml_dtypes dtype."""
    if isinstance(d, DType):
        return d
    if isinstance(d, str) and d.upper() in ALL:
        return ALL[d.upper()]
    try:
        return _FROM_NUMPY[np.dtype(d)]
    except (TypeError, KeyError):
        raise TypeError(f"not a tile dtype: {d!r}") from None


class Level(enum.Enum):
    """Hierarchy levels of ``pl.at`` (only CORE_GROUP/CORE open an in-core scope here)."""

    HOST = "HOST"
    CLUSTER = "CLUSTER"
    CORE_GROUP = "CORE_GROUP"
    CORE = "CORE"
    AIC = "AIC"
    AIV = "AIV"


class MaskPattern:
    """``pl.tile.MaskPattern``: column selectors of the mask form of ``gather``."""

    P0101 = 1  # positions 0, 2, 4, ...
    P1010 = 2  # positions 1, 3, 5, ...
    P0001 = 3  # positions 0, 4, 8, ...
    P0010 = 4  # positions 1, 5, 9, ...
    P0100 = 5  # positions 2, 6, 10, ...
    P1000 = 6  # positions 3, 7, 11, ...
    P1111 = 7  # every position


#: mask pattern -> (first column, stride)
MASK_SELECT = {1: (0, 2), 2: (1, 2), 3: (0, 4), 4: (1, 4), 5: (2, 4), 6: (3, 4), 7: (0, 1)}
