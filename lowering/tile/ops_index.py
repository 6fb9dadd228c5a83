"""Op rules and ``pl`` names of the index group (see lowering.tile.surface): scalar
``min`` / ``max`` / ``cast``, ``arange``, the index / mask gathers, ``sort32`` / ``mrgsort``,
arg-reductions, compares and selects, ``fmod``, exp-diff expands, ``maximums`` / ``minimums``.

Semantics are pypto's (python/pypto/language/op/{tile,tensor,unified}_ops.py and the C++ type
deduction) and those of the pto-isa instructions the ops lower to (TCI, TGATHER, TSORT32,
TMRGSORT, TROWARGMAX, TCMP, TSEL, TFMOD(S), T{ROW,COL}EXPANDEXPDIF), as stated in each
docstring. A tile here stands for both a pypto Tensor and a Tile (the emulator runs tensor-level
code on tiles), so where the two levels differ the *unified* ``pl.<op>`` follows the tensor
level (``pl.cmp``: 0/1 values) and ``pl.tile.<op>`` the tile level (``pl.tile.cmp``: a packed
bit mask). Operands that break an instruction's stated constraint raise ``OpConstraint``, a
kernel defect.

Numerics: sorts, merges, gathers, compares, selects and arg-reductions are exact (data
movement and comparisons); ``fmod`` and the exp-diff expands are compositions of the emulator's
elementwise ops in the hardware's order (see each docstring), whose ``exp`` is the float64
value rounded once — deterministic, not the hardware's approximation.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from lowering.tile import core, ops_data
from lowering.tile.core import Run, Tensor, Tile, fmt_site
from lowering.tile.dtypes import (
    BOOL,
    FP16,
    FP32,
    INDEX,
    INT16,
    INT32,
    MASK_SELECT,
    UINT16,
    UINT32,
    as_dtype,
)
from lowering.tile.findings import KernelDefect, OutOfBounds
from lowering.tile.lanes import Lanes, has_lanes
from lowering.tile.ops import _ints, _tile, apply, rule
from lowering.tile.surface import export


class OpConstraint(KernelDefect, ValueError):
    """Operands that break a constraint the hardware instruction states (a sort row whose
    length is not a multiple of 32, a merge of multi-row tiles, ...): a defect of the kernel."""


def _site() -> str:
    return fmt_site(core.caller_site())


def _rows(t: Tile) -> int:
    return math.prod(t.shape[:-1])


def _whole(op: str, *ts: Tile) -> None:
    """These ops are emulated on fully valid operands only (ops_data: valid shapes)."""
    for t in ts:
        if t.valid is not None:
            raise NotImplementedError(f"pl.{op} of {t!r} with the valid shape {list(t.valid)}: a "
                                      f"partially valid operand is not emulated for this op "
                                      f"({_site()}); pl.fillpad it first")


# -- scalars ---------------------------------------------------------------------------------


def _scalar_operand(v: Any, op: str) -> Any:
    if type(v) is Lanes:  # one number per iteration of a loop running in lanes
        return v.v
    if isinstance(v, (Tile, Tensor)):
        raise TypeError(f"pl.{op} takes two scalars, got {v!r} ({_site()}); for tiles use "
                        f"pl.{op}imum / pl.{op}imums (elementwise) or pl.row_{op} / pl.col_{op} "
                        "(reductions)")
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"pl.{op}: expected an int or a scalar, got {v!r} ({_site()})")
    return v


@export("min", spaces=("pl", "tile"))
def scalar_min(lhs: Any, rhs: Any) -> Any:
    """``pl.min(a, b)``: the smaller of two scalars (pypto ``tile_ops.min``, ``arith.minsi``
    on index values); a plain Python number."""
    a, b = _scalar_operand(lhs, "min"), _scalar_operand(rhs, "min")
    return Lanes.of(np.minimum(a, b)) if has_lanes((lhs, rhs)) else min(a, b)


@export("max", spaces=("pl", "tile"))
def scalar_max(lhs: Any, rhs: Any) -> Any:
    """``pl.max(a, b)``: the larger of two scalars; a plain Python number."""
    a, b = _scalar_operand(lhs, "max"), _scalar_operand(rhs, "max")
    return Lanes.of(np.maximum(a, b)) if has_lanes((lhs, rhs)) else max(a, b)


def cast_scalar(rt: Run, value: Any, target_type: Any, mode: str | int) -> int | float:
    """``pl.cast`` of a scalar, as pypto's scalar cast lowers to MLIR ``arith``: a Python int is
    an INDEX (i64) value, a Python float an FP32 one (pypto's literal types; values read from
    tensors are exact in those). int→int wraps (``trunci``), int→float and float→float round
    to nearest even (``sitofp`` / ``truncf``), float→int truncates toward zero (``fptosi``; a
    value outside the target range or NaN is undefined there and raises here); float↔INDEX is
    rejected as by pypto. A Python bool is a scalar comparison's BOOL (i1) result: pypto's
    codegen widens it with ``arith.extsi`` / ``index_cast`` / ``sitofp`` (BOOL is not an
    unsigned type there), so True becomes -1 (-1.0; all ones for unsigned targets) — which is
    why kernels square such a "bit". Only the default mode is accepted (pypto raises on
    others). The result is a plain Python number: later scalar arithmetic is Python's, not the
    dtype's."""
    if mode not in ("round", 2):
        raise TypeError(f"pl.cast: scalar inputs support only the default mode, got {mode!r} "
                        f"({_site()})")
    dt = as_dtype(target_type)
    if isinstance(value, bool):  # i1, sign-extended (pto_scalar_expr_codegen.cpp, Cast)
        if dt == BOOL:
            return value
        value = -1 if value else 0
    if isinstance(value, numbers.Integral):
        v = int(value)
        if not -(1 << 63) <= v < (1 << 63):
            raise OverflowError(f"pl.cast: {v} does not fit the INDEX type ({_site()})")
        if dt.is_int or dt == BOOL:
            bits = 1 if dt == BOOL else 8 * dt.itemsize
            v &= (1 << bits) - 1
            return v - (1 << bits) if dt.kind == "i" and v >> (bits - 1) else v
        return rt.bk.item(rt.bk.cast(rt.bk.full((), "INT64", v), dt.name, "rint"), ())
    f32 = rt.bk.cast(rt.bk.full((), "FP64", float(value)), "FP32", "rint")
    if dt.is_float:
        return float(rt.bk.item(rt.bk.cast(f32, dt.name, "rint"), ()))
    if dt == INDEX:
        raise TypeError(f"pl.cast: a float scalar cannot be cast to INDEX ({_site()})")
    x = rt.bk.item(f32, ())
    info = np.iinfo(rt.bk.native(dt.name)) if dt != BOOL else None
    if math.isnan(x) or info is None or not info.min - 1 < x < info.max + 1:
        raise OpConstraint(f"pl.cast of the scalar {x!r} to {dt.name} is undefined "
                           f"(fptosi out of range) ({_site()})")
    return int(x)


