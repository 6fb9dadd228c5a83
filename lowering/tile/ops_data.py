"""Op rules and pl names of the 'data' group (see lowering.tile.surface): loads and stores with
valid shapes, padding, memory spaces, element access and views.

**Valid shapes** (pypto's type deduction, ``src/ir/op/{tensor,tile}_ops``, and the PTO ISA ops it
lowers to, which read and write a tile's valid region). A tile has an allocated shape and a
valid shape (``Tile.valid``; None: all of it), the origin-anchored box that holds real data;
the rest is *padding*:

- ``pl.load`` / ``pl.slice(tensor, ...)`` with ``valid_shape`` DMA only the valid box: the
  window may overhang the tensor, only ``offset + valid_shape`` must lie inside it
  (``clamp=True`` cuts the valid box at the tensor edge instead);
- padding is undefined until ``pl.fillpad`` fills it (a load does not fill it: pypto's
  ``tile.load`` drops a slice's ``pad_value``). The emulator fills it with *poison* — NaN for
  floats, the minimum of a signed / maximum of an unsigned int, True for BOOL — so a kernel that
  reads padding as data computes a visibly wrong value instead of a silently right one;
- a store (``pl.store``, ``pl.assemble`` into a tensor, ``tensor[...] = tile``) moves only the
  valid box; coverage then reports the rows the kernel never wrote. In a run that made padding,
  a store of NaN from a float tile's valid box is a 'coverage' warning (padding or an
  uninitialized tile read as data, or a genuine NaN);
- elementwise, cast and broadcast ops compute over the first operand's valid region: the result
  has its valid shape and poison padding (the hardware leaves the rest of the destination
  alone); a second operand whose valid region is smaller contributes its padding (poison);
- row/col reductions fold only the valid cells (``trowsum`` uses the source's valid columns);
  the result keeps the input's valid extent on the other axes;
- ``matmul`` contracts over the lhs valid K (the rhs valid K must cover it); the result's valid
  shape is (lhs valid M, rhs valid N); ``matmul_acc`` changes only that box of the accumulator;
- views: a tile slice is valid where its source is (shifted, cut to the window, narrowed by
  ``valid_shape``); ``pl.reshape`` maps the valid box when it is representable (unit axes
  added / dropped, or a contiguous prefix), else raises; ``pl.tile.transpose_view`` swaps it;
  ``pl.transpose`` and ``pl.concat`` declare the whole result valid (padding moves into it);
  ``pl.assemble`` into a tile copies the whole source allocation (``pto.tinsert``) and the
  target's valid region grows by the union.

**Memory spaces.** ``pl.load(target_memory=Vec|Mat)``, ``pl.create_tile(target_memory=...)``,
``pl.create_l1`` (Mat) and ``pl.move`` place a tile in a space; the budget accounts it there
(``Buf.origin`` ``'<kind>@<space>'``, see ``budget.buf_spaces``). Tiles without an explicit
space keep the budget's inference.
"""

from __future__ import annotations

import enum
import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lowering.tile import core, ops
from lowering.tile.core import Run, Tensor, Tile, fmt_site
from lowering.tile.dtypes import MASK_SELECT, DType, as_dtype
from lowering.tile.findings import OutOfBounds
from lowering.tile.surface import export

# --------------------------------------------------------------------------------------------
# enums
# --------------------------------------------------------------------------------------------


class MemorySpace(enum.Enum):
    """``pl.MemorySpace`` / ``pl.Mem``: on-chip buffers (DDR: global memory)."""

    DDR = 0
    Vec = 1
    Mat = 2
    Left = 3
    Right = 4
    Acc = 5
    Bias = 6
    ScalarLocal = 7
    LeftScale = 8
    RightScale = 9


class PadValue(enum.Enum):
    """``pl.PadValue``: what ``pl.fillpad`` writes into padding. For floats ``max`` / ``min`` are
    ±inf (pypto accepts ``math.inf`` / ``-math.inf`` as their spelling), for ints the dtype's
    maximum / minimum."""

    null = 0
    zero = 1
    max = 2
    min = 3


export("MemorySpace", "Mem", spaces=("pl",))(MemorySpace)
export("PadValue", spaces=("pl",))(PadValue)

#: spaces the budget accounts (budget.SPACES); a tile in another space is not modelled
_BUDGET_SPACES = ("Vec", "Mat", "Left", "Right", "Acc")


def _space(value: Any, op: str) -> str:
    """A ``target_memory`` argument as the budget's space name."""
    name = value.name if isinstance(value, enum.Enum) else str(value)
    if name not in _BUDGET_SPACES:
        raise NotImplementedError(f"pl.{op}: target_memory {name} is not modelled by the emulator "
                                  f"(at {fmt_site(core.caller_site())})")
    return name


def place(tile: Tile, space: str | None) -> Tile:
    """Record that ``tile`` lives in ``space`` (for the budget: ``Buf.origin`` '<kind>@<space>')."""
    if space is not None and tile.buf is not None:
        tile.buf.origin = tile.buf.origin.partition("@")[0] + "@" + space
    return tile


# --------------------------------------------------------------------------------------------
# valid shapes and poison
# --------------------------------------------------------------------------------------------

_POISONED: weakref.WeakSet[Run] = weakref.WeakSet()  # runs that made padding


def poison_value(dtype: DType) -> float | int | bool:
    """The value that stands for undefined data (see module docstring)."""
    if dtype.is_float:
        return float("nan")
    if dtype.kind == "b":
        return True
    info = np.iinfo(np.dtype(f"{dtype.kind}{dtype.itemsize}"))
    return int(info.max if dtype.kind == "u" else info.min)


def norm_valid(valid: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """``valid`` as a tuple, None when it is all of ``shape``."""
    if valid is None:
        return None
    v = tuple(int(x) for x in valid)
    return None if v == tuple(shape) else v


def valid_box(t: Tile) -> tuple[int, ...]:
    """The valid extents of ``t`` (its shape when fully valid)."""
    return t.shape if t.valid is None else t.valid


def box(ext: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, e) for e in ext)


def poison_outside(rt: Run, data: Any, valid: Sequence[int], dtype: DType) -> None:
    """Fill ``data`` outside the origin box ``valid`` with poison, in place (one slab per
    partial axis)."""
    shape = tuple(data.shape)
    val = poison_value(dtype)
    for i, (v, n) in enumerate(zip(valid, shape, strict=True)):
        if v < n:
            key = box(valid[:i]) + (slice(v, n),)
            ext = tuple(valid[:i]) + (n - v,) + shape[i + 1:]
            rt.bk.write(data, key, rt.bk.full(ext, dtype.name, val))
    _POISONED.add(rt)


def padded(rt: Run, part: Any, shape: Sequence[int], dtype: DType) -> Any:
    """A ``shape`` array holding ``part`` at the origin and poison elsewhere."""
    if tuple(part.shape) == tuple(shape):  # nothing to pad: a copy, not a fill and a write
        return rt.bk.copy(part)
    out = rt.bk.full(tuple(shape), dtype.name, poison_value(dtype))
    if all(part.shape):
        rt.bk.write(out, box(part.shape), part)
    _POISONED.add(rt)
    return out


