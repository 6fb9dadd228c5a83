"""The numpy + ml_dtypes array backend of the tile emulator (the default, CPU, bit-exact).

Storage: one numpy array per tile / GM tensor in the tile's own dtype (bf16 as
``ml_dtypes.bfloat16``). fp32 elementwise ops are numpy float32 ufuncs: one correctly rounded
IEEE operation each (numpy never contracts to FMA). fp16/bf16 elementwise ops compute in
float32 and round once to the narrow type (correctly rounded for + - * / sqrt, since
24 >= 2·p + 2 for p = 8, 11).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from lowering.backends import _rounding

_NATIVE = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "INDEX": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}

_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
}


class NumpyBackend:
    """Array backend on numpy arrays. Every array op of the emulator goes through here.

    Dtypes are passed as dtype *names* (``"FP32"``, ``"BF16"``, ...), so a backend needs no
    knowledge of the tile language's classes.
    """

    name = "numpy"

    def __str__(self) -> str:
        return "numpy"

    # -- storage -----------------------------------------------------------------------
    def native(self, dtype: str) -> np.dtype:
        """The numpy dtype that stores tile dtype ``dtype``."""
        return _NATIVE[dtype]

    def from_numpy(self, arr: np.ndarray, dtype: str) -> np.ndarray:
        """A fresh backend array holding ``arr`` (which must already have the right dtype)."""
        a = np.asarray(arr)
        if a.dtype != _NATIVE[dtype]:
            raise TypeError(f"array of dtype {a.dtype} given where {dtype} is expected")
        return np.array(a, copy=True, order="C")

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        """A numpy copy of backend array ``x``."""
        return np.array(x, copy=True)

    def full(self, shape: tuple[int, ...], dtype: str, value: float | int) -> np.ndarray:
        """A new array filled with ``value`` (converted to ``dtype`` by the library cast)."""
        return np.full(shape, value, dtype=_NATIVE[dtype])

    def scalar(self, value: float | int, dtype: str) -> Any:
        """A Python number as a backend scalar of ``dtype`` (fp32: the RNE-rounded double)."""
        return _NATIVE[dtype].type(value)

    def read(self, x: np.ndarray, key: Any) -> np.ndarray:
        """A copy of ``x[key]`` (tiles never alias GM)."""
        return np.array(x[key], copy=True, order="C")

    def write(self, x: np.ndarray, key: Any, value: np.ndarray) -> None:
        """``x[key] = value`` in place (``value`` broadcast to the region's shape)."""
        x[key] = value.reshape(x[key].shape)

    def item(self, x: np.ndarray, index: tuple[int, ...]) -> float | int:
        """One element as a Python number."""
        return x[index].item() if x.dtype != _NATIVE["BF16"] else float(x[index])

    def reshape(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A view of ``x`` with a new shape (same element order)."""
        return x.reshape(shape)

    def copy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)

    # -- compute -----------------------------------------------------------------------
    def binary(self, op: str, a: Any, b: Any, dtype: str) -> np.ndarray:
        """Elementwise ``a op b`` with numpy broadcasting, result in ``dtype``."""
        if op == "div" and _NATIVE[dtype].kind in "iu":
            raise TypeError("integer division is not a tile op the emulator supports")
        nat = _NATIVE[dtype]
        if nat == _NATIVE["BF16"] or nat == _NATIVE["FP16"]:
            f32 = np.float32
            r = _BINARY[op](np.asarray(a).astype(f32), np.asarray(b).astype(f32))
            return r.astype(nat)
        r = _BINARY[op](a, b)
        return np.asarray(r).astype(nat, copy=False)

    def unary(self, op: str, x: np.ndarray) -> np.ndarray:
        """Elementwise unary op. neg/abs exact; sqrt/recip correctly rounded in the dtype;
        exp/rsqrt/log computed in float64 and rounded once (faithful, not hardware)."""
        nat = x.dtype
        if op == "neg":
            return np.negative(x)
        if op == "abs":
            return np.abs(x)
        wide = x.astype(np.float32) if nat.itemsize < 4 else x
        if op == "sqrt":
            r = np.sqrt(wide)
        elif op == "recip":
            r = np.divide(np.ones((), wide.dtype), wide)
        elif op in ("exp", "rsqrt", "log"):
            w64 = x.astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = {"exp": np.exp, "log": np.log, "rsqrt": lambda v: 1.0 / np.sqrt(v)}[op](w64)
        else:
            raise KeyError(op)
        return r.astype(nat)

    def row_reduce(self, op: str, x: np.ndarray) -> np.ndarray:
        """Reduce the last axis, keep it as size 1. ``sum``: float64 accumulation (numpy's
        pairwise order), rounded once to the input dtype; max/min exact."""
        if op == "sum":
            acc = np.float64 if _rounding.is_float_dtype(x.dtype) else np.int64
            return x.astype(acc).sum(axis=-1, keepdims=True).astype(x.dtype)
        if op == "max":
            return np.max(x, axis=-1, keepdims=True)
        if op == "min":
            return np.min(x, axis=-1, keepdims=True)
        raise KeyError(op)

    def col_reduce(self, op: str, x: np.ndarray) -> np.ndarray:
        """Reduce the first axis of a 2-D array, keep it as size 1 (sum in float64)."""
        if op == "sum":
            acc = np.float64 if _rounding.is_float_dtype(x.dtype) else np.int64
            return x.astype(acc).sum(axis=0, keepdims=True).astype(x.dtype)
        if op == "max":
            return np.max(x, axis=0, keepdims=True)
        if op == "min":
            return np.min(x, axis=0, keepdims=True)
        raise KeyError(op)

    def matmul(self, a: np.ndarray, b: np.ndarray, out_dtype: str) -> np.ndarray:
        """``a @ b`` for 2-D operands: products exact in float64, summed in float64 (BLAS
        order), rounded once to ``out_dtype`` (FP32) or converted exactly (INT32)."""
        c = np.matmul(a.astype(np.float64), b.astype(np.float64))
        if out_dtype == "INT32":
            return c.astype(np.int32)
        return c.astype(_NATIVE[out_dtype])

    def cast(self, x: np.ndarray, dtype: str, mode: str) -> np.ndarray:
        """Convert to ``dtype`` with rounding ``mode`` (see ``_rounding``)."""
        dst = _NATIVE[dtype]
        src = x.dtype
        if src == dst:
            return np.array(x, copy=True)
        src_float = _rounding.is_float_dtype(src)
        if _rounding.is_float_dtype(dst):
            if src_float and dst.itemsize > src.itemsize:
                return x.astype(dst)  # fp16/bf16 -> fp32, fp32 -> fp64: exact
            return _rounding.round_to_float(x, dst, mode)
        if dst == np.bool_:
            return x != 0
        if src_float:
            return _rounding.round_to_int(x, dst, "trunc" if mode == "none" else mode)
        return _rounding.int_to_int(x, dst)

    def gather_last(self, x: np.ndarray, start: int, step: int) -> np.ndarray:
        """``x[..., start::step]`` as a fresh array."""
        return np.ascontiguousarray(x[..., start::step])

    def concat(self, a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.concatenate([a, b], axis=axis)

    def transpose(self, x: np.ndarray, axis1: int, axis2: int) -> np.ndarray:
        return np.ascontiguousarray(np.swapaxes(x, axis1, axis2))