# -- arange ----------------------------------------------------------------------------------


@rule("arange")
def _arange(rt: Run, start: Any, shape: Any, dtype: Any = INT32, descending: bool = False) -> Tile:
    dt, shp = as_dtype(dtype), _ints(shape)
    if dt not in (INT16, INT32, UINT16, UINT32):
        raise TypeError(f"pl.arange: dtype must be INT16, INT32, UINT16 or UINT32, got {dt.name} "
                        f"({_site()})")
    if isinstance(start, bool) or not isinstance(start, numbers.Integral):
        raise TypeError(f"pl.arange: start must be an integer, got {start!r} ({_site()})")
    if not shp or min(shp) <= 0 or shp[-1] == 1 or any(d != 1 for d in shp[:-1]):
        raise ValueError(f"pl.arange: shape {list(shp)} must be [1, ..., 1, N] with N > 1 "
                         f"(pto.tci fills one row) ({_site()})")
    data = rt.bk.arange(int(start), -1 if descending else 1, shp[-1], dt.name)
    return rt.new_tile(rt.bk.reshape(data, shp), dt)


@export("arange", spaces=("pl", "tensor", "tile"))
def arange(start: int, shape: Any, dtype: Any = INT32, descending: bool = False) -> Tile:
    """``pl.arange(start, [1, N], dtype=pl.INT32)`` (pypto ``ci`` / ``pto.tci``): the row
    ``start + k`` (``start - k`` if ``descending``), k < N, wrapped to ``dtype`` (INT16,
    INT32, UINT16 or UINT32). Leading dims must be 1 and N > 1."""
    return apply("arange", start, shape, dtype, descending)


