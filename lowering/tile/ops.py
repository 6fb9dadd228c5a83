"""Op rules of the tile emulator: a dict of small rules keyed by op name (unknown op: raise).

Each rule receives the active ``Run`` and the op's arguments, marks its tile inputs used
(``rt.use``), computes through the backend (``rt.bk``) and returns a new tile
(``rt.new_tile``). Numerics (all deterministic, backend-independent up to the float64
summation order noted below):

- elementwise fp32 ops: one correctly rounded IEEE fp32 operation per element (numpy float32
  ufuncs, no FMA contraction); a Python number operand is an fp32 scalar (RNE of the double);
  ``div``, ``recip`` (= 1/x), ``sqrt``: correctly rounded; ``exp``/``log``/``rsqrt``: float64
  then rounded once (hardware approximations differ); ``rsqrt(high_precision=True)`` (or
  ``pl.tile.rsqrt(x, tmp)``): ``1 / sqrt(x)`` as two correctly rounded operations, the
  high-precision TRSQRT of A2/A3 (vsqrt, vdiv) and A5 (IEEE sqrt, IEEE div);
  ``high_precision`` of ``log`` / ``recip`` / ``div`` changes nothing here (already correctly
  rounded);
- ``row_sum``/``col_sum``: widened to float64, summed by the backend (numpy: pairwise order),
  rounded once to the input dtype — equal to the exactly rounded sum except in near-tie cases
  (relative error of the float64 sum ≤ C·2⁻⁵³); max/min exact;
- ``matmul``: per call the exact products (bf16/fp16/fp32 products are exact in float64)
  summed in float64 and rounded once to fp32; int8 × int8: exact → int32 (float64 is exact
  there: |products| ≤ 2¹⁴, K < 2¹⁷); ``matmul_acc(acc, a, b)`` = one fp32 add
  ``acc + matmul(a, b)`` (int32: exact add), so across calls the accumulation is sequential
  fp32: ``((A0B0 + A1B1) + A2B2) …``;
- ``cast``: see ``lowering.backends._rounding`` (all modes exact, float → int saturating).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lowering.backends.numpy_backend import BINARY
from lowering.tile import core
from lowering.tile.core import Run, Tensor, Tile, fmt_site
from lowering.tile.dtypes import BF16, FP16, FP32, INT8, INT32, DType, as_dtype
from lowering.tile.lanes import LaneArray, LaneEscape

RULES: dict[str, Callable[..., Any]] = {}


def rule(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        RULES[name] = fn
        return fn

    return deco


def apply(name: str, *args: Any, **kwargs: Any) -> Any:
    """Run op ``name`` on the active run."""
    fn = RULES.get(name)
    if fn is None:
        raise NotImplementedError(f"tile op {name!r} has no emulator rule")
    rt = core.current()
    rt.seq += 1
    if rt.op_site is not None:  # an op inside an op: the outer one's kernel line
        return fn(rt, *args, **kwargs)
    rt.op_site = site = core.caller_site()
    core.op_files[site[0]] = core.op_files.get(site[0], 0) + 1
    try:
        if rt.lane_frame is not None:  # a pl.parallel loop runs in lanes
            return ops_lanes.apply(rt, name, fn, args, kwargs)
        if rt.lane_sites:  # a value of a loop's lanes must not outlive the loop
            ops_lanes.check_outside(name, args, kwargs)
        return fn(rt, *args, **kwargs)
    finally:
        rt.op_site = None
        rt.lane_out = 0


# -- helpers ---------------------------------------------------------------------------------


def _tile(rt: Run, x: Any, how: str = "vec", op: str = "op") -> Tile:
    """An op operand as a tile (a GM tensor operand is loaded whole)."""
    if isinstance(x, Tile):
        rt.use(x, how)
        return x
    if isinstance(x, Tensor):
        t = _load(rt, x, (0,) * x.ndim, x.shape, x.shape)
        rt.use(t, how)
        return t
    raise TypeError(f"pl.{op}: expected a Tile, got {type(x).__name__} ({x!r})")


def _same_shape(op: str, a: Tile, b: Tile) -> None:
    """Operands of an element-wise op: one shape, or shapes of one rank that broadcast (each
    dim equal or 1, as pypto's tile-op type inference allows: ``[16, 256]`` with ``[16, 1]``);
    one dtype."""
    if a.shape != b.shape and not (len(a.shape) == len(b.shape) and all(
            x == y or 1 in (x, y) for x, y in zip(a.shape, b.shape, strict=True))):
        raise ValueError(f"pl.{op}: shapes {list(a.shape)} and {list(b.shape)} do not "
                         f"broadcast ({a!r}, {b!r})")
    if a.dtype != b.dtype:
        raise TypeError(f"pl.{op}: dtypes {a.dtype.name} and {b.dtype.name} differ "
                        f"({a!r}, {b!r}); cast first")


_ints = core.ints


def _load(rt: Run, t: Tensor, lo: Sequence[int], hi: Sequence[int], shape: Sequence[int],
          valid: Sequence[int] | None = None, space: str | None = None) -> Tile:
    """GM window [lo, hi) -> a tile of ``shape`` (bounds checked by the caller). With a
    ``valid`` shape only that box is read, the rest is padding (``ops_data.read_valid``)."""
    lo, hi = tuple(lo), tuple(hi)
    if valid is not None:
        data = ops_data.read_valid(rt, t, lo, tuple(b - a for a, b in zip(lo, hi, strict=True)),
                                   tuple(valid))
    else:
        data = rt.bk.reshape(rt.bk.read(t.data, core.box_key(lo, hi)), tuple(shape))
        rt.access(t, lo, hi, write=False)
    _check_gm_align(rt, t, lo, "load")
    tile = rt.new_tile(data, t.dtype, origin="load")
    tile.valid = ops_data.norm_valid(valid, tile.shape)
    return ops_data.place(tile, space)


def _check_gm_align(rt: Run, t: Tensor, lo: Sequence[int], what: str) -> None:
    if not lo:
        return
    lo = t.base_index(tuple(lo))  # alignment is of the base tensor's address
    off = lo[-1] * t.dtype.itemsize
    if off % 32:
        site = core.caller_site()
        rt.report("layout", "warning",
                  f"{what} of {t.name!r} at innermost offset {lo[-1]} ({off} B) is not "
                  f"32-byte aligned ({fmt_site(site)})", tensor=t.name,
                  once=("align", site))


def _store(rt: Run, t: Tensor, lo: tuple, hi: tuple, src: Tile) -> None:
    """Tile -> GM region [lo, hi): only the tile's valid box moves (``ops_data.store_region``)."""
    if src.dtype != t.dtype:
        raise TypeError(f"store of a {src.dtype.name} tile {src!r} into {t.dtype.name} tensor "
                        f"{t.name!r}: cast first")
    lo, hi, data = ops_data.store_region(rt, t, lo, hi, src)
    rt.use(src, "vec")
    if data is None:
        return
    if any(h > n for h, n in zip(hi, t.shape, strict=True)):
        raise core.OutOfBounds(f"store of {src!r} into {t!r}: the moved box "
                               f"{core.fmt_box(t.name, lo, hi)} is out of bounds")
    rt.access(t, lo, hi, write=True)  # before the write: a rank may refuse it (distributed)
    rt.bk.write(t.data, core.box_key(lo, hi), data)
    _check_gm_align(rt, t, lo, "store")
    ops_data.check_store_nan(rt, t, lo, hi, data, src.dtype)


# -- loads, stores, views --------------------------------------------------------------------


def gm_view(rt: Run) -> bool:
    """True where slicing a GM tensor makes a GM view, not a tile: outside every in-core
    scope (pypto's ``tensor.slice`` / ``tensor.reshape`` in an orchestration or opaque body are
    views of GM; ``ConvertTensorToTileOps`` makes a slice a ``tile.load`` only in-core)."""
    return rt.scope is None and rt.gm_views


@rule("slice_key")
def _slice_key(rt: Run, src: Tensor | Tile, key: Any) -> Tensor | Tile | float | int:
    lo, hi, shape = core.parse_key(src.shape, key, src.__repr__)
    if not shape and src.ndim:  # an int per axis: pypto's tensor.read / tile.read, a scalar
        return apply("read", src, lo)
    if isinstance(src, Tensor):
        if gm_view(rt):
            view = src.window(lo, hi)
            return view if view.shape == shape else view.reshaped(shape)  # ints drop dims
        return _load(rt, src, lo, hi, shape)
    return ops_data.tile_window(rt, src, lo, hi, drop=ops_data.int_axes(key, src.ndim))


@rule("store_key")
def _store_key(rt: Run, dst: Tensor | Tile, key: Any, value: Tile) -> None:
    gm = isinstance(dst, Tensor)
    lo, hi, _ = core.parse_key(dst.shape, key, dst.__repr__, open_stop=gm)
    if isinstance(value, Tensor):  # a GM source (a view) is staged through a tile, as assemble
        value = _tile(rt, value, op="store")
    if gm:
        _store(rt, dst, lo, hi, value)
        return
    _tile_write(rt, dst, lo, hi, value)


def _tile_write(rt: Run, dst: Tile, lo: tuple, hi: tuple, value: Tile) -> None:
    if value.dtype != dst.dtype:
        raise TypeError(f"write of {value!r} into {dst!r}: dtypes differ")
    if type(value.data) is LaneArray or type(dst.data) is LaneArray:
        ops_lanes.before_tile_write(dst, value)
    rt.use(value)
    rt.use(dst, read=False)  # an in-place insert (pto.tinsert) reads nothing of dst
    rt.tile_write(dst, lo, hi)  # race check: a tile shared by independent iterations
    valid = ops_data.assemble_valid(dst, value, lo)
    rt.bk.write(dst.data, core.data_key(dst.data, lo, hi), value.data)  # the whole source
    dst.valid = valid


@rule("assemble")
def _assemble(rt: Run, target: Tensor | Tile, source: Tile, offset: Sequence[int], *,
              atomic: Any = 0) -> Tensor | Tile:
    """Write ``source`` into ``target`` at ``offset`` (a source of lower rank fills the
    trailing dims); returns ``target``.

    ``atomic=pl.AtomicType.Add`` (GM target only, as in pypto): ``target[box] += source``,
    each element one add in the target dtype (fp32: one IEEE fp32 add; bf16/fp16: the fp32
    sum of the two values rounded once to the dtype; ints: wrapping). Atomic adds of
    different ``pl.parallel``/``pl.spmd`` iterations to one element do not race (the
    hardware serializes them; the emulator adds in program order, which for floats is one
    of the orders the device may use); an atomic add and a plain read or write do."""
    offset = _ints(offset)
    add = _atomic_add(atomic)
    if isinstance(source, Tensor):  # a GM source is staged through a tile (a GM->GM copy)
        source = _tile(rt, source, op="assemble")
    if not isinstance(source, Tile):
        raise TypeError(f"pl.assemble: source must be a Tile or Tensor, got {source!r}")
    moved = ops_data.assemble_extent(source, len(target.shape),
                                     isinstance(target, Tensor) and not add)
    sshape = (1,) * (len(target.shape) - len(moved)) + moved
    if len(offset) != len(target.shape) or len(sshape) != len(target.shape):
        raise ValueError(f"pl.assemble of {source!r} into {target!r} at {list(offset)}: "
                         "rank mismatch")
    hi = tuple(o + s for o, s in zip(offset, sshape, strict=True))
    key = tuple(slice(o, h) for o, h in zip(offset, hi, strict=True))
    lo, hi, _ = core.parse_key(target.shape, key, lambda: f"pl.assemble into {target!r}")
    if isinstance(target, Tensor):
        if add:
            _atomic_store(rt, target, lo, hi, source)
        else:
            _store(rt, target, lo, hi, source)
        return target
    if add:
        raise TypeError(f"pl.assemble(atomic=pl.AtomicType.Add) into the tile {target!r}: an "
                        "atomic add needs a GM tensor target (pypto rejects a tile target)")
    _tile_write(rt, target, lo, hi, source)
    out = rt.new_tile(target.data, target.dtype, share=target.buf)
    out.valid = target.valid
    return out


def _atomic_add(atomic: Any) -> bool:
    """``atomic=``: pl.AtomicType.None_ / 0 -> False, pl.AtomicType.Add / 1 -> True."""
    code = int(getattr(atomic, "value", atomic))
    if code not in (0, 1):
        raise ValueError(f"pl.assemble: unknown atomic mode {atomic!r}")
    return code == 1


def _atomic_store(rt: Run, t: Tensor, lo: tuple, hi: tuple, src: Tile) -> None:
    if rt.lane_frame is not None:  # one add per iteration, in the iterations' order
        raise LaneEscape("an atomic add")
    region = tuple(b - a for a, b in zip(lo, hi, strict=True))
    if [d for d in region if d != 1] != [d for d in src.shape if d != 1]:
        raise ValueError(f"atomic add into {core.fmt_box(t.name, lo, hi)}: region shape "
                         f"{list(region)} does not match tile {src!r}")
    if src.dtype != t.dtype:
        raise TypeError(f"atomic add of a {src.dtype.name} tile {src!r} into {t.dtype.name} "
                        f"tensor {t.name!r}: cast first")
    if t.dtype.name not in ("FP32", "BF16", "FP16", "INT32", "INT16", "INT8") or (
            t.dtype == BF16 and rt.platform == "a5"):
        raise core.DslError(f"atomic add into {t.dtype.name} tensor {t.name!r} on {rt.platform} "
                            f"({fmt_site(core.caller_site())}): the hardware atomic adds fp32 / "
                            "bf16 (not on a5) / fp16 / int32 / int16 / int8")
    rt.use(src, "vec")
    box = core.box_key(lo, hi)
    old = rt.bk.read(t.data, box)
    rt.access(t, lo, hi, write=True, atomic=True)
    rt.bk.write(t.data, box, rt.bk.binary("add", old, rt.bk.reshape(src.data, region),
                                          t.dtype.name))
    _check_gm_align(rt, t, lo, "atomic store")


@rule("reshape")
def _reshape(rt: Run, x: Tensor | Tile, shape: Sequence[int]) -> Tensor | Tile:
    shape = list(_ints(shape))
    n = math.prod(x.shape)
    if -1 in shape:
        k = shape.index(-1)
        shape[k] = n // max(1, math.prod(d for d in shape if d != -1))
    shape_t = tuple(shape)
    if math.prod(shape_t) != n:
        raise ValueError(f"pl.reshape of {x!r} to {list(shape_t)}: element counts differ")
    if isinstance(x, Tensor):
        return x.reshaped(shape_t)
    rt.use(x)
    return rt.new_tile(rt.bk.reshape(x.data, core.data_shape(x.data, shape_t)), x.dtype,
                       share=x.buf)


@rule("expands")
def _expands(rt: Run, target: Tile, scalar: float | int) -> Tile:
    t = _tile(rt, target, op="expands")
    return rt.new_tile(rt.bk.full(t.shape, t.dtype.name, scalar), t.dtype)


@rule("read")
def _read(rt: Run, src: Tensor | Tile, offset: Any) -> float | int:
    idx = _ints(offset)
    if len(idx) != len(src.shape):
        raise ValueError(f"pl.read of {src!r}: {len(idx)} indices for {len(src.shape)} dims")
    key = tuple(slice(i, i + 1) for i in idx)
    lo, hi, _ = core.parse_key(src.shape, key, lambda: f"pl.read of {src!r}")
    if isinstance(src, Tensor):
        rt.access(src, lo, hi, write=False)
    else:
        rt.use(src)
    v = rt.bk.item(src.data, idx)
    return int(v) if src.dtype.is_int else v


@rule("write")
def _write(rt: Run, dst: Tensor, offset: Any, value: float | int) -> None:
    idx = _ints(offset)
    key = tuple(slice(i, i + 1) for i in idx)
    lo, hi, _ = core.parse_key(dst.shape, key, lambda: f"pl.write of {dst!r}")
    v = rt.bk.full((1,) * len(idx), dst.dtype.name, value)
    if isinstance(dst, Tensor):
        rt.access(dst, lo, hi, write=True,
                  value=rt.bk.to_numpy(v).tobytes() if rt.checks and rt.par else None)
    rt.bk.write(dst.data, core.box_key(lo, hi), v)


@rule("dim")
def _dim(rt: Run, t: Tensor | Tile, axis: int) -> int:
    return int(t.shape[axis])


# -- elementwise -----------------------------------------------------------------------------


def _scalar_binary(name: str, a: Any, b: Any) -> float | int:
    """pypto's Scalar arithmetic (``pl.mul(s, 0.0)`` with ``s`` a scalar): two ints exactly
    (a division of ints is not emulated); with a float operand, one correctly rounded FP32
    operation (the emulator's float scalars are FP32)."""
    if isinstance(a, numbers.Integral) and isinstance(b, numbers.Integral):
        if name == "div":
            raise NotImplementedError(f"pl.div of two int scalars ({a}, {b}) at "
                                      f"{fmt_site(core.caller_site())}: its rounding is not "
                                      "emulated")
        return int(BINARY[name](int(a), int(b)))
    with np.errstate(all="ignore"):
        return float(BINARY[name](np.float32(a), np.float32(b)))


def _binary_rule(name: str) -> None:
    def fn(rt: Run, lhs: Any, rhs: Any, high_precision: bool = False) -> Tile:
        if high_precision and name != "div":  # div: correctly rounded either way
            raise TypeError(f"pl.{name} takes no high_precision")
        scalar_rhs = core.is_number(rhs)
        if scalar_rhs and core.is_number(lhs):
            return _scalar_binary(name, lhs, rhs)
        a = _tile(rt, lhs, op=name)
        if scalar_rhs:
            sdt = "FP32" if a.dtype.is_float else a.dtype.name
            b = rt.bk.scalar(rhs, sdt)
        else:
            bt = _tile(rt, rhs, op=name)
            _same_shape(name, a, bt)
            b = bt.data
        return rt.new_tile(rt.bk.binary(name, a.data, b, a.dtype.name), a.dtype)

    RULES[name] = fn


for _n in ("add", "sub", "mul", "div", "maximum", "minimum"):
    _binary_rule(_n)


def _unary_rule(name: str) -> None:
    def fn(rt: Run, x: Any, high_precision: bool = False, *, tmp: Any = None) -> Tile:
        if (high_precision and name not in ("log", "recip", "rsqrt")) or (
                tmp is not None and name != "rsqrt"):
            raise TypeError(f"pl.{name} takes no high_precision / tmp")
        a = _tile(rt, x, op=name)
        if name not in ("neg", "abs") and not a.dtype.is_float:
            raise TypeError(f"pl.{name} needs a float tile, got {a!r}")
        if tmp is not None:  # pl.tile.rsqrt(x, tmp): the scratch selects high precision
            _tile(rt, tmp, op=name)
        if name == "rsqrt" and (high_precision or tmp is not None):
            # the high-precision TRSQRT: IEEE sqrt, then IEEE 1/s (two roundings)
            s = rt.bk.unary("sqrt", a.data)
            one = rt.bk.full(a.shape, a.dtype.name, 1)
            return rt.new_tile(rt.bk.binary("div", one, s, a.dtype.name), a.dtype)
        # log / recip high_precision: the model below is already correctly rounded
        return rt.new_tile(rt.bk.unary(name, a.data), a.dtype)

    RULES[name] = fn


for _n in ("neg", "abs", "sqrt", "recip", "exp", "rsqrt", "log"):
    _unary_rule(_n)


def _expand_rule(name: str, op: str, axis: str) -> None:
    def fn(rt: Run, x: Any, v: Any, tmp: Any = None) -> Tile:
        a = _tile(rt, x, op=name)
        b = _tile(rt, v, op=name)
        bad = ops_data.expand_mismatch(a.shape, b.shape, axis)
        if bad:
            raise ValueError(f"pl.{name}: {bad} (x {a!r}, {axis} vector {b!r})")
        if a.dtype != b.dtype:
            raise TypeError(f"pl.{name}: dtypes differ ({a!r}, {b!r})")
        if op == "expand":  # result: the vector broadcast to x's shape
            data = rt.bk.binary("add", rt.bk.full(a.shape, a.dtype.name, 0), b.data,
                                a.dtype.name)
        else:
            data = rt.bk.binary(op, a.data, b.data, a.dtype.name)
        return rt.new_tile(data, a.dtype)

    RULES[name] = fn


for _axis in ("row", "col"):
    for _op in ("mul", "sub", "add", "div"):
        _expand_rule(f"{_axis}_expand_{_op}", _op, _axis)
    _expand_rule(f"{_axis}_expand_max", "maximum", _axis)
    _expand_rule(f"{_axis}_expand_min", "minimum", _axis)
    _expand_rule(f"{_axis}_expand", "expand", _axis)


def _reduce_rule(name: str, op: str, axis: str) -> None:
    def fn(rt: Run, x: Any, tmp_tile: Any = None) -> Tile:
        a = _tile(rt, x, op=name)
        if axis == "row":
            if tmp_tile is not None:
                rt.use(tmp_tile)
            else:
                rows = math.prod(a.shape[:-1])
                rt.scratch((rows, max(a.shape[-1], 128)), FP32)
            return rt.new_tile(rt.bk.row_reduce(op, a.data), a.dtype)
        if a.ndim != 2:
            raise ValueError(f"pl.{name} needs a 2-D tile, got {a!r}")
        if tmp_tile is not None:  # col_sum's tree-reduction scratch (the sum is float64 anyway)
            rt.use(tmp_tile)
        return rt.new_tile(rt.bk.col_reduce(op, a.data), a.dtype)

    RULES[name] = fn


for _axis in ("row", "col"):
    for _op in ("sum", "max", "min"):
        _reduce_rule(f"{_axis}_{_op}", _op, _axis)


@rule("cast")
def _cast(rt: Run, x: Any, target_type: DType, mode: str | int = "round") -> Tile:
    from lowering.backends._rounding import normalize_mode

    if core.is_number(x):  # a scalar: ops_index.cast_scalar (MLIR arith casts)
        from lowering.tile.ops_index import cast_scalar

        return cast_scalar(rt, x, target_type, mode)
    a = _tile(rt, x, op="cast")
    dt = as_dtype(target_type)
    data = rt.bk.cast(a.data, dt.name, normalize_mode(mode))
    return rt.new_tile(data, dt)


@rule("concat")
def _concat(rt: Run, a: Any, b: Any) -> Tile:
    ta, tb = _tile(rt, a, op="concat"), _tile(rt, b, op="concat")
    if ta.dtype != tb.dtype or ta.shape[:-1] != tb.shape[:-1]:
        raise ValueError(f"pl.concat: incompatible {ta!r} and {tb!r}")
    return rt.new_tile(rt.bk.concat(ta.data, tb.data, -1), ta.dtype)


@rule("transpose")
def _transpose(rt: Run, x: Any, axis1: int, axis2: int) -> Tile:
    a = _tile(rt, x, op="transpose")
    return rt.new_tile(rt.bk.transpose(a.data, axis1, axis2), a.dtype)


# -- cube ------------------------------------------------------------------------------------

_MATMUL_OUT = {(BF16, BF16): FP32, (FP16, FP16): FP32, (FP32, FP32): FP32, (INT8, INT8): INT32}


def _product(rt: Run, lhs: Any, rhs: Any, a_trans: bool, b_trans: bool, op: str) -> tuple:
    a = _tile(rt, lhs, "left", op)
    b = _tile(rt, rhs, "right", op)
    if a.ndim < 2 or b.ndim < 2:  # pypto's 1-D (vector) forms are not emulated
        raise ValueError(f"pl.{op}: operands must be at least 2-D, got {a!r} and {b!r}")
    out = _MATMUL_OUT.get((a.dtype, b.dtype))
    if out is None:
        raise TypeError(f"pl.{op}: unsupported operand dtypes {a.dtype.name} × {b.dtype.name}")
    # a/b_trans swap the operand's two trailing axes; leading (batch) axes broadcast
    # (pypto tensor.matmul -> tile.batch_matmul): one 2-D product per batch element
    ad = rt.bk.transpose(a.data, -2, -1) if a_trans else a.data
    bd = rt.bk.transpose(b.data, -2, -1) if b_trans else b.data
    m, k = ad.shape[-2:]
    k2, n = bd.shape[-2:]
    try:
        np.broadcast_shapes(tuple(ad.shape[:-2]), tuple(bd.shape[:-2]))
    except ValueError:
        raise ValueError(f"pl.{op}: batch dims of {a!r} and {b!r} do not broadcast") from None
    if k != k2:
        raise ValueError(f"pl.{op}: inner dims differ: {a!r} @ {b!r}")
    if m % 16 and m != 1:
        site = core.caller_site()
        rt.report("layout", "warning",
                  f"cube tile {a!r} has M={m} rows, not a multiple of 16 (or 1) "
                  f"({fmt_site(site)})", once=("cube-m", site))
    return rt.bk.matmul(ad, bd, out.name), out


@rule("matmul")
def _matmul(rt: Run, lhs: Any, rhs: Any, out_dtype: Any = None, a_trans: bool = False,
            b_trans: bool = False, c_matrix_nz: bool = False) -> Tile:
    data, out = _product(rt, lhs, rhs, a_trans, b_trans, "matmul")
    if out_dtype is not None and as_dtype(out_dtype) != out:
        raise TypeError(f"pl.matmul: out_dtype {as_dtype(out_dtype).name} unsupported for "
                        f"these operands (result is {out.name})")
    return rt.new_tile(data, out, origin="acc")


@rule("matmul_acc")
def _matmul_acc(rt: Run, acc: Tile, lhs: Any, rhs: Any, a_trans: bool = False,
                b_trans: bool = False, init_cond: Any = None) -> Tile:
    data, out = _product(rt, lhs, rhs, a_trans, b_trans, "matmul_acc")
    c = _tile(rt, acc, "acc", "matmul_acc")
    if c.dtype != out or c.shape != core.shape_of(data):
        raise ValueError(f"pl.matmul_acc: accumulator {c!r} does not match the product "
                         f"{out.name}{list(data.shape)}")
    if not (init_cond is not None and bool(init_cond)):
        data = rt.bk.binary("add", c.data, data, out.name)
    return rt.new_tile(data, out, origin="acc", share=c.buf)


# the 'data' group: slice / load / store / create_tensor / full rules and valid shapes
# (imported last: it wraps rules defined above)
from lowering.tile import ops_data, ops_lanes  # noqa: E402
