"""``pl``: the tile language, named after ``pypto.language`` and run eagerly by the emulator.

Kernels do ``from lowering.tile import pl`` and use the pypto names: ``pl.at``, ``pl.range``,
``pl.parallel``, ``pl.pipeline``, ``pl.spmd``, ``pl.create_tensor``, ``pl.slice``,
``pl.assemble``, ``pl.cast``, ``pl.matmul``, ``pl.matmul_acc``, ``pl.row_sum``, ... A name
the emulator has no rule for raises ``AttributeError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lowering.tile import surface as _surface
from lowering.tile.core import Tensor as _Tensor
from lowering.tile.core import Tile as _Tile
from lowering.tile.dtypes import (  # noqa: F401  (re-exported pl names)
    BF16,
    BOOL,
    FP16,
    FP32,
    INDEX,
    INT8,
    INT16,
    INT32,
    INT64,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    DType,
    Level,
    MaskPattern,
)
from lowering.tile.ops import apply as _apply

DataType = DType

# -- scopes, loops, tasks, decorators, annotations (lowering.tile.control / .jit) --------------

from lowering.tile.control import (  # noqa: E402,F401  (re-exported pl names)
    AtomicType,
    CrossCoreSlot,
    Optimization,
    Role,
    ScopeMode,
    SplitMode,
    aic_gather,
    aiv_shard,
    array,
    at,
    cluster,
    cond,
    const,
    cross_core_slot,
    dynamic,
    get_block_idx,
    get_block_num,
    get_subblock_idx,
    manual_scope,
    no_dep,
    parallel,
    pipeline,
    prefetch,
    range,
    scope,
    split,
    split_aiv,
    spmd,
    spmd_submit,
    static_assert,
    static_print,
    submit,
    system,
    unroll,
    while_,
    yield_,
)
from lowering.tile.control import Split as control_Split  # noqa: E402
from lowering.tile.core import DynVar  # noqa: E402,F401
from lowering.tile.jit import (  # noqa: E402,F401
    TASK_ID,
    InOut,
    Out,
    Scalar,
    Tensor,
    Tile,
    jit,
)
from lowering.tile.jit import ArrayAnnotation as Array  # noqa: E402,F401

TaskId = Scalar[TASK_ID]


class optimizations:  # noqa: N801  (pl.optimizations.split / .cross_core_slot)
    """``pl.optimizations``: the entries of ``optimizations=[...]``."""

    split = staticmethod(split)
    cross_core_slot = staticmethod(cross_core_slot)
    Optimization = Optimization
    Split = control_Split
    CrossCoreSlot = CrossCoreSlot


# -- memory ----------------------------------------------------------------------------------


def create_tensor(shape: Sequence[int], dtype: DType, *args: Any, **kw: Any) -> Any:
    """Outside a scope: a kernel-internal GM tensor (its own buffer per iteration of the
    enclosing pl.parallel / pl.spmd loops, as pypto allocates a loop body's tensors per
    iteration; starts as NaN / the int dtype's minimum). Inside a scope: a Vec tile.
    ``layout``, ``manual_dep``, ``init_value``: see ``ops_data._create_tensor``."""
    return _apply("create_tensor", shape, dtype, *args, **kw)


def slice(tensor: Any, shape: Sequence[int], offset: Sequence[int], *args: Any,  # noqa: A001
          **kw: Any) -> _Tile:
    """Explicit load ``tensor[offset : offset + shape]`` (or a sub-tile of a tile);
    ``valid_shape``, ``drop_dims``, ``pad_value``, ``clamp``: see ``ops_data._slice``."""
    return _apply("slice", tensor, shape, offset, *args, **kw)


def assemble(target: Any, source: _Tile, offset: Sequence[int], **kw: Any) -> Any:
    """Store ``source`` into ``target`` at ``offset``; returns ``target``."""
    return _apply("assemble", target, source, offset, **kw)


def load(tensor: _Tensor, offsets: Sequence[int], shapes: Sequence[int], *args: Any,
         **kw: Any) -> _Tile:
    """GM -> tile; ``valid_shape``, ``target_memory``, ``clamp``: see ``ops_data._load_rule``."""
    return _apply("load", tensor, offsets, shapes, *args, **kw)


def store(tile: _Tile, offsets: Sequence[int], output_tensor: _Tensor, *args: Any,
          **kw: Any) -> _Tensor:
    """Tile (its valid box) -> GM; ``shapes``: see ``ops_data._store_rule``."""
    return _apply("store", tile, offsets, output_tensor, *args, **kw)


def reshape(x: Any, shape: Sequence[int]) -> Any:
    """Reshape a tile (same buffer) or view a GM tensor with another shape."""
    return _apply("reshape", x, shape)


def full(shape: Sequence[int], dtype: DType, value: float | int) -> _Tile:
    """A constant tile."""
    return _apply("full", shape, dtype, value)


def expands(target: _Tile, scalar: float | int) -> _Tile:
    """A tile of ``target``'s shape and dtype, every element ``scalar`` (rounded to it)."""
    return _apply("expands", target, scalar)


def read(src: Any, offset: Any) -> float | int:
    """One element as a Python number (usable in index arithmetic)."""
    return _apply("read", src, offset)


def write(dst: _Tensor, offset: Any, value: float | int) -> None:
    """Store one element (a Python number, rounded to ``dst``'s dtype) at ``offset``."""
    return _apply("write", dst, offset, value)


def dim(t: Any, axis: int) -> int:
    """The size of ``t`` along ``axis`` (a dynamic dim: the size bound in this run)."""
    return _apply("dim", t, axis)


# -- compute ---------------------------------------------------------------------------------


def cast(input: Any, target_type: DType, mode: str | int = "round") -> _Tile:  # noqa: A002
    """Convert with rounding ``mode``: 'round' (nearest, ties away; the default), 'rint'
    (nearest, ties even), 'floor', 'ceil', 'trunc', 'none' (float→float: ties even;
    float→int: trunc). Float→int saturates."""
    return _apply("cast", input, target_type, mode)


def matmul(lhs: Any, rhs: Any, out_dtype: Any = None, a_trans: bool = False,
           b_trans: bool = False, c_matrix_nz: bool = False) -> _Tile:
    """C = A·B in a fresh accumulator (exact products, float64 sum, one fp32 rounding)."""
    return _apply("matmul", lhs, rhs, out_dtype, a_trans, b_trans, c_matrix_nz)


def matmul_acc(acc: _Tile, lhs: Any, rhs: Any, a_trans: bool = False, b_trans: bool = False,
               init_cond: Any = None) -> _Tile:
    """acc + A·B: one fp32 add of the per-call product (int32: exact)."""
    return _apply("matmul_acc", acc, lhs, rhs, a_trans, b_trans, init_cond)


def _op(name: str, doc: str) -> Any:
    def fn(*args: Any, **kwargs: Any) -> Any:
        return _apply(name, *args, **kwargs)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


add = _op("add", "Elementwise a + b. b: a tile of the same shape or of one that broadcasts "
              "(same rank, each dim equal or 1), or a number (an fp32 scalar); two numbers: "
              "one fp32 op (ints: exact). The same for sub, mul, div, maximum, minimum.")
sub = _op("sub", "Elementwise a - b.")
mul = _op("mul", "Elementwise a * b.")
div = _op("div", "Elementwise a / b (correctly rounded).")
maximum = _op("maximum", "Elementwise max.")
minimum = _op("minimum", "Elementwise min.")
neg = _op("neg", "Elementwise -x.")
abs = _op("abs", "Elementwise |x|.")  # noqa: A001
sqrt = _op("sqrt", "Correctly rounded square root.")
recip = _op("recip", "Correctly rounded 1/x.")
exp = _op("exp", "exp(x): float64 exp rounded once.")
log = _op("log", "log(x): float64 log rounded once (high_precision= accepted: the same).")
rsqrt = _op("rsqrt", "1/sqrt(x): float64 then rounded once (a single rounding; the "
                     "hardware's vrsqrt approximation differs). high_precision=True: the "
                     "high-precision TRSQRT, IEEE sqrt then IEEE 1/s (two roundings).")
row_sum = _op("row_sum", "[R,C] -> [R,1] sum (float64 accumulation, one rounding).")
row_max = _op("row_max", "[R,C] -> [R,1] max.")
row_min = _op("row_min", "[R,C] -> [R,1] min.")
col_sum = _op("col_sum", "[R,C] -> [1,C] sum (float64 accumulation, one rounding).")
col_max = _op("col_max", "[R,C] -> [1,C] max.")
col_min = _op("col_min", "[R,C] -> [1,C] min.")
row_expand = _op("row_expand", "r[R,1] broadcast to x's shape [R,C].")
row_expand_mul = _op("row_expand_mul", "x[i,j] * r[i] for x [R,C], r [R,1].")
row_expand_sub = _op("row_expand_sub", "x[i,j] - r[i].")
row_expand_add = _op("row_expand_add", "x[i,j] + r[i].")
row_expand_div = _op("row_expand_div", "x[i,j] / r[i].")
row_expand_max = _op("row_expand_max", "max(x[i,j], r[i]).")
row_expand_min = _op("row_expand_min", "min(x[i,j], r[i]).")
col_expand = _op("col_expand", "c[1,C] broadcast to x's shape [R,C].")
col_expand_mul = _op("col_expand_mul", "x[i,j] * c[j] for x [R,C], c [1,C].")
col_expand_sub = _op("col_expand_sub", "x[i,j] - c[j].")
col_expand_add = _op("col_expand_add", "x[i,j] + c[j].")
col_expand_div = _op("col_expand_div", "x[i,j] / c[j].")
col_expand_max = _op("col_expand_max", "max(x[i,j], c[j]).")
col_expand_min = _op("col_expand_min", "min(x[i,j], c[j]).")
gather = _op("gather", "Index form gather(x, dim=-1, index=i): out[b, k] = x[b, i[b, k]] "
                       "(torch.gather); mask form gather(x, mask_pattern=P0101) keeps columns "
                       "0,2,4,..., P1010 keeps 1,3,5,...; output_dtype= re-reads the bits. "
                       "See lowering.tile.ops_index.")
concat = _op("concat", "Concatenate two tiles along the last axis.")
transpose = _op("transpose", "Swap two axes of a tile.")


class _Namespace:
    """``pl.tensor`` / ``pl.tile``: the same ops under pypto's sub-namespaces."""

    def __init__(self, name: str, **extra: Any) -> None:
        self._name = name
        self.__dict__.update(extra)

    def __getattr__(self, item: str) -> Any:
        if item in _surface.EXTRA[self._name]:
            return _surface.EXTRA[self._name][item]
        g = globals()
        if item.startswith("_") or item not in g or not callable(g[item]):
            raise AttributeError(f"pl.{self._name}.{item} is not implemented by the tile "
                                 "emulator")
        return g[item]


tensor = _Namespace("tensor", create=create_tensor)
tile = _Namespace("tile", MaskPattern=MaskPattern)  # create / create_tile: ops_data


def __getattr__(name: str) -> Any:
    if name in _surface.EXTRA["pl"]:
        return _surface.EXTRA["pl"][name]
    raise AttributeError(f"pl.{name} is not implemented by the tile emulator "
                         "(lowering/tile/ops.py lists the emulated ops)")


# op-group modules register their names in lowering.tile.surface on import
from lowering.tile import ops_data, ops_index  # noqa: E402,F401

ops_data.carry_valid_late()  # valid shapes through the other groups' elementwise rules