export("ci", spaces=("tensor", "tile"))(arange)


# -- gathers ---------------------------------------------------------------------------------

_GATHER_SRC = (FP16, FP32, INT16, INT32)


def _check_gather_dtypes(op: str, a: Tile, ix: Tile) -> None:
    if a.dtype not in _GATHER_SRC:
        raise TypeError(f"{op}: source dtype must be FP16, FP32, INT16 or INT32, got {a!r} "
                        f"({_site()})")
    if not (ix.dtype == INT32 or (ix.dtype == INT16 and a.dtype.itemsize == 2)):
        raise TypeError(f"{op}: index must be INT32 (or INT16 with a 16-bit source), got {ix!r} "
                        f"({_site()})")


def _check_index(rt: Run, op: str, ix: Tile, n: int, what: str) -> None:
    idx = rt.bk.to_numpy(ix.data)
    bad = np.flatnonzero((idx < 0) | (idx >= n))
    if bad.size:
        pos = tuple(int(p) for p in np.unravel_index(bad[0], idx.shape))
        raise OutOfBounds(f"{op} at {_site()}: index {int(idx[pos])} at {list(pos)} of {ix!r} is "
                          f"outside [0, {n}) ({what}; {bad.size} such indices)")


@rule("gather")
def _gather(rt: Run, x: Any, dim: Any = None, index: Any = None, *, mask_pattern: Any = None,
            output_dtype: Any = None, kvalue: Any = None, cmp_mode: Any = None,
            out_cols: Any = None, offset: int = 0, count_dtype: Any = None) -> Tile:
    """pypto ``tensor.gather``: the index form ``gather(x, dim, index)`` (``out[..., k, ...]
    = x[..., index[..., k, ...], ...]`` along ``dim``, torch.gather; ``index`` INT32, or
    INT16 with a 16-bit ``x``; its extent on the other axes at most ``x``'s) or the mask form
    ``gather(x, mask_pattern=P, output_dtype=None)`` (the columns the pattern selects;
    ``output_dtype`` of the same width re-reads the bits, e.g. sort32 index lanes as INT32).
    An index out of range raises OutOfBounds. The compare form is not emulated."""
    is_index, is_mask = dim is not None or index is not None, mask_pattern is not None
    is_cmp = kvalue is not None or cmp_mode is not None or out_cols is not None
    if is_index + is_mask + is_cmp != 1:
        raise ValueError(f"pl.gather: give exactly one of the index form (dim, index), the mask "
                         f"form (mask_pattern=) or the compare form ({_site()})")
    if is_cmp:
        raise NotImplementedError(f"pl.gather compare form (kvalue=, cmp_mode=, out_cols=) is "
                                  f"not emulated ({_site()})")
    if is_mask:
        return _gather_mask(rt, x, mask_pattern, output_dtype)
    if output_dtype is not None or dim is None or index is None:
        raise ValueError(f"pl.gather index form needs dim and index and takes no output_dtype "
                         f"({_site()})")
    a, ix = _tile(rt, x, op="gather"), _tile(rt, index, op="gather")
    _whole("gather", a, ix)
    _check_gather_dtypes("pl.gather", a, ix)
    d = int(dim) + (a.ndim if int(dim) < 0 else 0)
    if a.ndim < 2 or ix.ndim != a.ndim or not 0 <= d < a.ndim:
        raise ValueError(f"pl.gather: {a!r} and index {ix!r} need the same rank >= 2 and dim "
                         f"{dim} in range ({_site()})")
    if any(ix.shape[i] > a.shape[i] for i in range(a.ndim) if i != d):
        raise ValueError(f"pl.gather: index {ix!r} exceeds {a!r} off the gather axis "
                         f"({_site()})")
    _check_index(rt, "pl.gather", ix, a.shape[d], f"dim {d} of {a!r}")
    return rt.new_tile(rt.bk.take(a.data, ix.data, d), a.dtype)


