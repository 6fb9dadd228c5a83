"""Tile ops on the lanes of a loop running in lanes (see :mod:`lowering.tile.lanes`).

While a loop runs in lanes, :func:`lowering.tile.ops.apply` hands every op here:

- an op none of whose arguments differs across the lanes runs as it is, once (its GM reads
  are logged for every iteration by ``Run.access``; a write every iteration would make to one
  place leaves the lanes, as does a GM buffer made per iteration);
- ``DATA`` ops (elementwise, cast, reductions, products, reshape) on per-lane tiles run once
  on the stacked arrays, numpy's broadcasting pairing each lane with its own rows (a value the
  lanes share broadcasts to all of them); ``EXPAND`` (``row_expand`` / ``col_expand``) the
  same, per lane only when the vector is;
- a window of / a write into a tile at offsets the lanes share runs once on every lane's rows;
- everything else — loads and stores at per-lane offsets, ``pl.read`` / ``pl.write``, numbers
  per lane, tiles with a valid shape, the less common ops — runs lane by lane
  (:func:`_per_lane`): the rule itself, once per lane, on that lane's values, with the loop
  index set to that lane's iteration, so every access, bound check and message is the
  one-at-a-time run's; the results become one value (a tile keeps lane 0's buffer: each
  iteration's core holds one).

What cannot be made one value raises :class:`~lowering.tile.lanes.LaneEscape`, and the run
starts again with that loop run one iteration at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowering.tile import core
from lowering.tile.core import Run, Tile
from lowering.tile.lanes import LaneArray, LaneEscape, Lanes, has_lanes, lane_array, lane_of

DATA = frozenset((
    "add sub mul div maximum minimum neg abs sqrt recip exp rsqrt log cast "
    "row_sum row_max row_min col_sum col_max col_min matmul matmul_acc "
    "row_expand_mul row_expand_sub row_expand_add row_expand_div row_expand_max "
    "row_expand_min col_expand_mul col_expand_sub col_expand_add col_expand_div "
    "col_expand_max col_expand_min").split())
EXPAND = frozenset(("row_expand", "col_expand"))
#: ops that change a tile's shape, valid shape or layout and not its values (valid shapes
#: included: they are per tile, the same in every lane)
VIEW = frozenset(("reshape", "set_validshape", "transpose_view"))

#: ops whose every call is per iteration even with no per-lane argument: pl.create_tensor
#: outside a scope allocates one GM buffer per iteration of the enclosing parallel loops
_PER_ITERATION = frozenset(("create_tensor",))


def apply(rt: Run, name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
    """Run rule ``fn`` of op ``name`` inside a loop running in lanes."""
    values = (*args, *kwargs.values()) if kwargs else args
    if not any(map(has_lanes, values)):
        if name in _PER_ITERATION and rt.scope is None:
            raise LaneEscape(f"pl.{name} outside an in-core scope (a buffer per iteration)")
        return fn(rt, *args, **kwargs)
    numbers = any(type(a) is Lanes for a in values)  # a number per lane
    if name in VIEW and not numbers:
        rt.lane_out = _count(values)  # new metadata, or a view, of every lane's data
        return fn(rt, *args, **kwargs)
    if name in _SUBSCRIPT and args and isinstance(args[0], Tile):
        where = (args[2] if len(args) > 2 else kwargs.get("offset")) if name == "assemble" \
            else (args[1] if len(args) > 1 else None)
        if not has_lanes(where) and not (name == "slice_key" and _has_int(where)):
            return fn(rt, *args, **kwargs)  # a window of / a write into a tile, every lane's
    if numbers or any(isinstance(a, Tile) and a.valid is not None for a in values):
        # a number per lane, or a tile with a valid shape (its padding is its own): lane by lane
        return _per_lane(rt, name, fn, args, kwargs)
    if name in DATA or name in EXPAND:
        if name in EXPAND:  # the result is the vector broadcast: per lane if it is
            vec = args[1] if len(args) > 1 else kwargs.get("v")
            rt.lane_out = _count((vec,))
        else:
            rt.lane_out = _count(values)
        return fn(rt, *args, **kwargs)
    return _per_lane(rt, name, fn, args, kwargs)


#: subscripts of a tile, which run once on every lane's rows (at offsets the lanes share)
_SUBSCRIPT = frozenset(("slice_key", "store_key", "assemble"))


def _has_int(key: Any) -> bool:
    """Does a subscript index an axis with a number (a scalar read)?"""
    return any(not isinstance(k, slice) for k in (key if isinstance(key, tuple) else (key,)))


def _count(values: Any) -> int:
    """The lane count of the first per-lane tile among ``values`` (0: none)."""
    for a in values:
        if isinstance(a, Tile) and type(a.data) is LaneArray:
            return a.data.shape[0]
    return 0


def _view(x: Any, i: int) -> Any:
    """Argument ``x`` as lane ``i`` sees it: a per-lane tile becomes that lane's tile (the same
    buffer: no new on-chip memory, and its rows: a write into it is the lane's), numbers and
    sequences that lane's values."""
    if isinstance(x, Tile) and type(x.data) is LaneArray:
        t = Tile(x.data[i].view(np.ndarray), x.dtype, x.buf, x.id, x.site)
        t.valid = x.valid
        return t
    if isinstance(x, tuple | list):
        return type(x)(_view(y, i) for y in x)
    return lane_of(x, i)