def set_valid(rt: Run, t: Tile, valid: Sequence[int] | None) -> Tile:
    """Give ``t`` (fresh data) the valid shape ``valid`` and poison its padding."""
    t.valid = norm_valid(valid, t.shape)
    if t.valid is not None:
        poison_outside(rt, t.data, t.valid, t.dtype)
    return t


def view(t: Tile, ext: Sequence[int]) -> Tile:
    """A stand-in for ``t`` holding only its ``ext`` origin box (same buffer, id and site), for
    running a rule on the valid cells."""
    return Tile(core.current().bk.read(t.data, box(ext)), t.dtype, t.buf, t.id, t.site)


def embed(rt: Run, out: Tile, shape: tuple[int, ...], valid: Sequence[int]) -> Tile:
    """Grow ``out`` (computed on a valid box) to ``shape``: its data at the origin, poison
    elsewhere; the buffer is accounted with the full shape."""
    if tuple(out.shape) != shape:
        out.data = padded(rt, out.data, shape, out.dtype)
        out.shape = shape
        if out.buf is not None and out.buf.origin != "scratch":
            out.buf.shape = shape
    out.valid = norm_valid(valid, shape)
    return out


def _check_window_valid(what: str, shape: Sequence[int], valid: Sequence[int]) -> None:
    for i, (v, n) in enumerate(zip(valid, shape, strict=True)):
        if not 0 <= v <= n:
            raise ValueError(f"{what}: valid_shape {list(valid)} dimension {i} is {v}, outside "
                             f"[0, {n}] of the shape {list(shape)}")


# --------------------------------------------------------------------------------------------
# loads and slices
# --------------------------------------------------------------------------------------------


def read_valid(rt: Run, t: Tensor, lo: tuple[int, ...], window: tuple[int, ...],
               valid: tuple[int, ...]) -> Any:
    """GM -> a ``window`` array: the ``valid`` box read from ``t`` at ``lo``, poison around it
    (the DMA moves only the valid extent). Records the read of the valid box only."""
    hi = tuple(a + v for a, v in zip(lo, valid, strict=True))
    part = rt.bk.read(t.data, core.box_key(lo, hi))
    if all(valid):
        rt.access(t, lo, hi, write=False)
    return padded(rt, part, window, t.dtype)


def gm_window(what: str, t: Tensor, shape: Sequence[int], offset: Sequence[int],
              valid: Sequence[int] | None, clamp: bool) -> tuple[int, ...] | None:
    """Bounds of a GM window read (tensor.slice / tile.load): offsets start inside the tensor,
    ``offset + valid`` (the window when no valid shape is given) ends inside it unless
    ``clamp``, which cuts the valid extent at the tensor edge. Returns the valid shape (None:
    the whole window)."""
    if len(shape) != t.ndim or len(offset) != t.ndim:
        raise ValueError(f"{what}: shape {list(shape)} / offset {list(offset)} must have "
                         f"{t.ndim} entries")
    req = tuple(shape) if valid is None else tuple(valid)
    if len(req) != t.ndim:
        raise ValueError(f"{what}: valid_shape {list(req)} must have {t.ndim} entries")
    _check_window_valid(what, shape, req)
    out = []
    for o, s, r, n in zip(offset, shape, req, t.shape, strict=True):
        if o < 0 or s <= 0:
            raise OutOfBounds(f"{what}: window {o}:{o + s} out of bounds for a dimension of {n}")
        if clamp:
            r = min(r, max(n - o, 0))
        elif o + r > n:
            raise OutOfBounds(f"{what}: reads {o}:{o + r} (offset + valid extent), out of bounds "
                              f"for a dimension of {n}; pass clamp=True to cut the read at the "
                              "tensor edge")
        out.append(r)
    return norm_valid(out, shape)


def load_window(rt: Run, t: Tensor, shape: Sequence[int], offset: Sequence[int],
                valid: Sequence[int] | None, clamp: bool, what: str,
                space: str | None = None) -> Tile:
    """``tile.load``: a tile of ``shape`` from ``t`` at ``offset`` (see ``gm_window``)."""
    shape, offset = _ints(shape), _ints(offset)
    v = gm_window(what, t, shape, offset, None if valid is None else _ints(valid), clamp)
    hi = tuple(o + s for o, s in zip(offset, shape, strict=True))
    return ops._load(rt, t, offset, hi, shape, v, space)


def tile_window(rt: Run, src: Tile, lo: Sequence[int], hi: Sequence[int],
                requested: Sequence[int] | None = None, drop: Sequence[int] = ()) -> Tile:
    """``tile.slice``: a copy of the window [lo, hi) of ``src`` (inside it), its ``drop`` axes
    (unit, fully valid: int subscripts) removed. Valid: the source's valid region shifted and
    cut to the window, narrowed by ``requested`` (a request beyond it reads padding: a
    'coverage' warning)."""
    lo, hi = tuple(lo), tuple(hi)
    win = tuple(b - a for a, b in zip(lo, hi, strict=True))
    avail = tuple(max(0, min(v - a, w)) for v, a, w in zip(valid_box(src), lo, win, strict=True))
    if requested is not None:
        _check_window_valid(f"pl.slice of {src!r}", win, requested)
        if any(r > a for r, a in zip(requested, avail, strict=True)):
            site = core.caller_site()
            rt.report("coverage", "warning",
                      f"slice of {src!r} at {fmt_site(site)}: valid_shape {list(requested)} "
                      f"exceeds the source's valid region under the window {list(avail)}; "
                      "the padding is read as data", once=("slice-valid", site))
        avail = tuple(requested)
    for d in drop:  # pypto: drop_dims must name fully valid unit axes
        if avail[d] != 1:
            raise ValueError(f"slice of {src!r}: cannot drop axis {d}, its valid extent under "
                             f"the window is {avail[d]}, not 1")
    rt.use(src, "view", box=(lo, hi))  # a subview: the source's space is its own
    out = rt.new_tile(rt.bk.read(src.data, core.data_key(src.data, lo, hi)), src.dtype)
    out.valid = norm_valid(avail, win)
    if drop:
        out = _reshape_tile(rt, out, tuple(n for i, n in enumerate(win) if i not in drop))
    return out


def int_axes(key: Any, ndim: int) -> tuple[int, ...]:
    """Axes a subscript indexes with an int (they are dropped from the result)."""
    key = key if isinstance(key, tuple) else (key,)
    return tuple(i for i, k in enumerate(key[:ndim]) if not isinstance(k, slice))


_ints = core.ints


def _drop_dims(t: Tile, drop: Any) -> tuple[int, ...]:
    """``t``'s shape without the ``drop`` axes, which must be unit axes with valid extent 1."""
    axes = sorted({int(d) % t.ndim for d in drop})
    for d in axes:
        if t.shape[d] != 1 or valid_box(t)[d] != 1:
            raise ValueError(f"drop_dims: axis {d} of {t!r} (valid {list(valid_box(t))}) is not "
                             "a fully valid unit axis")
    if len(axes) >= t.ndim:
        raise ValueError("drop_dims cannot erase every dimension")
    return tuple(n for i, n in enumerate(t.shape) if i not in axes)


