"""The numpy + ml_dtypes array backend of the tile emulator (the default, CPU, bit-exact).

Storage: one numpy array per tile / GM tensor in the tile's own dtype (bf16 as
``ml_dtypes.bfloat16``). fp32 elementwise ops are numpy float32 ufuncs: one correctly rounded
IEEE operation each (numpy never contracts to FMA). fp16/bf16 elementwise ops compute in
float32 and round once to the narrow type (correctly rounded for + - * / sqrt, since
24 >= 2·p + 2 for p = 8, 11).
"""

from __future__ import annotations

import math
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

_COMPARE = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}

#: the element-wise binary tile ops as numpy ufuncs (lowering.tile.ops uses them for scalars)
BINARY = {
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
        out = np.empty(shape, _NATIVE[dtype])
        np.copyto(out, value, casting="unsafe")  # np.full's own steps, without its wrapper
        return out

    def scalar(self, value: float | int, dtype: str) -> Any:
        """A Python number as a backend scalar of ``dtype`` (fp32: the RNE-rounded double)."""
        return _NATIVE[dtype].type(value)

    def read(self, x: np.ndarray, key: Any) -> np.ndarray:
        """A copy of ``x[key]`` (tiles never alias GM)."""
        v = x[key]
        return v.copy() if isinstance(v, np.ndarray) else np.array(v)  # C order

    def write(self, x: np.ndarray, key: Any, value: np.ndarray) -> None:
        """``x[key] = value`` in place: ``value`` holds the region's elements (in any shape of
        that size), or those of its trailing axes, repeated along the leading ones (a tile the
        lanes of a loop share, written into each lane's rows)."""
        region = x[key]
        if value.size != region.size:  # the trailing axes the value fills
            for k in range(1, region.ndim):
                if math.prod(region.shape[k:]) == value.size:
                    x[key] = value.reshape(region.shape[k:])
                    return
        x[key] = value.reshape(region.shape)

    def item(self, x: np.ndarray, index: tuple[int, ...]) -> float | int:
        """One element as a Python number."""
        return x[index].item() if x.dtype != _NATIVE["BF16"] else float(x[index])

    def reshape(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A view of ``x`` with a new shape (same element order)."""
        return x.reshape(shape)

    def reshape_view(self, x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
        """``x`` with a new shape, sharing its storage; a reshape that would need a copy (a
        strided window whose elements are not evenly spaced in the new shape) is not a view:
        NotImplementedError naming ``what``."""
        y = x.reshape(shape)
        if y.size and not np.may_share_memory(x, y):  # reshape copied: a fresh allocation
            raise NotImplementedError(f"{what}: this GM window cannot be reshaped in place (its "
                                      "elements are not evenly strided); not emulated")
        return y

    def copy(self, x: np.ndarray) -> np.ndarray:
        return x.copy()  # of its own class (a lane array stays one)

    # -- compute -----------------------------------------------------------------------
    def binary(self, op: str, a: Any, b: Any, dtype: str) -> np.ndarray:
        """Elementwise ``a op b`` with numpy broadcasting, result in ``dtype``."""
        if op == "div" and _NATIVE[dtype].kind in "iu":
            raise TypeError("integer division is not a tile op the emulator supports")
        nat = _NATIVE[dtype]
        if nat == _NATIVE["BF16"] or nat == _NATIVE["FP16"]:
            f32 = np.float32
            r = BINARY[op](np.asarray(a).astype(f32), np.asarray(b).astype(f32))
            return r.astype(nat)
        r = BINARY[op](a, b)
        return np.asarray(r).astype(nat, copy=False)

    def unary(self, op: str, x: np.ndarray) -> np.ndarray:
        """Elementwise unary op. neg/abs/trunc exact; sqrt/recip correctly rounded in the dtype;
        exp/rsqrt/log computed in float64 and rounded once (faithful, not hardware)."""
        nat = x.dtype
        if op == "neg":
            return np.negative(x)
        if op == "abs":
            return np.abs(x)
        if op == "trunc":  # toward zero, exact
            return np.trunc(x)
        wide = x.astype(np.float32) if nat.itemsize < 4 else x
        if op == "sqrt":
            r = np.sqrt(wide)
        elif op == "recip":
            r = np.divide(np.ones((), wide.dtype), wide)
        elif op == "exp":  # raises neither divide nor invalid (no np.errstate: it costs more
            r = np.exp(x.astype(np.float64))  # than the exp of a small tile)
        elif op in ("rsqrt", "log"):
            w64 = x.astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.log(w64) if op == "log" else 1.0 / np.sqrt(w64)
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
        """Reduce the rows of a 2-D array (the second-last axis: a stack of them, each on its
        own), keep it as size 1 (sum in float64)."""
        if op == "sum":
            acc = np.float64 if _rounding.is_float_dtype(x.dtype) else np.int64
            return x.astype(acc).sum(axis=-2, keepdims=True).astype(x.dtype)
        if op == "max":
            return np.max(x, axis=-2, keepdims=True)
        if op == "min":
            return np.min(x, axis=-2, keepdims=True)
        raise KeyError(op)

    def matmul(self, a: np.ndarray, b: np.ndarray, out_dtype: str) -> np.ndarray:
        """``a @ b`` for 2-D operands: products exact in float64, summed in float64 (BLAS
        order), rounded once to ``out_dtype`` (FP32) or converted exactly (INT32). Stacks of
        them (batch dims, the lanes of a loop) are one 2-D product each: the BLAS call a
        single one makes (numpy's stacked matmul sums in its own order, and can be 20x
        slower: float64 [8, 16, 512] @ [512, 128], 40 ms against 2 ms on an Intel Xeon with
        AVX-512)."""
        a, b = a.astype(np.float64), b.astype(np.float64)
        if a.ndim <= 2 and b.ndim <= 2:
            c = np.matmul(a, b)
        else:
            lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a3 = np.broadcast_to(a, lead + a.shape[-2:]).reshape(-1, *a.shape[-2:])
            b3 = np.broadcast_to(b, lead + b.shape[-2:]).reshape(-1, *b.shape[-2:])
            c = np.empty((len(a3), a.shape[-2], b.shape[-1]))
            for i, (x, y) in enumerate(zip(a3, b3, strict=True)):
                np.matmul(x, y, out=c[i])
            # the class of a stacked operand (the lanes' LaneArray), as np.matmul keeps it
            c = c.reshape(lead + c.shape[1:]).view(type(a) if type(a) is not np.ndarray
                                                    else type(b))
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
        return np.swapaxes(x, axis1, axis2).copy()  # C order; a lane array stays one

    def count_nan(self, x: np.ndarray) -> int:
        """How many elements of the float array ``x`` are NaN."""
        return int(np.count_nonzero(np.isnan(x)))

    # -- index, sort and compare ops (lowering.tile.ops_index) ----------------------------
    def arange(self, start: int, step: int, n: int, dtype: str) -> np.ndarray:
        """``start + step·k`` for k < n, computed in int64 and wrapped to the integer ``dtype``
        (two's complement, as the hardware's integer adds)."""
        return (start + step * np.arange(n, dtype=np.int64)).astype(_NATIVE[dtype])

    def bitcast(self, x: np.ndarray, dtype: str) -> np.ndarray:
        """The same bits read as ``dtype`` (same item size)."""
        return np.array(np.ascontiguousarray(x).view(_NATIVE[dtype]), copy=True)

    def take(self, x: np.ndarray, index: np.ndarray, axis: int | None) -> np.ndarray:
        """``axis=None``: ``x.flat[index]``; else ``out[..., k, ...] = x[..., index[..., k,
        ...], ...]`` along ``axis`` (``x`` first cut to ``index``'s extent on the other axes).
        Indices must be in range (the caller checks)."""
        idx = np.asarray(index).astype(np.int64)
        if axis is None:
            return np.ascontiguousarray(np.take(x.reshape(-1), idx))
        cut = tuple(slice(None) if d == axis % x.ndim else slice(0, n)
                    for d, n in enumerate(idx.shape))
        return np.ascontiguousarray(np.take_along_axis(x[cut], idx, axis=axis))

    def compare(self, op: str, a: Any, b: Any) -> np.ndarray:
        """Elementwise comparison ``a op b`` (op in eq ne lt le gt ge) as a bool array."""
        return np.asarray(_COMPARE[op](a, b))

    def select(self, mask: np.ndarray, a: Any, b: Any, dtype: str) -> np.ndarray:
        """``a`` where ``mask`` else ``b``, in ``dtype`` (broadcasting)."""
        return np.where(mask, a, b).astype(_NATIVE[dtype])

    def pack_bits(self, mask: np.ndarray, width: int) -> np.ndarray:
        """Bool ``[..., C]`` -> uint8 ``[..., width]``: bit ``c % 8`` (LSB first) of byte
        ``c // 8``; bytes past ``ceil(C / 8)`` are zero."""
        packed = np.packbits(mask, axis=-1, bitorder="little")
        out = np.zeros(mask.shape[:-1] + (width,), np.uint8)
        out[..., :packed.shape[-1]] = packed
        return out

    def unpack_bits(self, packed: np.ndarray, n: int) -> np.ndarray:
        """The inverse of ``pack_bits``: the first ``n`` bits of each row as bools."""
        return np.unpackbits(packed, axis=-1, count=n, bitorder="little").astype(bool)

    def arg_reduce(self, op: str, x: np.ndarray, axis: int) -> np.ndarray:
        """Index (int32, axis kept as size 1) of the first maximum ('max') / minimum ('min')
        along ``axis``, scanning as ``best = x[0]; if x[k] > best: best, i = x[k], k``: a NaN
        never replaces the best, a NaN first element stays the answer (index 0)."""
        w = x.astype(np.float64) if _rounding.is_float_dtype(x.dtype) else x.astype(np.int64)
        first = np.take(w, [0], axis=axis)
        if w.dtype == np.float64:
            w = np.where(np.isnan(w), -np.inf if op == "max" else np.inf, w)
        i = (np.argmax if op == "max" else np.argmin)(w, axis=axis, keepdims=True)
        if w.dtype == np.float64:
            i = np.where(np.isnan(first), 0, i)
        return i.astype(np.int32)

    def sort32(self, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Each 32-element block of each row of ``src`` (FP32 / FP16) sorted with its uint32
        payload ``idx`` (broadcast over rows): value descending, equal values by smaller
        payload first, NaN ordered as -inf. Output: the pairs in ``src``'s dtype, FP32
        ``[value, index bits]`` (last dim ×2), FP16 ``[value, 0, index lo, index hi]`` (×4)."""
        lead, c = src.shape[:-1], src.shape[-1]
        v = src.reshape(-1, c // 32, 32)
        i = np.broadcast_to(np.ascontiguousarray(idx).view(np.uint32).reshape(-1, c),
                            (v.shape[0], c)).reshape(v.shape)
        key = _sort_key(v)
        order = np.lexsort((i, -key), axis=-1)
        v, i = np.take_along_axis(v, order, -1), np.take_along_axis(i, order, -1)
        return _pairs(v, i).reshape(lead + (-1,))

    def mrgsort_blocks(self, x: np.ndarray, block_len: int) -> np.ndarray:
        """Format-1 merge: every 4 consecutive runs of ``block_len`` elements (value-index
        structs of 8 bytes) of each row merged into one descending run (see ``_merge``)."""
        k = 8 // x.dtype.itemsize
        s = x.reshape(-1, x.shape[-1] // (4 * block_len), 4, block_len // k, k)
        return _merge(s).reshape(x.shape)

    def mrgsort_lists(self, lists: list[np.ndarray], out_structs: int,
                      exhausted: bool) -> tuple[np.ndarray, int]:
        """Format-2 merge of 1-row struct lists into ``out_structs`` structs (see ``_merge``);
        ``exhausted``: stop after the first list runs out. Returns (structs as a flat row,
        number written)."""
        k = 8 // lists[0].dtype.itemsize
        parts = [a.reshape(-1, k) for a in lists]
        whole = np.concatenate(parts)
        key = np.concatenate([np.minimum.accumulate(_sort_key(p[:, 0])) if len(p) else
                              np.zeros(0) for p in parts])
        order = np.argsort(-key, kind="stable")
        count = min(out_structs, len(order))
        if exhausted and count:
            ends = np.cumsum([len(p) for p in parts]) - 1
            pos = np.empty(len(order), np.int64)
            pos[order] = np.arange(len(order))
            done = [pos[e] + 1 if len(p) else 1 for e, p in zip(ends, parts, strict=True)]
            count = min(count, *done)
        return np.ascontiguousarray(whole[order[:count]]).reshape(-1), count


def _sort_key(v: np.ndarray) -> np.ndarray:
    """Float64 sort key of sort values: NaN as -inf (the hardware's NaN order is
    unspecified); +0 and -0 equal (the hardware compares values, not bits)."""
    k = v.astype(np.float64)
    return np.where(np.isnan(k), -np.inf, k)


def _pairs(v: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Value-index structs of 8 bytes: FP32 ``[value, index]``, FP16 ``[value, 0, index lo,
    index hi]`` (little-endian), in the values' dtype."""
    if v.dtype.itemsize == 4:
        out = np.stack([v.view(np.uint32), i.astype(np.uint32)], axis=-1)
        return out.view(v.dtype)
    i = i.astype(np.uint32)
    out = np.stack([v.view(np.uint16), np.zeros_like(v, np.uint16),
                    (i & 0xFFFF).astype(np.uint16), (i >> 16).astype(np.uint16)], axis=-1)
    return out.view(v.dtype)


def _merge(s: np.ndarray) -> np.ndarray:
    """Greedy 4-way merge along axis -3 of runs ``s[..., run, struct, slot]`` (value in slot
    0): repeatedly take the run whose head value is largest, the lowest run on ties (pto-isa
    TMRGSORT). Done without a loop: that merge emits each run in order and equals a stable
    descending sort of all structs, runs concatenated in order, keyed by each run's running
    minimum (equal to the values when the runs are sorted; exact also for unsorted runs)."""
    key = np.minimum.accumulate(_sort_key(s[..., 0]), axis=-1)
    g = s.shape[:-3]
    flat = s.reshape(g + (-1, s.shape[-1]))
    order = np.argsort(-key.reshape(g + (-1,)), axis=-1, kind="stable")
    return np.take_along_axis(flat, order[..., None], axis=-2)