def _gather_mask(rt: Run, x: Any, mask_pattern: Any, output_dtype: Any) -> Tile:
    a = _tile(rt, x, op="gather")
    _whole("gather", a)
    if int(mask_pattern) not in MASK_SELECT:
        raise ValueError(f"pl.gather: mask_pattern must be 1..7, got {mask_pattern!r} "
                         f"({_site()})")
    if a.dtype not in _GATHER_SRC or a.ndim != 2:
        raise TypeError(f"pl.gather mask form needs a 2-D FP16/FP32/INT16/INT32 source, got "
                        f"{a!r} ({_site()})")
    start, step = MASK_SELECT[int(mask_pattern)]
    if a.shape[-1] % step:
        raise ValueError(f"pl.gather: last dim {a.shape[-1]} of {a!r} not divisible by {step}")
    data = rt.bk.gather_last(a.data, start, step)
    out = a.dtype if output_dtype is None else as_dtype(output_dtype)
    if out.itemsize != a.dtype.itemsize:
        raise TypeError(f"pl.gather: output_dtype {out.name} must have the width of {a!r} "
                        f"({_site()})")
    if out != a.dtype:  # a bit reinterpretation, not a conversion (TGATHER mask form)
        data = rt.bk.bitcast(data, out.name)
    return rt.new_tile(data, out)


@rule("tile_gather")
def _tile_gather(rt: Run, src: Any, indices: Any, tmp: Any) -> Tile:
    a, ix = _tile(rt, src, op="tile.gather"), _tile(rt, indices, op="tile.gather")
    _tile(rt, tmp, op="tile.gather")
    _whole("tile.gather", a, ix)
    _check_gather_dtypes("pl.tile.gather", a, ix)
    _check_index(rt, "pl.tile.gather", ix, math.prod(a.shape), f"the {math.prod(a.shape)} "
                 f"elements of {a!r}")
    return rt.new_tile(rt.bk.take(a.data, ix.data, None), a.dtype)


@export("gather", spaces=("tile",))
def tile_gather(src: Tile, indices: Tile, tmp: Tile) -> Tile:
    """``pl.tile.gather(src, indices, tmp)`` (TGATHER index form): ``dst[i, j] =
    src.flat[indices[i, j]]``, the index into ``src`` flattened row-major; result shaped
    like ``indices``, dtype of ``src``. An index outside ``src`` raises OutOfBounds."""
    return apply("tile_gather", src, indices, tmp)


@export("gather_mask", spaces=("tile",))
def gather_mask(src: Tile, mask_pattern: int, *, output_dtype: Any = None) -> Tile:
    """``pl.tile.gather_mask(src, pattern, output_dtype=None)``: the mask form of gather."""
    return apply("gather", src, mask_pattern=mask_pattern, output_dtype=output_dtype)


# -- sort32 / mrgsort ------------------------------------------------------------------------


def _sort_dtype(op: str, t: Tile) -> None:
    if t.dtype not in (FP16, FP32):
        raise TypeError(f"pl.{op}: values must be FP16 or FP32, got {t!r} ({_site()})")


@rule("sort32")
def _sort32(rt: Run, src: Any, idx: Any) -> Tile:
    s, ix = _tile(rt, src, op="sort32"), _tile(rt, idx, op="sort32")
    _whole("sort32", s, ix)
    _sort_dtype("sort32", s)
    if ix.dtype not in (UINT32, INT32):
        raise TypeError(f"pl.sort32: idx must be a UINT32 (or INT32) payload, got {ix!r} "
                        f"({_site()})")
    if s.shape[-1] % 32:
        raise OpConstraint(f"pl.sort32 of {s!r}: the row length {s.shape[-1]} is not a multiple "
                           f"of 32 (3-operand TSORT32) ({_site()})")
    if ix.shape[-1] != s.shape[-1] or _rows(ix) not in (1, _rows(s)):
        raise ValueError(f"pl.sort32: idx {ix!r} must be [rows, C] or [1, C] for src {s!r} "
                         f"({_site()})")
    return rt.new_tile(rt.bk.sort32(s.data, ix.data), s.dtype)


@export("sort32", spaces=("pl", "tensor", "tile"))
def sort32(src: Tile, idx: Tile) -> Tile:
    """TSORT32: each 32-element block of each row of ``src`` (FP16/FP32) sorted by value,
    descending, carrying the UINT32 payload ``idx`` (``[rows, C]`` or one ``[1, C]`` row for
    all rows); equal values keep the smaller payload first; NaN sorts as -inf (the
    hardware's NaN order is unspecified). The result holds 8-byte value-index structs in
    ``src``'s dtype: FP32 ``[value, index bits]`` (last dim ×2), FP16 ``[value, 0, index lo,
    index hi]`` (×4); read the index lanes with ``pl.gather(..., output_dtype=pl.INT32)``."""
    return apply("sort32", src, idx)