def _slice_hi(src: Tensor | Tile, shape: tuple[int, ...], offset: tuple[int, ...]
              ) -> tuple[int, ...]:
    """The far corner of ``pl.slice``'s window, its rank and bounds checked against ``src``."""
    if len(shape) != src.ndim or len(offset) != src.ndim:
        raise ValueError(f"pl.slice of {src!r}: shape {list(shape)} / offset "
                         f"{list(offset)} must have {src.ndim} entries")
    hi = tuple(o + s for o, s in zip(offset, shape, strict=True))
    core.parse_key(src.shape, core.box_key(offset, hi), lambda: f"pl.slice of {src!r}")  # bounds
    return hi


@ops.rule("slice")
def _slice(rt: Run, src: Tensor | Tile, shape: Sequence[int], offset: Sequence[int],
           valid_shape: Sequence[int] | None = None, drop_dims: Any = None,
           pad_value: Any = None, clamp: bool = False) -> Tensor | Tile:
    """``pl.slice(x, shape, offset, valid_shape=None, drop_dims=None, pad_value=None,
    clamp=False)``. A GM tensor outside every in-core scope (no ``valid_shape`` / ``clamp``):
    a GM view of the window (``Tensor.window``; pypto's orchestration ``tensor.slice``), loaded
    where an in-core op uses it. A GM tensor in-core: a load of the window (``gm_window``
    bounds; a ``pad_value`` is
    dropped as pypto's ``tile.load`` drops it — the padding stays undefined; use
    ``pl.fillpad``). A tile: ``tile_window`` (no ``clamp``; a ``pad_value`` only relabels the
    padding in pypto, the values stay undefined). ``drop_dims`` erases unit axes that are fully
    valid (a tile result stays at least 2-D)."""
    shape, offset = _ints(shape), _ints(offset)
    if pad_value is not None:
        _pad_scalar(pad_value, None)  # validates the spelling
    if isinstance(src, Tensor) and valid_shape is None and not clamp and ops.gm_view(rt):
        view = src.window(offset, _slice_hi(src, shape, offset))
        if drop_dims:
            keep = sorted(set(range(src.ndim)) - {int(d) % src.ndim for d in drop_dims})
            if any(shape[d] != 1 for d in range(src.ndim) if d not in keep) or not keep:
                raise ValueError(f"pl.slice of {src!r}: drop_dims {list(drop_dims)} must name "
                                 "unit axes and leave at least one")
            view = view.reshaped(tuple(shape[d] for d in keep))
        return view
    if isinstance(src, Tensor):
        t = load_window(rt, src, shape, offset, valid_shape, bool(clamp), f"pl.slice of {src!r}")
    elif isinstance(src, Tile):
        if clamp:
            raise TypeError("pl.slice: clamp=True is not supported for a Tile (an on-chip "
                            "window cannot overhang its source)")
        hi = _slice_hi(src, shape, offset)
        req = None if valid_shape is None else _ints(valid_shape)
        t = tile_window(rt, src, offset, hi, req)
    else:
        raise TypeError(f"pl.slice: expected a Tensor or Tile, got {type(src).__name__}")
    if drop_dims:
        new = _drop_dims(t, drop_dims)
        if isinstance(src, Tile) and len(new) < 2:  # tiles are at least 2-D
            new = (1,) * (2 - len(new)) + new
        t = _reshape_tile(rt, t, new)
    return t