def _per_lane(rt: Run, name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
    """The rule once per lane, on that lane's values, with the loop index set to that lane's
    iteration: every access, bound check and message is the one-at-a-time run's. The lanes'
    results become one: the same object (a GM tensor, None), a number per lane, or one tile
    (lane 0's buffer: each iteration's core holds one; the other lanes' are dropped)."""
    frame = rt.lane_frame
    lanes = frame.value
    if name in _IN_PLACE and args:
        _own_rows(rt, args[0], len(lanes.v))
    # inner sequential loops whose bounds differ per lane (core._lane_range): theirs too
    inner = [(f, f.value) for f in rt.loops if f is not frame and type(f.value) is Lanes]
    entry = rt._entry() if rt.checks else None
    out = []
    try:
        for i, it in enumerate(lanes.v.tolist()):
            frame.value = it  # the iteration this lane is: accesses and messages name it
            for f, v in inner:
                f.value = v.at(i)
            n0 = len(entry.bufs) if entry is not None else 0
            a_i = tuple(_view(a, i) for a in args)
            k_i = {k: _view(v, i) for k, v in kwargs.items()}
            r = fn(rt, *a_i, **k_i)
            if isinstance(r, Tile) and any(
                    isinstance(v, Tile) and np.may_share_memory(r.data, v.data)
                    for v in (*a_i, *k_i.values())):
                # a view of a lane's rows: one stacked copy would not follow their changes
                raise LaneEscape(f"pl.{name} of a per-lane tile is a view of it")
            out.append(r)
            if i and entry is not None:
                del entry.bufs[n0:]  # lane i's buffers are lane 0's again
    finally:
        frame.value = lanes
        for f, v in inner:
            f.value = v
    first = out[0]
    if all(r is first for r in out):  # the target tensor, or None
        return first
    if all(core.is_number(r) for r in out):
        return Lanes.of(np.array(out))
    if all(isinstance(r, Tile) for r in out):
        if any(r.shape != first.shape or r.dtype != first.dtype or r.valid != first.valid
               for r in out):
            raise LaneEscape(f"pl.{name} made tiles whose shape differs across the iterations")
        t = Tile(lane_array(np.stack([r.data for r in out])), first.dtype, first.buf, first.id,
                 first.site)
        t.valid = first.valid
        rt.lane_bytes = max(rt.lane_bytes, first.data.nbytes)
        return t
    raise LaneEscape(f"pl.{name} made a different value in each iteration")


#: ops that write into their first argument in place
_IN_PLACE = frozenset(("write", "store_key", "assemble"))


def _own_rows(rt: Run, dst: Any, n: int) -> None:
    """Before a per-lane write into the tile ``dst``: a tile made in this pass is each
    iteration's own, so it gets a row per lane (else every lane would write the one tile:
    ``sampled_row = pl.create_tensor(...)`` in a block, then ``pl.write(sampled_row, [0, 0],
    best_index)``); a tile made before the loop is the one every iteration writes, as in
    order (the race check sees each lane's write)."""
    if not isinstance(dst, Tile) or type(dst.data) is LaneArray:
        return
    if dst.buf is None:
        raise LaneEscape(f"a per-lane write into {dst!r}, made where no scope counts it")
    if dst.buf.home.start < rt.lane_frame.iter_seq:
        return
    if dst.buf.shared:
        raise LaneEscape(f"a per-lane write into {dst!r}, whose storage another tile shares")
    dst.data = lane_array(np.broadcast_to(dst.data, (n, *dst.data.shape)))


def before_tile_write(dst: Tile, value: Tile) -> None:
    """A per-lane value written into a tile the lanes share: the tile becomes per lane (each
    iteration's copy of it, as each iteration has its own), unless another tile shares its
    storage (a reshape of it would not see the change)."""
    if type(dst.data) is LaneArray or type(value.data) is not LaneArray:
        return
    if dst.buf is None or dst.buf.shared:
        raise LaneEscape(f"a per-lane write into {dst!r}, whose storage another tile shares")
    n = value.data.shape[0]
    dst.data = lane_array(np.broadcast_to(dst.data, (n, *dst.data.shape)))


def check_outside(name: str, args: tuple, kwargs: dict) -> None:
    """After a loop ran in lanes: an op of a value of its lanes (kept past the loop) cannot
    be told which iteration's it is. (Every op after a lane loop pays this: the common
    argument kinds are told apart without a call each — a tile, two offset lists and a
    valid shape: 0.9 µs, against 3.5 µs with a call per argument, on an Intel Xeon.)"""
    for x in args:
        if type(x) not in _PLAIN and _kept(x):
            raise LaneEscape(f"pl.{name} after the loop of a value of its lanes")
    for x in kwargs.values():
        if type(x) not in _PLAIN and _kept(x):
            raise LaneEscape(f"pl.{name} after the loop of a value of its lanes")


#: argument kinds that never hold a lane value
_PLAIN = frozenset((int, float, bool, str, type(None), core.Tensor))


def _kept(x: Any) -> bool:
    """``has_lanes(x)``, the common kinds first."""
    t = type(x)
    if t is Tile:
        return type(x.data) is LaneArray
    if t is tuple or t is list:
        for y in x:
            if type(y) not in _PLAIN and _kept(y):
                return True
        return False
    return has_lanes(x)