@rule("mrgsort")
def _mrgsort(rt: Run, srcs: tuple, tmp: Any, exhausted: bool, block_len: Any,
             tile_level: bool) -> Tile:
    if block_len is not None:
        if len(srcs) != 1 or tmp is not None or exhausted:
            raise ValueError(f"pl.mrgsort: block_len= (format 1) takes one source and no tmp / "
                             f"exhausted ({_site()})")
        return _mrgsort1(rt, srcs[0], block_len)
    if not 2 <= len(srcs) <= 4:
        raise ValueError(f"pl.mrgsort needs block_len= or 2-4 sources ({_site()})")
    if tile_level and tmp is None:
        raise ValueError(f"pl.tile.mrgsort format 2 requires tmp ({_site()})")
    ts = [_tile(rt, x, op="mrgsort") for x in srcs]
    _whole("mrgsort", *ts)
    for t in ts:
        _sort_dtype("mrgsort", t)
        if t.dtype != ts[0].dtype or t.shape[:-1] != ts[0].shape[:-1]:
            raise TypeError(f"pl.mrgsort: sources {ts} differ in dtype or rows ({_site()})")
        if _rows(t) != 1 or t.shape[-1] % (8 // t.dtype.itemsize):
            raise OpConstraint(f"pl.mrgsort: source {t!r} must be one row of whole 8-byte "
                               f"structs ({_site()})")
    shape = ts[0].shape[:-1] + (sum(t.shape[-1] for t in ts),)
    if tmp is not None:
        shape = _tile(rt, tmp, op="mrgsort").shape
    k, dt = 8 // ts[0].dtype.itemsize, ts[0].dtype
    data, n = rt.bk.mrgsort_lists([t.data for t in ts], shape[-1] // k, bool(exhausted))
    out = rt.bk.full(shape, dt.name, float("nan"))  # past the merged structs: undefined
    if n:
        rt.bk.write(out, (slice(None),) * (len(shape) - 1) + (slice(0, n * k),), data)
    return rt.new_tile(out, dt)


def _mrgsort1(rt: Run, src: Any, block_len: Any) -> Tile:
    a = _tile(rt, src, op="mrgsort")
    _whole("mrgsort", a)
    _sort_dtype("mrgsort", a)
    bl = int(block_len)
    if bl <= 0 or bl % 64:
        raise ValueError(f"pl.mrgsort: block_len must be a positive multiple of 64, got "
                         f"{block_len!r} ({_site()})")
    w = a.shape[-1]
    if _rows(a) != 1 or w % (4 * bl) or not 1 <= w // (4 * bl) <= 255:
        raise OpConstraint(f"pl.mrgsort(block_len={bl}) of {a!r}: TMRGSORT needs one row whose "
                           f"length is 1..255 times 4·block_len = {4 * bl} ({_site()})")
    return rt.new_tile(rt.bk.mrgsort_blocks(a.data, bl), a.dtype)


def _mrgsort_api(src0: Any, src1: Any, src2: Any, src3: Any, tmp: Any, exhausted: bool,
                 block_len: Any, tile_level: bool) -> Tile:
    srcs = (src0, src1, src2, src3)
    n = next((i for i, s in enumerate(srcs) if s is None), 4)
    if any(s is not None for s in srcs[n:]):
        raise ValueError(f"pl.mrgsort: sources must be given in order ({_site()})")
    return apply("mrgsort", srcs[:n], tmp, exhausted, block_len, tile_level)


@export("mrgsort", spaces=("pl",))
def mrgsort(src0: Tile, src1: Tile | None = None, src2: Tile | None = None,
            src3: Tile | None = None, tmp: Tile | None = None, *, exhausted: bool = False,
            block_len: int | None = None) -> Tile:
    """TMRGSORT. Format 1, ``mrgsort(src, block_len=L)``: ``src`` (one row of value-index
    structs, as sort32 makes them) holds runs of ``L`` elements (L a multiple of 64; the row
    1..255 groups of 4 runs); each group of 4 runs is merged into one descending run. Format
    2, ``mrgsort(s0, s1[, s2[, s3]][, tmp], exhausted=False)``: the lists merged into one row
    shaped like ``tmp`` (without tmp, as at tensor level: the lists' total length);
    ``exhausted=True`` stops when the first list runs out (the rest of the row is undefined:
    NaN here). The merge takes the largest head, the earliest list on ties (pto-isa), and is
    exact for unsorted runs too."""
    return _mrgsort_api(src0, src1, src2, src3, tmp, exhausted, block_len, False)


@export("mrgsort", spaces=("tile",))
def tile_mrgsort(src0: Tile, src1: Tile | None = None, src2: Tile | None = None,
                 src3: Tile | None = None, tmp: Tile | None = None, exhausted: bool = False,
                 *, block_len: int | None = None) -> Tile:
    """``pl.tile.mrgsort``: as ``pl.mrgsort``; format 2 requires ``tmp``."""
    return _mrgsort_api(src0, src1, src2, src3, tmp, exhausted, block_len, True)


@export("mrgsort", spaces=("tensor",))
def tensor_mrgsort(src0: Tile, src1: Tile | None = None, src2: Tile | None = None,
                   src3: Tile | None = None, *, exhausted: bool = False,
                   block_len: int | None = None) -> Tile:
    """``pl.tensor.mrgsort``: as ``pl.mrgsort`` without ``tmp`` (the merged row's length is
    the lists' total)."""
    return _mrgsort_api(src0, src1, src2, src3, None, exhausted, block_len, False)


# -- arg-reductions --------------------------------------------------------------------------


def _arg_rule(name: str, op: str, axis: str) -> None:
    def fn(rt: Run, x: Any, tmp_tile: Any = None) -> Tile:
        a = _tile(rt, x, op=name)
        if tmp_tile is not None:
            _tile(rt, tmp_tile, op=name)
        if a.dtype.itemsize not in (2, 4) or a.dtype == BOOL:
            raise TypeError(f"pl.{name}: source must be a 2- or 4-byte type, got {a!r} "
                            f"({_site()})")
        if axis == "col" and a.ndim != 2:
            raise ValueError(f"pl.{name} needs a 2-D tile, got {a!r} ({_site()})")
        ax = -1 if axis == "row" else 0
        v = ops_data.valid_box(a)  # the scan covers the valid cells only
        src = a if a.valid is None else ops_data.view(a, v)
        out = rt.new_tile(rt.bk.arg_reduce(op, src.data, ax), INT32)
        if a.valid is None:
            return out
        full = a.shape[:-1] + (1,) if axis == "row" else (1,) + a.shape[1:]
        return ops_data.embed(rt, out, full, tuple(out.shape))

    fn.__name__ = name
    rule(name)(fn)

    def api(input: Any, tmp_tile: Any = None) -> Tile:  # noqa: A002
        return apply(name, input, tmp_tile)

    api.__name__ = api.__qualname__ = name
    api.__doc__ = (f"``pl.{name}(x[, tmp_tile])``: INT32 index of the first {op}imum along "
                   f"{'each row (shape [rows, 1])' if axis == 'row' else 'each column ([1, C])'}"
                   f" (TROW/TCOLARG{op.upper()}: scanning, a later element replaces the best "
                   "only if strictly better; NaN never does, a NaN first element stays)")
    export(name, spaces=("pl", "tensor", "tile"))(api)


for _axis in ("row", "col"):
    for _op in ("max", "min"):
        _arg_rule(f"{_axis}_arg{_op}", _op, _axis)


# -- compares and selects --------------------------------------------------------------------

_CMP = ("eq", "ne", "lt", "le", "gt", "ge")


def _compare(rt: Run, lhs: Any, rhs: Any, cmp_type: Any, op: str) -> tuple[Tile, Any]:
    a = _tile(rt, lhs, op=op)
    if isinstance(cmp_type, bool) or cmp_type not in range(6):
        raise ValueError(f"pl.{op}: cmp_type must be 0..5 (EQ NE LT LE GT GE), got "
                         f"{cmp_type!r} ({_site()})")
    if isinstance(rhs, numbers.Number):  # compared in the tile's dtype (TCMPS scalar)
        if a.dtype.is_int and not float(rhs).is_integer():
            raise TypeError(f"pl.{op}: the non-integral scalar {rhs!r} against the integer "
                            f"tile {a!r} ({_site()})")
        b = rt.bk.scalar(rhs, a.dtype.name)
    else:
        bt = _tile(rt, rhs, op=op)
        if bt.shape != a.shape or bt.dtype != a.dtype:
            raise TypeError(f"pl.{op}: {a!r} and {bt!r} differ in shape or dtype ({_site()})")
        b = bt.data
    return a, rt.bk.compare(_CMP[cmp_type], a.data, b)


@rule("cmp")
def _cmp(rt: Run, lhs: Any, rhs: Any, cmp_type: int = 0) -> Tile:
    a, mask = _compare(rt, lhs, rhs, cmp_type, "cmp")
    return rt.new_tile(rt.bk.select(mask, 1, 0, a.dtype.name), a.dtype)


@export("cmp", spaces=("pl", "tensor"))
def cmp(lhs: Any, rhs: Any, cmp_type: int = 0) -> Tile:
    """``pl.cmp(a, b, cmp_type)`` (tensor level): 1 where ``a op b`` else 0, in ``a``'s
    dtype; ``b`` a tile of the same shape and dtype or a scalar (converted to ``a``'s dtype);
    cmp_type 0..5 = EQ NE LT LE GT GE (IEEE: NaN compares unequal)."""
    return apply("cmp", lhs, rhs, cmp_type)


@rule("cmp_mask")
def _cmp_mask(rt: Run, lhs: Any, rhs: Any, cmp_type: int = 0) -> Tile:
    a, mask = _compare(rt, lhs, rhs, cmp_type, "tile.cmp")
    _whole("tile.cmp", a)
    width = -(-math.ceil(a.shape[-1] / 8) // 32) * 32
    return rt.new_tile(rt.bk.pack_bits(mask, width), as_dtype("UINT8"))


@export("cmp", spaces=("tile",))
def tile_cmp(lhs: Tile, rhs: Tile, cmp_type: int = 0) -> Tile:
    """``pl.tile.cmp`` / ``pl.cmps`` (TCMP / TCMPS): a packed predicate mask, UINT8 ``[...,
    ceil(C / 8) rounded up to 32]``; bit ``c % 8`` (LSB first) of byte ``c // 8`` is
    ``a[..., c] op b``, the padding bytes 0. Consume it with ``pl.sel`` / ``pl.sels``."""
    return apply("cmp_mask", lhs, rhs, cmp_type)


export("cmps", spaces=("pl", "tile"))(tile_cmp)


def _mask_bits(rt: Run, mask: Any, shape: tuple, op: str) -> Any:
    m = _tile(rt, mask, op=op)
    _whole(op, m)
    if m.dtype.name != "UINT8" or m.shape[:-1] != shape[:-1] or 8 * m.shape[-1] < shape[-1]:
        raise TypeError(f"pl.{op}: mask {m!r} is not a packed predicate mask for {list(shape)} "
                        f"(make it with pl.tile.cmp / pl.cmps) ({_site()})")
    return rt.bk.unpack_bits(m.data, shape[-1])


@rule("sel")
def _sel(rt: Run, mask: Any, lhs: Any, rhs: Any, tmp: Any) -> Tile:
    a, b = _tile(rt, lhs, op="sel"), _tile(rt, rhs, op="sel")
    _whole("sel", a, b)
    _tile(rt, tmp, op="sel")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise TypeError(f"pl.sel: {a!r} and {b!r} differ in shape or dtype ({_site()})")
    bits = _mask_bits(rt, mask, a.shape, "sel")
    return rt.new_tile(rt.bk.select(bits, a.data, b.data, a.dtype.name), a.dtype)


@export("sel", spaces=("pl", "tile"))
def sel(mask: Tile, lhs: Tile, rhs: Tile, tmp: Tile) -> Tile:
    """TSEL: ``lhs`` where the packed mask bit is set, else ``rhs``."""
    return apply("sel", mask, lhs, rhs, tmp)


@rule("sels")
def _sels(rt: Run, mask: Any, src: Any, tmp: Any, scalar: Any) -> Tile:
    a = _tile(rt, src, op="sels")
    _whole("sels", a)
    _tile(rt, tmp, op="sels")
    bits = _mask_bits(rt, mask, a.shape, "sels")
    s = rt.bk.scalar(scalar, a.dtype.name)
    return rt.new_tile(rt.bk.select(bits, a.data, s, a.dtype.name), a.dtype)


@export("sels", spaces=("pl", "tile"))
def sels(mask: Tile, src: Tile, tmp: Tile, scalar: Any) -> Tile:
    """TSELS: ``src`` where the packed mask bit is set, else ``scalar`` (in ``src``'s
    dtype)."""
    return apply("sels", mask, src, tmp, scalar)


# -- fmod, exp-diff expands, scalar max / min ------------------------------------------------


@rule("fmod")
def _fmod(rt: Run, lhs: Any, rhs: Any) -> Tile:
    a = _tile(rt, lhs, op="fmod")
    if a.dtype != FP32:
        raise TypeError(f"pl.fmod: only FP32 is supported (TFMOD), got {a!r} ({_site()})")
    if isinstance(rhs, numbers.Number):
        b = rt.bk.scalar(rhs, "FP32")
    else:
        bt = _tile(rt, rhs, op="fmod")
        if bt.shape != a.shape or bt.dtype != FP32:
            raise TypeError(f"pl.fmod: {a!r} and {bt!r} differ ({_site()})")
        b = bt.data
    q = rt.bk.unary("trunc", rt.bk.binary("div", a.data, b, "FP32"))
    return rt.new_tile(rt.bk.binary("sub", a.data, rt.bk.binary("mul", q, b, "FP32"), "FP32"),
                       FP32)


@export("fmod", "fmods", spaces=("pl", "tensor", "tile"))
def fmod(lhs: Any, rhs: Any) -> Tile:
    """``pl.fmod(a, b)`` / ``pl.fmods(a, s)`` (TFMOD / TFMODS, FP32): the hardware's
    ``a - trunc(a / b) · b``, each step one fp32 rounding (``/`` correctly rounded). Equal to
    the exact ``torch.fmod`` while the quotient is exact; not for huge quotients."""
    return apply("fmod", lhs, rhs)


def _expdif_rule(name: str, axis: str) -> None:
    def fn(rt: Run, x: Any, v: Any) -> Tile:
        a, b = _tile(rt, x, op=name), _tile(rt, v, op=name)
        want = (a.shape[0], 1) if axis == "row" else (1, a.shape[-1])
        if a.ndim != 2 or b.shape != want or a.dtype != b.dtype or not a.dtype.is_float:
            raise ValueError(f"pl.{name}: x {a!r} must be a 2-D float tile and the {axis} "
                             f"vector {b!r} of shape {list(want)}, same dtype ({_site()})")
        d = rt.bk.binary("sub", a.data, b.data, a.dtype.name)
        return rt.new_tile(rt.bk.unary("exp", d), a.dtype)

    rule(name)(fn)

    def api(tile: Any, vec: Any) -> Tile:
        return apply(name, tile, vec)

    api.__name__ = api.__qualname__ = name
    api.__doc__ = (f"``exp(x - v)`` with ``v`` one value per {axis} "
                   "(T*EXPANDEXPDIF: vsub then vexp, i.e. pl.sub then pl.exp: an fp32 "
                   "subtraction, then the float64 exp rounded once — deterministic; the "
                   "hardware's vexp approximation may differ in the last bit)")
    export(name, spaces=("pl", "tensor", "tile"))(api)


_expdif_rule("row_expand_expdif", "row")
_expdif_rule("col_expand_expdif", "col")


def _scalar_rhs(op: str, rhs: Any) -> Any:
    if isinstance(rhs, bool) or not isinstance(rhs, numbers.Number):
        raise TypeError(f"pl.{op}: the second operand must be a scalar, got {rhs!r} "
                        f"({_site()}); for two tiles use pl.{op[:-1]}")
    return rhs


@export("maximums", spaces=("pl", "tile"))
def maximums(lhs: Tile, rhs: Any) -> Tile:
    """TMAXS: elementwise ``max(x, s)`` with a scalar ``s`` (= pl.maximum(x, s))."""
    return apply("maximum", lhs, _scalar_rhs("maximums", rhs))


@export("minimums", spaces=("pl", "tile"))
def minimums(lhs: Tile, rhs: Any) -> Tile:
    """TMINS: elementwise ``min(x, s)`` with a scalar ``s`` (= pl.minimum(x, s))."""
    return apply("minimum", lhs, _scalar_rhs("minimums", rhs))


@export("rsqrt", spaces=("tile",))
def tile_rsqrt(tile: Tile, tmp: Tile | None = None) -> Tile:
    """``pl.tile.rsqrt(x[, tmp])``: passing ``tmp`` selects the high-precision form (see
    ``pl.rsqrt``)."""
    return apply("rsqrt", tile, tmp=tmp)