@ops.rule("load")
def _load_rule(rt: Run, tensor: Tensor, offsets: Sequence[int], shapes: Sequence[int],
               valid_shape: Sequence[int] | None = None, target_memory: Any = None,
               clamp: bool = False) -> Tile:
    """``pl.load(tensor, offsets, shapes, valid_shape=None, target_memory=Vec, clamp=False)``:
    GM -> Vec or Mat (the only spaces a DMA from GM reaches); see ``gm_window``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"pl.load: expected a GM Tensor, got {tensor!r}")
    space = None
    if target_memory is not None:
        space = _space(target_memory, "load")
        if space not in ("Vec", "Mat"):
            raise ValueError(f"pl.load: target_memory must be Vec or Mat (a DMA from GM lands "
                             f"only there; use pl.move), got {space}")
    return load_window(rt, tensor, shapes, offsets, valid_shape, bool(clamp),
                       f"pl.load of {tensor!r}", space)


# --------------------------------------------------------------------------------------------
# stores
# --------------------------------------------------------------------------------------------


def moved(src: Tile) -> tuple[int, ...]:
    """The extents a store of ``src`` moves: its valid box."""
    return valid_box(src)


def assemble_extent(src: Tile, ndim: int, valid_only: bool) -> tuple[int, ...]:
    """The extents ``pl.assemble`` writes into an ``ndim``-D target: the source's valid box
    (``valid_only``: a store moves only it) or allocation; a source of higher rank drops its
    leading unit axes (pypto flattens N-D tiles to 2-D; other leading axes are not
    emulated)."""
    ext = moved(src) if valid_only else src.shape
    extra = len(ext) - ndim
    if extra > 0:
        if any(n != 1 for n in src.shape[:extra]):
            raise NotImplementedError(f"pl.assemble of {src!r} into a {ndim}-D target: a source "
                                      "of higher rank with non-unit leading axes is not "
                                      f"emulated (at {fmt_site(core.caller_site())})")
        ext = ext[extra:]
    return tuple(ext)


def check_store_nan(rt: Run, t: Tensor, lo: tuple, hi: tuple, data: Any, dtype: DType) -> None:
    """In a run that made padding: NaN stored from a float tile -> 'coverage' warning."""
    if rt not in _POISONED or not dtype.is_float or not rt.checks:
        return
    n = rt.bk.count_nan(data)
    if n:
        site = core.caller_site()
        rt.report("coverage", "warning",
                  f"store at {fmt_site(site)} writes {n} NaN values into "
                  f"{core.fmt_box(t.name, lo, hi)}: undefined data (padding of a partially "
                  "valid tile, an uninitialized tile or GM tensor) reached the store — harmless "
                  "only if nothing uses those elements (or the kernel computes NaN)",
                  tensor=t.name, once=("nan-store", site))


@ops.rule("store")
def _store_rule(rt: Run, tile: Tile, offsets: Sequence[int], output_tensor: Tensor,
                shapes: Sequence[int] | None = None, atomic: Any = None) -> Tensor:
    """``pl.store(tile, offsets, tensor, shapes=None)``: the tile's valid box into ``tensor`` at
    ``offsets``. ``shapes`` (the ND partition) must hold exactly the moved elements."""
    if atomic is not None:  # the atomic combine is the assemble rule's
        if shapes is not None:
            raise NotImplementedError("pl.store(shapes=..., atomic=...) is not emulated")
        return ops.RULES["assemble"](rt, output_tensor, tile, offsets, atomic=atomic)
    if isinstance(tile, Tensor):  # a GM view made outside a scope: staged through a tile
        tile = ops._tile(rt, tile, op="store")
    if not isinstance(tile, Tile) or not isinstance(output_tensor, Tensor):
        raise TypeError(f"pl.store(tile, offsets, tensor): got {tile!r}, {output_tensor!r}")
    if shapes is None:
        return ops._assemble(rt, output_tensor, tile, offsets)
    shp, off = _ints(shapes), _ints(offsets)
    if len(shp) != output_tensor.ndim or len(off) != output_tensor.ndim:
        raise ValueError(f"pl.store: offsets {list(off)} / shapes {list(shp)} must have "
                         f"{output_tensor.ndim} entries")
    hi = tuple(o + s for o, s in zip(off, shp, strict=True))
    lo, hi, _ = core.parse_key(output_tensor.shape, core.box_key(off, hi),
                               lambda: f"pl.store into {output_tensor!r}")
    if math.prod(shp) != math.prod(moved(tile)):
        raise ValueError(f"pl.store: partition {list(shp)} does not hold the valid box "
                         f"{list(moved(tile))} of {tile!r}")
    ops._store(rt, output_tensor, lo, hi, tile)
    return output_tensor


def _align(ext: Sequence[int], n: int) -> tuple[int, ...] | None:
    """``ext`` right-aligned to ``n`` axes (leading unit axes added or removed), or None."""
    ext = tuple(ext)
    if len(ext) <= n:
        return (1,) * (n - len(ext)) + ext
    lead = ext[:len(ext) - n]
    return ext[len(ext) - n:] if all(e == 1 for e in lead) else None


def store_region(rt: Run, t: Tensor, lo: tuple, hi: tuple,
                 src: Tile) -> tuple[tuple, tuple, Any | None]:
    """(lo, hi, data) a store of ``src`` into the region [lo, hi) of ``t`` writes (data None:
    nothing, an empty valid box). A fully valid tile fills the region (non-unit axes in order);
    a partially valid one names its allocation or its valid box (right-aligned axes) and moves
    the valid box only."""
    region = tuple(b - a for a, b in zip(lo, hi, strict=True))
    if src.valid is None:
        if [d for d in region if d != 1] != [d for d in src.shape if d != 1]:
            raise ValueError(f"store into {core.fmt_box(t.name, lo, hi)}: region shape "
                             f"{list(region)} does not match tile {src!r}")
        return lo, hi, src.data
    if 0 in src.valid:
        return lo, lo, None
    shp, ext = _align(src.shape, len(region)), _align(src.valid, len(region))
    if shp is None or ext is None or region not in (shp, ext):
        raise ValueError(f"store into {core.fmt_box(t.name, lo, hi)}: region shape "
                         f"{list(region)} matches neither tile {src!r} nor its valid shape "
                         f"{list(src.valid)}")
    data = rt.bk.reshape(rt.bk.read(src.data, box(src.valid)), ext)
    return lo, tuple(a + e for a, e in zip(lo, ext, strict=True)), data


def assemble_valid(target: Tile, source: Tile, lo: Sequence[int]) -> tuple[int, ...] | None:
    """Valid shape of ``target`` after ``pto.tinsert`` of ``source`` at ``lo``: the union of
    both valid regions when it is one origin-anchored box (else pypto rejects the assemble)."""
    tv = target.valid
    if tv is None:
        return None
    sv = _align(valid_box(source), target.ndim) or valid_box(source)
    if 0 in sv:
        return tv
    far = tuple(a + e for a, e in zip(lo, sv, strict=True))
    grow = [i for i, (f, v) in enumerate(zip(far, tv, strict=True)) if f > v]
    if not grow:
        return tv
    if 0 in tv or (not any(lo) and all(s >= v for s, v in zip(sv, tv, strict=True))):
        if any(lo) and 0 in tv:
            raise ValueError(f"assemble of {source!r} at {list(lo)} into {target!r} with an "
                             "empty valid region: the result would not start at the origin")
        return norm_valid(sv, target.shape)
    ax = grow[0]
    if len(grow) > 1 or lo[ax] > tv[ax] or any(
            lo[i] or sv[i] < tv[i] for i in range(target.ndim) if i != ax):
        raise ValueError(f"assemble of {source!r} (valid {list(sv)}) at {list(lo)} into "
                         f"{target!r} (valid {list(tv)}): the union of the valid regions is not "
                         "one origin-anchored box (pypto rejects it)")
    out = list(tv)
    out[ax] = far[ax]
    return norm_valid(out, target.shape)


# --------------------------------------------------------------------------------------------
# creation
# --------------------------------------------------------------------------------------------


@ops.rule("create_tensor")
def _create_tensor(rt: Run, shape: Sequence[int], dtype: Any, layout: Any = None,
                   manual_dep: bool = False, init_value: float | int | None = None) -> Any:
    """``pl.create_tensor(shape, dtype, layout=ND, manual_dep=False, init_value=None)``.

    Outside a scope: a kernel-internal GM tensor, its own buffer for each iteration of the
    enclosing ``pl.parallel`` / ``pl.spmd`` loops (pypto allocates a body's tensors at the
    body's entry, per iteration; see the comment below for sequential loops), starting as NaN
    / the int dtype's minimum or ``init_value`` (the runtime pre-fills the buffer at each
    allocation; pypto rejects a non-zero fill of FP16/BF16). ``manual_dep=True`` opts the
    tensor out of the runtime's automatic task dependencies; the emulator runs tasks in program
    order, so it changes no value here (it is recorded in ``MANUAL_DEP`` for the task-ordering
    checks). Inside a scope: a Vec tile (filled with ``init_value`` or poison)."""
    shape_t, dt = _ints(shape), as_dtype(dtype)
    if layout is not None and getattr(layout, "name", str(layout)) != "ND":
        raise NotImplementedError(f"pl.create_tensor(layout={layout}) is not emulated "
                                  f"(at {fmt_site(core.caller_site())})")
    if init_value is not None and init_value != 0 and dt.name in ("FP16", "BF16"):
        raise ValueError(f"pl.create_tensor: a non-zero init_value ({init_value}) of {dt.name} "
                         "is rejected by pypto (only init_value=0 works for every dtype)")
    if rt.scope is not None:
        fill = poison_value(dt) if init_value is None else init_value
        return rt.new_tile(rt.bk.full(shape_t, dt.name, fill), dt)
    # pypto's orchestration codegen batches the tensor.create calls of a scope (function, for
    # or if body) into one alloc_tensors() at that scope's entry: a fresh runtime buffer each
    # time the body runs. The emulator gives each iteration of the enclosing pl.parallel /
    # pl.spmd loops its own buffer (so they never share one) and reuses it across the
    # iterations of sequential loops, where one buffer per statement keeps memory bounded;
    # that differs from pypto only for a kernel reading what an earlier iteration left there
    stack = core.call_stack()
    key = (stack, shape_t, dt, tuple((fr.site, fr.value) for fr in rt.par))
    base = rt.created.get(key)
    if base is None:
        site = stack[0]
        name = core.source_name(site, "assign") or f"tensor@{fmt_site(site)}"
        fill = rt.fill_value(dt) if init_value is None else init_value
        base = core.BaseTensor(name, rt.bk.full(shape_t, dt.name, fill), dt, "internal", site)
        rt.created[key] = base
        out = rt.add_base(base)
    else:
        if init_value is not None:  # the runtime pre-fills the buffer at every allocation
            rt.bk.write(base.data, box(shape_t), rt.bk.full(shape_t, dt.name, init_value))
        out = Tensor(base)
    if manual_dep:
        MANUAL_DEP.setdefault(rt, set()).add(id(base))
    return out


#: run -> ids of the BaseTensors created with manual_dep=True
MANUAL_DEP: weakref.WeakKeyDictionary[Run, set[int]] = weakref.WeakKeyDictionary()


@ops.rule("full")
def _full(rt: Run, shape: Sequence[int], dtype: Any, value: float | int) -> Tile:
    """``pl.full`` / ``pl.tile.full(shape, dtype, value)``: a Vec tile of ``value`` (converted
    to ``dtype`` as numpy converts it)."""
    dt = as_dtype(dtype)
    if not core.is_number(value):
        raise TypeError(f"pl.full: value must be a number, got {value!r}")
    return rt.new_tile(rt.bk.full(_ints(shape), dt.name, value), dt)


@ops.rule("create_tile")
def _create_tile_rule(rt: Run, shape: Sequence[int], dtype: Any, target_memory: Any = None,
                      transpose: Any = None, flat_layout: Any = None) -> Tile:
    dt = as_dtype(dtype)
    space = "Vec" if target_memory is None else _space(target_memory, "create_tile")
    if space == "Acc":
        t = rt.new_tile(rt.bk.full(_ints(shape), dt.name, poison_value(dt)), dt, origin="acc")
    else:
        t = place(rt.new_tile(rt.bk.full(_ints(shape), dt.name, poison_value(dt)), dt), space)
    _POISONED.add(rt)
    return t



@export("create_tile", "create", spaces=("pl", "tile"))
def create_tile(shape: Sequence[int], dtype: DType, target_memory: Any = None,
                transpose: bool | None = None, *, flat_layout: bool | None = None) -> Tile:
    """``pl.create_tile(shape, dtype, target_memory=Vec)``: an uninitialized on-chip tile in
    ``target_memory`` (filled with poison until written). ``transpose`` / ``flat_layout`` pick a
    Mat layout, which does not change values here."""
    return ops.apply("create_tile", shape, dtype, target_memory, transpose, flat_layout)


@export("create_l1", spaces=("pl", "tensor"))
def create_l1(shape: Sequence[int], dtype: DType, transpose: bool = False) -> Tile:
    """``pl.create_l1(shape, dtype, transpose=False)``: an uninitialized Mat (L1) tile, the
    accumulator ``pl.gather_row`` fills."""
    return ops.apply("create_tile", shape, dtype, MemorySpace.Mat, transpose, None)


@ops.rule("move")
def _move(rt: Run, tile: Tile, target_memory: Any, blayout: Any = None,
          slayout: Any = None) -> Tile:
    t = ops._tile(rt, tile, "move", "move")
    space = _space(target_memory, "move")
    out = rt.new_tile(rt.bk.copy(t.data), t.dtype, origin="acc" if space == "Acc" else "op")
    out.valid = t.valid
    return place(out, space)


@export("move", spaces=("pl", "tile"))
def move(tile: Tile, target_memory: Any, blayout: Any = None, slayout: Any = None) -> Tile:
    """``pl.move(tile, target_memory=...)``: copy a tile into another on-chip space (values and
    valid shape unchanged; layouts do not change values here)."""
    return ops.apply("move", tile, target_memory, blayout, slayout)


# --------------------------------------------------------------------------------------------
# valid-shape ops
# --------------------------------------------------------------------------------------------


def _pad_scalar(pad_value: Any, dtype: DType | None) -> float | int | bool:
    """The number ``pad_value`` (a PadValue or 0 / 0.0 / ±inf) writes into ``dtype``."""
    pv = pad_value
    if isinstance(pv, bool):
        raise TypeError(f"pad_value cannot be bool ({pv!r})")
    if isinstance(pv, numbers.Number) and not isinstance(pv, PadValue):
        f = float(pv)
        if f == 0:
            pv = PadValue.zero
        elif math.isinf(f):
            pv = PadValue.max if f > 0 else PadValue.min
        else:
            raise ValueError(f"pad_value accepts PadValue.zero/max/min or 0, math.inf, -math.inf;"
                             f" got {pad_value!r}")
    name = getattr(pv, "name", None)
    if name not in ("zero", "max", "min", "null"):
        raise TypeError(f"pad_value must be a pl.PadValue, got {pad_value!r}")
    if dtype is None or name == "null":
        return 0
    if name == "zero":
        return 0
    if dtype.is_float:
        return math.inf if name == "max" else -math.inf
    if dtype.kind == "b":
        return name == "max"
    info = np.iinfo(np.dtype(f"{dtype.kind}{dtype.itemsize}"))
    return int(info.max if name == "max" else info.min)


@ops.rule("fillpad")
def _fillpad(rt: Run, x: Any, pad_value: Any = PadValue.zero) -> Tile:
    t = ops._tile(rt, x, op="fillpad")
    if getattr(pad_value, "name", None) == "null":
        raise ValueError("pl.fillpad: pad_value cannot be PadValue.null")
    val = _pad_scalar(pad_value, t.dtype)
    data = rt.bk.copy(t.data)
    if t.valid is not None:
        shape = t.shape
        for i, (v, n) in enumerate(zip(t.valid, shape, strict=True)):
            if v < n:
                ext = tuple(t.valid[:i]) + (n - v,) + shape[i + 1:]
                rt.bk.write(data, box(t.valid[:i]) + (slice(v, n),),
                            rt.bk.full(ext, t.dtype.name, val))
    return rt.new_tile(data, t.dtype)


@export("fillpad")
def fillpad(x: Any, pad_value: Any = PadValue.zero) -> Tile:
    """``pl.fillpad(x, pad_value=pl.PadValue.zero)``: a new, fully valid tile: ``x``'s valid
    region, and ``pad_value`` (zero; max/min: ±inf for floats, the dtype's max/min for ints;
    also spelled 0, math.inf, -math.inf) in its padding."""
    return ops.apply("fillpad", x, pad_value)


@ops.rule("fillpad_expand")
def _fillpad_expand(rt: Run, x: Any, shape: Sequence[int], pad_value: Any = PadValue.zero) -> Tile:
    t = ops._tile(rt, x, op="fillpad_expand")
    shp = _ints(shape)
    if len(shp) != t.ndim or any(n < e for n, e in zip(shp, t.shape, strict=True)):
        raise ValueError(f"pl.fillpad_expand: shape {list(shp)} must have {t.ndim} dims, each at "
                         f"least {list(t.shape)} of {t!r}")
    if getattr(pad_value, "name", None) == "null":
        raise ValueError("pl.fillpad_expand: pad_value cannot be PadValue.null")
    data = rt.bk.full(shp, t.dtype.name, _pad_scalar(pad_value, t.dtype))
    ext = valid_box(t)
    if all(ext):
        rt.bk.write(data, box(ext), rt.bk.read(t.data, box(ext)))
    return rt.new_tile(data, t.dtype)


@export("fillpad_expand")
def fillpad_expand(x: Any, shape: Sequence[int], pad_value: Any = PadValue.zero) -> Tile:
    """``pl.fillpad_expand(x, shape, pad_value=zero)``: a new fully valid tile of the larger
    ``shape``: ``x``'s valid region at the origin, ``pad_value`` everywhere else."""
    return ops.apply("fillpad_expand", x, shape, pad_value)


@export("fillpad_inplace", spaces=("tile",))
def fillpad_inplace(x: Tile, pad_value: Any = PadValue.zero) -> Tile:
    """``pl.tile.fillpad_inplace(tile, pad_value)``: ``pl.fillpad`` writing into ``tile``'s own
    buffer (the result aliases it)."""
    out = ops.apply("fillpad", x, pad_value)
    if isinstance(x, Tile):
        rt = core.current()
        rt.bk.write(x.data, box(x.shape), out.data)
        out = rt.new_tile(x.data, x.dtype, share=x.buf)
        x.valid = None
    return out


@ops.rule("set_validshape")
def _set_validshape(rt: Run, x: Any, valid_rows: int, valid_cols: int) -> Tile:
    if isinstance(x, Tensor):
        raise NotImplementedError(f"pl.set_validshape of the GM tensor {x!r} (a tensor view with "
                                  "a valid shape) is not emulated; load it first "
                                  f"(at {fmt_site(core.caller_site())})")
    t = ops._tile(rt, x, "view", "set_validshape")
    if t.ndim != 2:
        raise ValueError(f"pl.set_validshape needs a 2-D tile, got {t!r}")
    v = (int(valid_rows), int(valid_cols))
    for i, (e, n) in enumerate(zip(v, t.shape, strict=True)):
        if not 0 <= e <= n:
            raise OutOfBounds(f"pl.set_validshape({t!r}, {v[0]}, {v[1]}): valid extent {e} of "
                              f"dimension {i} outside [0, {n}]")
    out = rt.new_tile(t.data, t.dtype, share=t.buf)
    out.valid = norm_valid(v, t.shape)
    return out


@export("set_validshape")
def set_validshape(x: Any, valid_rows: int, valid_cols: int) -> Tile:
    """``pl.set_validshape(tile, valid_rows, valid_cols)``: the same 2-D tile (no data moves)
    with valid shape [valid_rows, valid_cols]. Narrowing keeps the values outside (they become
    padding); widening exposes whatever the buffer holds there as data."""
    return ops.apply("set_validshape", x, valid_rows, valid_cols)


@ops.rule("transpose_view")
def _transpose_view(rt: Run, x: Tile) -> Tile:
    t = ops._tile(rt, x, "view", "transpose_view")
    if t.ndim < 2:
        raise ValueError(f"pl.tile.transpose_view needs at least 2 dimensions, got {t!r}")
    out = rt.new_tile(rt.bk.transpose(t.data, -2, -1), t.dtype, share=t.buf)
    if t.valid is not None:
        v = list(t.valid)
        v[-2], v[-1] = v[-1], v[-2]
        out.valid = norm_valid(v, out.shape)
    return out


@export("transpose_view", spaces=("tile",))
def transpose_view(x: Tile) -> Tile:
    """``pl.tile.transpose_view(tile)``: the tile with its last two axes swapped, aliasing the
    same buffer (NZ<->ZN); the valid shape swaps with them."""
    return ops.apply("transpose_view", x)


# --------------------------------------------------------------------------------------------
# gather_row / scatter (mask form)
# --------------------------------------------------------------------------------------------


@ops.rule("gather_row")
def _gather_row(rt: Run, dst: Tile, src: Tensor, dst_offset: Sequence[int],
                src_offset: Sequence[int], shapes: Sequence[int], transpose: bool = False,
                valid_shape: Sequence[int] | None = None) -> Tile:
    if not isinstance(dst, Tile) or not isinstance(src, Tensor):
        raise TypeError(f"pl.gather_row(dst tile, src GM tensor, ...): got {dst!r}, {src!r}")
    if dst.dtype != src.dtype:
        raise TypeError(f"pl.gather_row: dtypes of {dst!r} and {src!r} differ")
    doff, soff, shp = _ints(dst_offset), _ints(src_offset), _ints(shapes)
    ext = shp if valid_shape is None else _ints(valid_shape)
    if not len(doff) == len(soff) == len(shp) == len(ext) == 2 == dst.ndim == src.ndim:
        raise ValueError("pl.gather_row: offsets, shapes and valid_shape are [row, col] pairs of "
                         "2-D dst and src")
    _check_window_valid("pl.gather_row", shp, ext)
    shi = tuple(o + e for o, e in zip(soff, ext, strict=True))
    if all(ext):
        core.parse_key(src.shape, core.box_key(soff, shi), lambda: f"pl.gather_row from {src!r}")
    dext = ext[::-1] if transpose else ext
    dhi = tuple(o + e for o, e in zip(doff, dext, strict=True))
    if all(ext):
        core.parse_key(dst.shape, core.box_key(doff, dhi), lambda: f"pl.gather_row into {dst!r}")
    rt.use(dst)
    data = rt.bk.copy(dst.data)
    if all(ext):
        part = rt.bk.read(src.data, core.box_key(soff, shi))
        if transpose:
            part = rt.bk.transpose(part, 0, 1)
        rt.bk.write(data, core.box_key(doff, dhi), part)
        rt.access(src, soff, shi, write=False)
    out = rt.new_tile(data, dst.dtype, share=dst.buf)
    out.valid = dst.valid
    return out


@export("gather_row")
def gather_row(dst: Tile, src: Tensor, dst_offset: Sequence[int], src_offset: Sequence[int],
               shapes: Sequence[int], transpose: bool = False, *,
               valid_shape: Sequence[int] | None = None) -> Tile:
    """``pl.gather_row(dst, src, dst_offset, src_offset, shapes, transpose=False,
    valid_shape=None)``: DMA the ``valid_shape`` box (default ``shapes``) of GM ``src`` at
    ``src_offset`` into ``dst`` at ``dst_offset`` (``transpose``: as its transpose), in place;
    ``dst``'s valid shape is unchanged."""
    return ops.apply("gather_row", dst, src, dst_offset, src_offset, shapes, transpose,
                     valid_shape)


@ops.rule("scatter_mask")
def _scatter_mask(rt: Run, dst: Tile, src: Tile, mask_pattern: int) -> Tile:
    d = ops._tile(rt, dst, op="scatter")
    s = ops._tile(rt, src, op="scatter")
    if int(mask_pattern) not in MASK_SELECT:
        raise ValueError(f"pl.scatter: unknown mask_pattern {mask_pattern!r}")
    start, step = MASK_SELECT[int(mask_pattern)]
    if d.dtype != s.dtype or d.ndim != 2 or s.ndim != 2 or d.shape != (s.shape[0],
                                                                      s.shape[1] * step):
        raise ValueError(f"pl.scatter (mask form): dst {d!r} must be [rows, cols·{step}] of "
                         f"src {s!r}'s dtype")
    data = rt.bk.copy(d.data)
    rt.bk.write(data, (slice(None), slice(start, None, step)), s.data)
    out = rt.new_tile(data, d.dtype)
    out.valid = d.valid
    return out


@export("scatter", spaces=("pl", "tensor"))
def scatter(input: Any, dim: Any = None, index: Any = None, src: Any = None, *,  # noqa: A002
            mask_pattern: int | None = None, dst: Any = None) -> Tile:
    """``pl.scatter(input, mask_pattern=P, dst=dst)``: ``dst`` with the columns ``P`` selects
    (P0101: 0, 2, 4, ...; P1010: 1, 3, ...; stride 4 patterns; P1111: all) replaced by the
    columns of ``input`` in order. The index form (dim, index, src) is not emulated."""
    if dim is not None or index is not None or src is not None:
        raise NotImplementedError("pl.scatter: only the mask form (mask_pattern=, dst=) is "
                                  f"emulated (at {fmt_site(core.caller_site())})")
    if mask_pattern is None or dst is None:
        raise ValueError("pl.scatter mask form needs both mask_pattern and dst")
    return ops.apply("scatter_mask", dst, input, mask_pattern)


@export("scatter_mask", spaces=("tile",))
def scatter_mask(dst: Tile, src: Tile, mask_pattern: int) -> Tile:
    """``pl.tile.scatter_mask(dst, src, mask_pattern)``: see ``pl.scatter``."""
    return ops.apply("scatter_mask", dst, src, mask_pattern)


# --------------------------------------------------------------------------------------------
# valid shapes through the other ops (wrappers around their rules)
# --------------------------------------------------------------------------------------------


_WRAPPED: set[tuple[str, str]] = set()


def _wrap(name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    inner = ops.RULES.get(name)
    if inner is not None and (name, make.__name__) not in _WRAPPED:
        ops.RULES[name] = make(inner)
        _WRAPPED.add((name, make.__name__))


def _keeps_valid(inner: Callable[..., Any]) -> Callable[..., Any]:
    """Elementwise / cast / broadcast: the result has the first operand's valid shape."""

    def fn(rt: Run, x: Any, *args: Any, **kwargs: Any) -> Any:
        out = inner(rt, x, *args, **kwargs)
        v = getattr(x, "valid", None)
        if v is not None and isinstance(out, Tile) and out.shape == x.shape:
            set_valid(rt, out, v)
        return out

    return fn


_ELEMENTWISE = (
    "add sub mul div maximum minimum neg abs sqrt recip exp rsqrt log cast expands row_expand "
    "row_expand_mul row_expand_sub row_expand_add row_expand_div row_expand_max row_expand_min "
    "col_expand col_expand_mul col_expand_sub col_expand_add col_expand_div col_expand_max "
    "col_expand_min"
).split()
for _n in _ELEMENTWISE:
    _wrap(_n, _keeps_valid)

#: elementwise rules of other op groups (imported after this one)
_ELEMENTWISE_LATE = ("cmp", "fmod", "row_expand_expdif", "col_expand_expdif")


def carry_valid_late() -> None:
    """Wrap the elementwise rules other groups define (``lowering.tile.pl`` calls this once
    every group is imported): their results keep the first operand's valid shape."""
    for name in _ELEMENTWISE_LATE:
        _wrap(name, _keeps_valid)


def expand_mismatch(x: tuple[int, ...], v: tuple[int, ...], axis: str) -> str | None:
    """Why a ``row_expand_*`` (``v``: [..., R, 1]) / ``col_expand_*`` (``v``: [..., 1, C]) of
    an ``x`` [..., R, C] is malformed, or None. Both are at least 2-D; pypto flattens N-D tiles
    to 2-D, so leading axes must be all 1, or the vector's leading axes equal x's (a column
    vector may also have unit leading axes: it broadcasts over all flattened rows)."""
    if len(x) < 2 or len(v) < 2:
        return "x and the vector must be at least 2-D"
    want = (x[-2], 1) if axis == "row" else (1, x[-1])
    if tuple(v[-2:]) != want:
        return f"the vector's last two dims must be {list(want)}"
    lx, lv = math.prod(x[:-2]), math.prod(v[:-2])
    if lv == 1 and (lx == 1 or axis == "col"):
        return None
    if tuple(v[:-2]) == tuple(x[:-2]):
        return None
    return (f"leading dims {list(v[:-2])} of the vector do not match {list(x[:-2])} of x (the "
            "2-D flattening would misalign its rows)")


def _reduction(axis: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Row (last axis) / col (first axis) reductions fold only the valid cells."""

    def make(inner: Callable[..., Any]) -> Callable[..., Any]:
        def fn(rt: Run, x: Any, *args: Any, **kwargs: Any) -> Any:
            v = getattr(x, "valid", None)
            if v is None:
                return inner(rt, x, *args, **kwargs)
            if (v[-1] if axis == "row" else v[0]) == 0:
                raise ValueError(f"reduction over {x!r}: its valid extent on the reduced axis "
                                 "is 0")
            stand_in = view(x, v)
            stand_in.shape = x.shape  # scratch sized by the allocation
            out = inner(rt, stand_in, *args, **kwargs)
            if axis == "row":
                return embed(rt, out, x.shape[:-1] + (1,), v[:-1] + (1,))
            return embed(rt, out, (1,) + x.shape[1:], (1,) + v[1:])

        return fn

    return make


for _a in ("row", "col"):
    for _op in ("sum", "max", "min"):
        _wrap(f"{_a}_{_op}", _reduction(_a))


def _mm_k(lhs: Tile, rhs: Tile, a_trans: bool, b_trans: bool) -> tuple[int, int, int, int]:
    """(valid M, valid K of lhs, valid K of rhs, valid N) of ``lhs @ rhs`` (trailing axes)."""
    lv, rv = valid_box(lhs)[-2:], valid_box(rhs)[-2:]
    vm, vk = (lv[1], lv[0]) if a_trans else (lv[0], lv[1])
    vk2, vn = (rv[1], rv[0]) if b_trans else (rv[0], rv[1])
    return vm, vk, vk2, vn


def _cut_k(t: Tile, k: int, axis: int) -> Tile:
    ext = list(t.shape)
    ext[axis] = k
    s = view(t, ext)
    s.valid = None
    return s


def _product_args(lhs: Tile, rhs: Tile, a_trans: bool, b_trans: bool,
                  op: str) -> tuple[Tile, Tile, int, int]:
    """Stand-ins for the operands cut to the lhs valid K, and the product's valid M, N."""
    if lhs.ndim < 2 or rhs.ndim < 2:
        raise ValueError(f"pl.{op}: operands must be at least 2-D, got {lhs!r} and {rhs!r}")
    if any(v != n for v, n in zip(valid_box(lhs)[:-2] + valid_box(rhs)[:-2],
                                  lhs.shape[:-2] + rhs.shape[:-2], strict=True)):
        raise NotImplementedError(f"pl.{op}: partially valid batch axes ({lhs!r}, {rhs!r}) are "
                                  "not emulated")
    vm, vk, vk2, vn = _mm_k(lhs, rhs, a_trans, b_trans)
    if vk2 < vk:
        raise ValueError(f"pl.{op}: the rhs valid K ({vk2}) of {rhs!r} must cover the lhs valid "
                         f"K ({vk}) of {lhs!r}")
    a = _cut_k(lhs, vk, -2 if a_trans else -1)
    b = _cut_k(rhs, vk, -1 if b_trans else -2)
    return a, b, vm, vn


def _matmul_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    def fn(rt: Run, lhs: Any, rhs: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(lhs, "valid", None) is None and getattr(rhs, "valid", None) is None:
            return inner(rt, lhs, rhs, *args, **kwargs)
        a_t = bool(args[1] if len(args) > 1 else kwargs.get("a_trans", False))
        b_t = bool(args[2] if len(args) > 2 else kwargs.get("b_trans", False))
        a, b, vm, vn = _product_args(lhs, rhs, a_t, b_t, "matmul")
        out = inner(rt, a, b, *args, **kwargs)
        return set_valid(rt, out, out.shape[:-2] + (vm, vn))

    return fn


def _matmul_acc_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    def fn(rt: Run, acc: Tile, lhs: Any, rhs: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(lhs, "valid", None) is None and getattr(rhs, "valid", None) is None:
            out = inner(rt, acc, lhs, rhs, *args, **kwargs)
            out.valid = getattr(acc, "valid", None)
            return out
        a_t = bool(args[0] if len(args) > 0 else kwargs.get("a_trans", False))
        b_t = bool(args[1] if len(args) > 1 else kwargs.get("b_trans", False))
        a, b, vm, vn = _product_args(lhs, rhs, a_t, b_t, "matmul_acc")
        out = inner(rt, acc, a, b, *args, **kwargs)
        data = rt.bk.copy(acc.data)  # outside the product's box the accumulator is unchanged
        key = box(out.shape[:-2] + (vm, vn))
        rt.bk.write(data, key, rt.bk.read(out.data, key))
        out.data = data
        out.valid = acc.valid
        return out

    return fn


_wrap("matmul", _matmul_wrap)
_wrap("matmul_acc", _matmul_acc_wrap)


def _reshape_valid(valid: tuple[int, ...], old: tuple[int, ...],
                   new: tuple[int, ...]) -> tuple[int, ...]:
    """pypto's reshape of a valid region: unit axes added or dropped (a dropped one must be
    fully valid), else a region that is a contiguous C-order prefix of the buffer, placed as
    the prefix box of ``new``; anything else raises (pypto rejects it)."""
    nu = [(n, v) for n, v in zip(old, valid, strict=True) if n != 1]
    if [n for n, _ in nu] == [n for n in new if n != 1] and all(
            v == 1 for n, v in zip(old, valid, strict=True) if n == 1):
        it = iter([v for _, v in nu])
        return tuple(next(it) if n != 1 else 1 for n in new)
    if 0 in valid:
        return (0,) + tuple(new[1:])
    i = next(k for k, (n, v) in enumerate(zip(old, valid, strict=True)) if v < n)
    if math.prod(old[:i]) == 1 and tuple(valid[i + 1:]) == tuple(old[i + 1:]):
        p = valid[i] * math.prod(old[i + 1:])  # the region is the flat prefix [0, p)
        for k in range(len(new)):
            inner = math.prod(new[k + 1:])
            if p % inner == 0 and p // inner <= new[k]:
                return (1,) * k + (p // inner,) + tuple(new[k + 1:])
    raise ValueError(f"pl.reshape: the valid region {list(valid)} of a {list(old)} tile has no "
                     f"box in {list(new)} (pypto rejects such a reshape)")


def _reshape_tile(rt: Run, t: Tile, shape: tuple[int, ...]) -> Tile:
    out = rt.new_tile(rt.bk.reshape(t.data, core.data_shape(t.data, shape)), t.dtype,
                      share=t.buf)
    if t.valid is not None:
        out.valid = norm_valid(_reshape_valid(t.valid, t.shape, shape), shape)
    return out


def _reshape_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    def fn(rt: Run, x: Any, shape: Any) -> Any:
        out = inner(rt, x, shape)
        if isinstance(x, Tile) and x.valid is not None:
            out.valid = norm_valid(_reshape_valid(x.valid, x.shape, out.shape), out.shape)
        return out

    return fn


_wrap("reshape", _reshape_wrap)


def _concat_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``pto.tconcat`` packs the valid columns of both sources side by side; the result is
    declared fully valid, so a partial source leaves padding (poison) inside it."""

    def fn(rt: Run, a: Any, b: Any) -> Any:
        va, vb = getattr(a, "valid", None), getattr(b, "valid", None)
        if va is None and vb is None:
            return inner(rt, a, b)
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"pl.concat needs 2-D tiles, got {a!r} and {b!r}")
        out = inner(rt, a, b)
        ca, cb = valid_box(a)[1], valid_box(b)[1]
        data = rt.bk.full(out.shape, out.dtype.name, poison_value(out.dtype))
        rows_a, rows_b = valid_box(a)[0], valid_box(b)[0]
        rt.bk.write(data, (slice(0, rows_a), slice(0, ca)), rt.bk.read(a.data, box((rows_a, ca))))
        rt.bk.write(data, (slice(0, rows_b), slice(ca, ca + cb)),
                    rt.bk.read(b.data, box((rows_b, cb))))
        _POISONED.add(rt)
        out.data = data
        return out

    return fn


_wrap("concat", _concat_wrap)


def _read_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``pl.read`` of a tile element outside its valid region reads padding: a 'coverage'
    warning (the value is the poison)."""

    def fn(rt: Run, src: Any, offset: Any) -> Any:
        v = getattr(src, "valid", None)
        if v is not None:
            idx = _ints(offset)
            if len(idx) == len(v) and any(i >= e for i, e in zip(idx, v, strict=True)):
                site = core.caller_site()
                rt.report("coverage", "warning",
                          f"pl.read of {src!r} at {list(idx)} ({fmt_site(site)}) reads padding "
                          f"(valid shape {list(v)})", once=("read-pad", site))
        return inner(rt, src, offset)

    return fn


_wrap("read", _read_wrap)


def _write_wrap(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``pl.write`` into a tile: the element changes in place (the tile is used)."""

    def fn(rt: Run, dst: Any, offset: Any, value: Any) -> Any:
        if isinstance(dst, Tile):
            rt.use(dst)
        return inner(rt, dst, offset, value)

    return fn


_wrap("write", _write_wrap)
