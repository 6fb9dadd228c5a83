"""Runtime of the tile emulator: GM tensors, tiles, scopes, loops and access bookkeeping.

One ``Run`` is active while ``run_kernel`` executes a kernel; ops outside a run use a detached
run (numpy backend, no checks), which is handy for unit tests of single ops.

In-core scopes (budget entries): each ``pl.at(level=CORE_GROUP)`` execution, each block of a
``pl.spmd`` (named by its ``name_hint``), each call of a ``@pl.jit.incore`` function; an
in-core scope opened inside another one adds nothing (same core, same memory). Tiles made
outside all of them count in one run-wide entry, ``OUTSIDE``.

Bookkeeping that drives the checks:
- every op advances ``Run.seq``; a tile's buffer (``Buf``) is live from the op that creates it
  to the last op (in the same scope entry) that uses it — see ``budget``;
- every GM load/store is recorded as boxes in the coordinates of the base tensor (views made
  by ``pl.reshape`` are mapped back), appended to the log of every enclosing
  ``pl.parallel``/``pl.spmd``/``pl.split_aiv`` loop (race check at loop end), and applied to
  numpy bool masks (written: coverage; written-but-unread: dead writes). An access is a read,
  a write or an atomic add (``pl.assemble(..., atomic=pl.AtomicType.Add)``): two iterations
  conflict when their boxes overlap and one writes, except two atomic adds;
- on-chip tiles made before an iteration of such a loop and used in it are logged the same
  way (a tile is one buffer: iterations that write it race), and a tile made by an earlier
  iteration read by a later one is a race too (independent iterations share no values).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import linecache
import math
import numbers
import operator
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lowering.backends import get_backend
from lowering.tile import budget as _budget
from lowering.tile.dtypes import DType
from lowering.tile.findings import Finding, KernelDefect, OutOfBounds
from lowering.tile.lanes import LaneArray, LaneEscape, Lanes, body_refusal, iteration_groups

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def caller_site() -> tuple[str, int]:
    """(file, line) of the innermost frame outside this package: the kernel's source line.
    Inside a tile op it is the op's line, found once per op (:func:`lowering.tile.ops.apply`
    keeps it as ``Run.op_site``): walking the stack is most of an op's cost otherwise."""
    run = getattr(_current, "run", None) or _detached
    if run is not None and run.op_site is not None:
        return run.op_site
    f = sys._getframe(1)
    while f is not None and id(f.f_code) in _PKG_CODES:
        f = f.f_back
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        # a set lookup per frame next time, not a string compare (this package's code objects
        # live as long as its modules: their ids are never reused)
        _PKG_CODES.add(id(f.f_code))
        f = f.f_back
    if f is None:
        return ("?", 0)
    return frame_site(f)


def frame_site(f: Any) -> tuple[str, int]:
    """(file, line) a frame is executing, memoised per instruction: ``f_lineno`` walks the
    code object's line table, linear in the length of a long kernel function."""
    code = f.f_code
    # keyed by the code object's identity: hashing a code object hashes its constants and
    # names, every time — for a long kernel function most of an op's cost
    key = (id(code), f.f_lasti)
    hit = _SITES.get(key)
    if hit is not None and hit[0] is code:
        return hit[1]
    site = (code.co_filename, f.f_lineno)
    _SITES[key] = (code, site)  # holding the code keeps its id from being reused
    return site


#: the source files pl ops were called from, with how many ops each: a module with no
#: ``__main__`` of its own is judged through the runs that execute its kernels
#: (:func:`lowering.harness.run_file` reports these; ``lowering sweep`` uses them)
op_files: dict[str, int] = {}

_PKG_CODES: set = set()  # ids of this package's code objects seen on the stack
_SITES: dict = {}  # (id(code), instruction offset) -> (code, (file, line))


def call_stack() -> tuple[tuple[str, int], ...]:
    """(file, line) of every frame outside this package, innermost first: identifies one
    source statement even when a helper function is called from several places."""
    out = []
    f = sys._getframe(1)
    while f is not None:
        if not f.f_code.co_filename.startswith(_PKG_DIR):
            out.append(frame_site(f))
        f = f.f_back
    return tuple(out)


def fmt_site(site: tuple[str, int]) -> str:
    return f"{os.path.basename(site[0])}:{site[1]}"


_LOOP_VAR = re.compile(r"for\s+\(?(\w+)\b[^:]*?\s+in\s+pl\.")
_ASSIGN = re.compile(r"^\s*(\w+)\s*(?::[^=]*)?=\s*pl\.")
_name_cache: dict[tuple[str, int, str], str | None] = {}


def source_name(site: tuple[str, int], kind: str) -> str | None:
    """The loop variable ('loop') or assigned name ('assign') on a kernel source line."""
    key = (site[0], site[1], kind)
    if key not in _name_cache:
        line = linecache.getline(site[0], site[1])
        m = (_LOOP_VAR if kind == "loop" else _ASSIGN).search(line)
        _name_cache[key] = m.group(1) if m else None
    return _name_cache[key]


def fmt_box(name: str, lo: Sequence[int], hi: Sequence[int]) -> str:
    parts = [str(a) if b - a == 1 else f"{a}:{b}" for a, b in zip(lo, hi, strict=True)]
    return f"{name}[{', '.join(parts)}]"


def ranges(idx: np.ndarray) -> str:
    """Sorted ints as compressed ranges: '0..3, 7..7'."""
    if idx.size == 0:
        return "none"
    idx = np.asarray(idx)
    breaks = np.nonzero(np.diff(idx) != 1)[0]
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    out = [f"{a}..{b}" for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    if len(out) > 8:
        out = out[:8] + [f"... ({len(out) - 8} more ranges)"]
    return ", ".join(out)


def describe_mask(mask: np.ndarray) -> str:
    """Rows (axis 0) and columns (the other axes flattened) where ``mask`` is True."""
    m2 = mask.reshape(mask.shape[0], -1) if mask.ndim > 1 else mask.reshape(-1, 1)
    rows = np.nonzero(m2.any(axis=1))[0]
    cols = np.nonzero(m2[rows].any(axis=0))[0]
    n = int(mask.sum())
    if mask.ndim == 1:
        return f"elements {ranges(rows)} ({n} elements)"
    return f"rows {ranges(rows)} × cols {ranges(cols)} ({n} elements)"


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


class Buf:
    """One on-chip buffer inside one scope entry (tiles of a reshape / in-place acc share it)."""

    __slots__ = ("entry", "start", "last", "shape", "dtype", "origin", "vec", "left", "right",
                 "mult", "site", "home", "cuses", "shared")

    def __init__(self, entry: Any, seq: int, shape: tuple[int, ...], dtype: DType, origin: str,
                 mult: int, site: tuple[str, int], home: Buf | None = None) -> None:
        self.home = self if home is None else home  # the storage's first buffer (race keys)
        self.cuses: list[int] = []  # the instants a matmul reads it (L0A / L0B panels)
        self.entry = entry
        self.start = seq
        self.last = seq
        self.shape = shape
        self.dtype = dtype
        self.origin = origin  # 'load' | 'op' | 'acc' | 'scratch'
        self.vec = False
        self.left = False
        self.right = False
        self.mult = mult
        self.site = site
        self.shared = False  # another tile's storage too (a reshape, an in-place result)


class Tile:
    """An on-chip value: backend array ``data``, ``dtype``, ``shape``, an ``id`` and the kernel
    source ``site`` (file, line) that created it. Ops never mutate a tile's data except the
    in-place forms (``tile[...] = x``, ``pl.assemble(tile, ...)``, ``matmul_acc``'s result),
    which return / rebind tiles sharing the same buffer."""

    __slots__ = ("data", "dtype", "shape", "buf", "id", "site", "valid", "__weakref__")

    def __init__(self, data: Any, dtype: DType, buf: Buf | None, tid: int,
                 site: tuple[str, int]) -> None:
        self.data = data
        self.dtype = dtype
        self.shape = shape_of(data)  # one iteration's, for a loop running in lanes
        self.buf = buf
        self.id = tid
        self.site = site
        self.valid: tuple[int, ...] | None = None  # valid shape; None: all of ``shape`` (ops_data)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The tile's values as a numpy array (bf16 as ml_dtypes.bfloat16)."""
        return current().bk.to_numpy(self.data)

    def __repr__(self) -> str:
        shp = ",".join(map(str, self.shape))
        return f"Tile#{self.id}<{self.dtype.name}[{shp}] @ {fmt_site(self.site)}>"

    def __getitem__(self, key: Any) -> Tile:
        from lowering.tile import ops

        return ops.apply("slice_key", self, key)

    def __setitem__(self, key: Any, value: Tile) -> None:
        from lowering.tile import ops

        ops.apply("store_key", self, key, value)


def _lanes_of(data: Any, n: int) -> LaneArray:
    """The result of a lane op, which a backend function returned as a plain array: its
    leading axis must be the ``n`` lanes."""
    if getattr(data, "ndim", 0) == 0 or data.shape[0] != n:
        raise LaneEscape(f"an op's result of shape {list(getattr(data, 'shape', ()))} has no "
                         f"axis of its {n} lanes")
    return data.view(LaneArray)


def shape_of(data: Any) -> tuple[int, ...]:
    """The tile shape of backend array ``data``: a LaneArray holds one value per iteration of
    a loop running in lanes along its leading axis (lowering.tile.lanes), and the shape is one
    iteration's."""
    return tuple(data.shape) if type(data) is not LaneArray else tuple(data.shape[1:])


def data_shape(data: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The array shape of a tile of ``shape`` that is ``data`` reshaped (lanes kept)."""
    return shape if type(data) is not LaneArray else (data.shape[0], *shape)


def data_key(data: Any, lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    """The subscript of the window [lo, hi) of a tile's array (every lane's)."""
    key = box_key(lo, hi)
    return key if type(data) is not LaneArray else (slice(None), *key)


class BaseTensor:
    """The storage of one GM tensor plus its check state."""

    __slots__ = ("name", "data", "shape", "dtype", "kind", "written", "unread", "owned", "orig",
                 "site")

    def __init__(self, name: str, data: Any, dtype: DType, kind: str,
                 site: tuple[str, int] | None = None) -> None:
        self.name = name
        self.data = data
        self.shape = tuple(data.shape)
        self.dtype = dtype
        self.kind = kind  # 'input' | 'output' | 'inout' | 'internal'
        self.written = np.zeros(self.shape, bool) if kind != "input" else None
        self.unread = np.zeros(self.shape, bool) if kind == "internal" else None
        self.owned: np.ndarray | None = None
        self.orig: np.ndarray | None = None
        self.site = site


class Tensor:
    """A GM tensor as the kernel sees it: the base tensor or a view of it — a ``pl.reshape``
    (``shape``), or a window ``[offset, offset + shape)`` of ``parent`` (``pl.slice`` or
    ``t[a:b]`` of a GM tensor outside every in-core scope: pypto keeps those GM views; only
    inside a scope does a slice become a load). Views chain: ``parent`` is the view this one
    is made from (the base tensor when ``None``); ``data`` aliases the base's storage.

    ``t[a:b, c:d]`` inside a scope loads a tile (an int index drops that dimension);
    ``t[a:b, c:d] = tile`` stores one."""

    __slots__ = ("base", "data", "shape", "dtype", "name", "_groups", "_parent", "_offset")

    def __init__(self, base: BaseTensor, shape: tuple[int, ...] | None = None, *,
                 parent: Tensor | None = None, offset: tuple[int, ...] | None = None) -> None:
        self.base = base
        self.dtype = base.dtype
        self.name = base.name
        self._parent = parent
        self._offset = None if offset is None else tuple(offset)
        src_shape = parent.shape if parent is not None else base.shape
        self.shape = tuple(shape) if shape is not None else src_shape
        self._groups = None
        if self._offset is not None:  # a window of the parent (same rank)
            hi = tuple(o + n for o, n in zip(self._offset, self.shape, strict=True))
            self.data = parent.data[box_key(self._offset, hi)]
        elif parent is not None:
            self.data = current().bk.reshape_view(parent.data, self.shape, f"pl.reshape of "
                                                  f"{parent!r} to {list(self.shape)}")
        else:
            self.data = base.data if shape is None else current().bk.reshape(base.data,
                                                                             self.shape)
        if self._offset is None and self.shape != src_shape:
            self._groups = _reshape_groups(self.shape, src_shape)

    def window(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> Tensor:
        """The GM view ``self[lo:hi]`` (same rank)."""
        shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
        return Tensor(self.base, shape, parent=self, offset=tuple(lo))

    def reshaped(self, shape: tuple[int, ...]) -> Tensor:
        """The GM view of ``self`` with another shape (same elements, C order)."""
        if self._parent is None and self._offset is None:
            return Tensor(self.base, tuple(shape))  # a reshape of the base itself
        return Tensor(self.base, tuple(shape), parent=self)

    def rebase(self, base: BaseTensor) -> Tensor:
        """The same chain of views over another base of the same shape (a peer's window)."""
        if self._parent is None:
            return Tensor(base, None if self.shape == base.shape else self.shape)
        return Tensor(base, self.shape, parent=self._parent.rebase(base), offset=self._offset)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Tensor<{self.name}: {self.dtype.name}{list(self.shape)}>"

    def __getitem__(self, key: Any) -> Tile:
        from lowering.tile import ops

        return ops.apply("slice_key", self, key)

    def __setitem__(self, key: Any, value: Tile) -> None:
        from lowering.tile import ops

        ops.apply("store_key", self, key, value)

    def numpy(self) -> np.ndarray:
        return current().bk.to_numpy(self.data)

    def bind_dynamic(self, axis: int, var: Any) -> None:
        """``t.bind_dynamic(axis, M)`` with ``M = pl.dynamic("M")``: dimension ``axis`` of this
        GM tensor is the dynamic dim ``M``. Values are untouched; the running function binds
        ``M`` to this size — one size per name per function call, so another tensor (or
        annotated parameter of the call) bound to ``M`` with a different size raises
        :class:`DynamicDimMismatch` naming both."""
        if not isinstance(var, DynVar):
            raise TypeError(f"{self!r}.bind_dynamic({axis!r}, {var!r}): the second argument "
                            "must be a pl.dynamic(...) variable")
        axis = operator.index(axis)
        if not 0 <= axis < self.ndim:
            raise IndexError(f"{self!r}.bind_dynamic: axis {axis} out of range for "
                             f"{self.ndim} dims")
        current().bind_dyn(var.name, self.shape[axis],
                           f"dim {axis} of tensor {self.name!r} ({fmt_site(caller_site())})")

    def base_index(self, idx: tuple[int, ...]) -> tuple[int, ...]:
        """The base tensor's coordinates of the element at ``idx`` of this view."""
        if self._parent is None and self._groups is None:
            return tuple(idx)
        return self.to_base(tuple(idx), tuple(a + 1 for a in idx))[0][0]

    def to_base(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> list[tuple[tuple, tuple]]:
        """Boxes in base coordinates covering the view box [lo, hi)."""
        parent = self._parent
        if self._offset is not None:
            return parent.to_base(tuple(a + o for a, o in zip(lo, self._offset, strict=True)),
                                  tuple(b + o for b, o in zip(hi, self._offset, strict=True)))
        if self._groups is None:
            boxes = [(tuple(lo), tuple(hi))]
        elif all(b - a == 1 for a, b in zip(lo, hi, strict=True)):
            # one element (a scalar read or write): its flat index in each group, no boxes
            src_shape = parent.shape if parent is not None else self.base.shape
            src = [0] * len(src_shape)
            for vdims, bdims in self._groups:
                flat = 0
                for d in vdims:
                    flat = flat * self.shape[d] + lo[d]
                for d in reversed(bdims):
                    flat, src[d] = divmod(flat, src_shape[d])
            boxes = [(tuple(src), tuple(i + 1 for i in src))]
        else:
            src_shape = parent.shape if parent is not None else self.base.shape
            per_group = []
            for vdims, bdims in self._groups:
                vshape = [self.shape[d] for d in vdims]
                bshape = [src_shape[d] for d in bdims]
                gboxes = []
                for a, b in _box_intervals([lo[d] for d in vdims], [hi[d] for d in vdims],
                                           vshape):
                    gboxes.extend(_interval_boxes(a, b, bshape))
                per_group.append(gboxes)
            boxes = []
            for combo in itertools.product(*per_group):
                blo = tuple(x for part in combo for x in part[0])
                bhi = tuple(x for part in combo for x in part[1])
                boxes.append((blo, bhi))
        if parent is None:
            return boxes
        return [b for plo, phi in boxes for b in parent.to_base(plo, phi)]


class DynamicDimMismatch(KernelDefect, ValueError):
    """Two tensors bound to one ``pl.dynamic`` name have different sizes in one call."""


class DynamicDimUnbound(KernelDefect, ValueError):
    """A ``pl.dynamic`` variable used as a value before any tensor bound it."""


class DynVar:
    """``pl.dynamic("M")``: a named dynamic dimension.

    In an annotation (``pl.Tensor[[M, 128], pl.FP32]``) it marks the dim runtime-sized; a call
    of the annotated function binds ``M`` to the argument's size. As a value (``pl.range(M)``,
    ``M // 8``, a shape) it is the size bound in the current run — pypto substitutes the
    parameter dim bound to ``M`` — so it behaves as that ``int``; unbound, it raises."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"DynVar name must be a valid identifier, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"DynVar({self.name!r})"

    def __index__(self) -> int:
        return current().dyn_size(self.name)

    __int__ = __index__

    def __hash__(self) -> int:
        return hash(("DynVar", self.name))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DynVar):
            return other.name == self.name
        return int(self) == other

    def __ne__(self, other: object) -> bool:
        return not self == other


def _dyn_binop(name: str) -> None:
    op = getattr(operator, name)

    def fwd(self: DynVar, other: Any) -> Any:
        return op(int(self), other)

    def rev(self: DynVar, other: Any) -> Any:
        return op(other, int(self))

    setattr(DynVar, f"__{name}__", fwd)
    if name not in ("lt", "le", "gt", "ge"):
        setattr(DynVar, f"__r{name}__", rev)


for _name in ("add", "sub", "mul", "floordiv", "mod", "truediv", "lt", "le", "gt", "ge"):
    _dyn_binop(_name)
DynVar.__neg__ = lambda self: -int(self)  # type: ignore[method-assign]


def _reshape_groups(vshape: tuple[int, ...], bshape: tuple[int, ...]) -> list:
    """Pair runs of view dims with runs of base dims of equal products (C order)."""
    if math.prod(vshape) != math.prod(bshape):
        raise ValueError(f"cannot reshape {list(bshape)} to {list(vshape)}")
    groups, i, j = [], 0, 0
    while i < len(vshape) or j < len(bshape):
        vd, bd = [i], [j]
        pv = vshape[i] if i < len(vshape) else 1
        pb = bshape[j] if j < len(bshape) else 1
        i += 1
        j += 1
        while pv != pb:
            if pv < pb:
                vd.append(i)
                pv *= vshape[i]
                i += 1
            else:
                bd.append(j)
                pb *= bshape[j]
                j += 1
        groups.append(([d for d in vd if d < len(vshape)], [d for d in bd if d < len(bshape)]))
    return groups


def _box_intervals(lo: list[int], hi: list[int], shape: list[int]) -> list[tuple[int, int]]:
    """Flat C-order [a, b) intervals covering a box of ``shape``."""
    if not shape:
        return [(0, 1)]
    n = len(shape)
    j = n - 1  # dims after j are full
    while j > 0 and lo[j] == 0 and hi[j] == shape[j]:
        j -= 1
    inner = math.prod(shape[j + 1:])
    strides = [math.prod(shape[k + 1:]) for k in range(n)]
    out = []
    for idx in itertools.product(*[range(lo[k], hi[k]) for k in range(j)]):
        base = sum(i * s for i, s in zip(idx, strides, strict=False))
        out.append((base + lo[j] * inner, base + hi[j] * inner))
    return out


def _interval_boxes(a: int, b: int, shape: list[int]) -> list[tuple[tuple, tuple]]:
    """Boxes of ``shape`` covering the flat interval [a, b)."""
    if not shape:
        return [((), ())]
    if len(shape) == 1:
        return [((a,), (b,))]
    inner = math.prod(shape[1:])
    a0, ar = divmod(a, inner)
    b0, br = divmod(b, inner)
    full_lo, full_hi = (0,) * (len(shape) - 1), tuple(shape[1:])
    if a0 == b0:
        return [((a0, *lo), (a0 + 1, *hi)) for lo, hi in _interval_boxes(ar, br, shape[1:])]
    out = []
    if ar:
        out += [((a0, *lo), (a0 + 1, *hi)) for lo, hi in _interval_boxes(ar, inner, shape[1:])]
        a0 += 1
    if b0 > a0:
        out.append(((a0, *full_lo), (b0, *full_hi)))
    if br:
        out += [((b0, *lo), (b0 + 1, *hi)) for lo, hi in _interval_boxes(0, br, shape[1:])]
    return out


def parse_key(shape: tuple[int, ...], key: Any, what: str | Callable[[], str],
              open_stop: bool = False) -> tuple[tuple, tuple, tuple]:
    """Subscript -> (lo, hi, result shape); ints drop their dimension. Bounds are checked;
    ``open_stop``: a slice's stop may pass the dimension (a subscript *write* is pypto's
    ``assemble`` at the offsets: what it moves, the source's valid box, is checked instead).
    ``what`` names the subscripted value in errors: a string, or a function making one (the
    ``repr`` built for every subscript was 5% of py-spy's samples of a loop of GM slices,
    Intel Xeon; an error is rare)."""
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > len(shape):
        raise IndexError(f"{_said(what)}: {len(key)} indices for a {len(shape)}-d value")
    key = key + (slice(None),) * (len(shape) - len(key))
    lo, hi, out = [], [], []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            if k.step not in (None, 1):
                raise IndexError(f"{_said(what)}: strided slices are not tile loads (step {k.step})")
            a = 0 if k.start is None else operator.index(k.start)
            b = n if k.stop is None else operator.index(k.stop)
            if not 0 <= a < b <= (max(b, n) if open_stop else n):
                raise OutOfBounds(f"{_said(what)}: slice {a}:{b} out of bounds for a dimension of {n}")
            lo.append(a)
            hi.append(b)
            out.append(b - a)
        else:
            i = operator.index(k)
            if not 0 <= i < n:
                raise OutOfBounds(f"{_said(what)}: index {i} out of bounds for a dimension of {n}")
            lo.append(i)
            hi.append(i + 1)
    return tuple(lo), tuple(hi), tuple(out)


_PLAIN_NUMBERS = (int, float)


def is_number(x: Any) -> bool:
    """``isinstance(x, numbers.Number)``, with Python's int and float, tiles and tensors told
    apart first: an ABC check is a microsecond, more than some ops' whole work."""
    if type(x) in _PLAIN_NUMBERS:
        return True
    return not isinstance(x, (Tile, Tensor)) and isinstance(x, numbers.Number)


def ints(seq: Any) -> tuple[int, ...]:
    """A shape / offset operand (a sequence of ints, or one int) as a tuple of Python ints."""
    if type(seq) is int:
        return (seq,)
    if isinstance(seq, numbers.Integral):
        return (int(seq),)
    return tuple(map(int, seq))


def _said(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def box_key(lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    if len(lo) != len(hi):
        raise ValueError(f"box_key: {len(lo)} lower and {len(hi)} upper bounds")
    return tuple(map(slice, lo, hi))


# --------------------------------------------------------------------------------------------
# scopes and loops
# --------------------------------------------------------------------------------------------


#: name of the run-wide scope entry of tiles made outside every in-core scope
OUTSIDE = "(outside in-core scopes)"
#: loop kinds whose iterations are independent (race-checked)
PARALLEL_KINDS = ("parallel", "spmd", "split_aiv")
#: access kinds in the race logs
READ, WRITE, ATOMIC = 0, 1, 2
#: the iteration of a race-log record made by every iteration of a loop running in lanes (a
#: read: they write only lane by lane). It differs from every iteration index, so a write by
#: any one iteration meets it as a write meets another iteration's read — a race, which
#: sends the loop back to one iteration at a time (lowering.tile.lanes) to report it
EVERY_LANE = -(1 << 62)
VERBS = _VERB = {READ: "reads", WRITE: "writes", ATOMIC: "atomically adds into"}


class ScopeEntry:
    """One execution of an in-core scope (a ``pl.at`` scope, a ``pl.spmd`` block, a
    ``@pl.jit.incore`` call): one core's on-chip memory."""

    __slots__ = ("name", "indices", "bufs", "imports", "depth", "site")

    def __init__(self, name: str, indices: tuple, depth: int, site: tuple[str, int]) -> None:
        self.name = name
        self.indices = indices
        self.bufs: list[Buf] = []
        self.imports: dict[int, Buf] = {}
        self.depth = depth
        self.site = site


class LoopFrame:
    """One executing ``pl.range``/``parallel``/``pipeline``/``spmd``/``split_aiv`` loop.

    ``loop_seq`` / ``iter_seq``: buffer-time (``2·seq``) just after the last op before the
    loop / the current iteration, so ``buf.start >= iter_seq`` means "made in this
    iteration". ``epoch``: barrier phase of a ``pl.spmd`` with ``pl.system.syncall`` (accesses
    of different phases are ordered). ``carry``: the carried values of a loop with
    ``init_values`` (``yielded``: what this iteration's last ``pl.yield_`` gave)."""

    __slots__ = ("kind", "name", "value", "stage", "site", "log", "seen", "count", "incore",
                 "loop_seq", "iter_seq", "epoch", "carry", "yielded", "tiles", "phased",
                 "barriers", "block", "tag")

    def __init__(self, kind: str, name: str, stage: int, site: tuple[str, int]) -> None:
        self.kind = kind
        self.name = name
        self.value = None
        self.stage = stage
        self.site = site
        self.log: dict[int, list] = {}
        self.seen: set = set()
        self.count = 0
        self.incore = False
        self.loop_seq = 0
        self.iter_seq = 0
        self.epoch = 0
        self.carry: tuple | None = None
        self.yielded: tuple | None = None
        self.tiles: dict[int, Buf] = {}
        self.phased = False
        self.barriers = 0
        self.block: ScopeEntry | None = None  # phased pl.spmd: the running block's entry
        self.tag: Any = None  # what the loop kind needs besides (pl.split_aiv: its SplitMode)


class Run:
    """State of one kernel execution (see module docstring)."""

    def __init__(self, backend: Any = "numpy", platform: str = "a2a3", kernel: str = "kernel",
                 seed: int = 0, permute_parallel: bool = False, checks: bool = True) -> None:
        if platform not in _budget.PLATFORMS:
            raise ValueError(f"unknown platform {platform!r} (known: {_budget.PLATFORMS})")
        self.bk = get_backend(backend)
        self.platform = platform
        self.input_store = "fail"  # severity of a store into an input tensor (see run_kernel)
        self.kernel = kernel
        self.rng = np.random.default_rng(seed)
        self.permute_parallel = permute_parallel
        self.checks = checks
        # a slice of a GM tensor outside every in-core scope is a GM view (pypto); the detached
        # run of single-op unit tests has no scopes at all and loads instead
        self.gm_views = True
        self.seq = 0
        self.op_site: tuple[str, int] | None = None  # the kernel line of the op running now
        self.next_id = 0
        self.scope: ScopeEntry | None = None
        self.scope_stack: list[ScopeEntry | None] = []
        self.outside: ScopeEntry | None = None  # tiles made outside every in-core scope
        self.loops: list[LoopFrame] = []
        self.par: list[LoopFrame] = []
        self.findings: list[Finding] = []
        self.budget = _budget.BudgetReport()
        self.bases: dict[int, BaseTensor] = {}
        self.created: dict[tuple, BaseTensor] = {}  # pl.create_tensor buffers (ops_data)
        self.dyn: dict[str, tuple[int, str]] = {}  # pl.dynamic name -> (size, bound by)
        self.dyn_outer: list[dict] = []  # the callers' bindings (see push_dyn)
        self.calls: list[Any] = []  # decorated functions being called (lowering.tile.jit)
        self.ctx: list[str] = []  # open pl.scope / manual_scope / cluster: 'auto'|'manual'|'cluster'
        self.next_task = 0
        self.task: Any = None  # the in-core task running (a control.TaskId), or None
        self.manual: list[list] = []  # per open manual scope: the tasks started in it
        self._once: set = set()
        # parallel loops run in lanes (lowering.tile.lanes): whether they may, the frame of
        # the loop running in lanes now, and the state below
        self.lanes = checks and getattr(self.bk, "name", "") == "numpy"
        self.lane_frame: LoopFrame | None = None
        self.lane_out = 0  # while a lane op runs whose results are per lane: the lane count
        self.lane_bytes = 0  # the largest tile of the running pass, one lane's bytes
        self.inputs_written = False  # a store into an input tensor happened (input_store)
        self.lane_deny: dict[tuple[str, int], str] = {}  # loop -> why it runs one at a time
        self.lane_sites: set[tuple[str, int]] = set()  # the loops that ran in lanes
        self.lane_refused: dict[tuple[str, int], str] = {}  # the others that ran, and why

    def begin_task(self, task: Any) -> bool:
        """An in-core task starts (unless one is running: nested scopes belong to it). In a
        manual scope its GM accesses are logged for the dependency check. True if started."""
        if self.task is not None or task is None:
            return False
        if self.manual and self.checks:
            task.log = {}  # (bid, kind, lo, hi) -> None, in program order
            self.manual[-1].append(task)
        self.task = task
        return True

    def finish(self) -> None:
        """End of the kernel: the budget of tiles made outside every in-core scope."""
        if self.outside is not None and self.checks:
            self.budget.add_entry(self.outside)
            self.outside = None

    # -- dynamic dims ------------------------------------------------------------------
    def push_dyn(self) -> None:
        """A decorated function is called: its ``pl.dynamic`` names bind afresh (an inline
        function called with two sizes is specialized twice); pop_dyn restores the caller's."""
        self.dyn_outer.append(self.dyn)
        self.dyn = {}

    def pop_dyn(self) -> None:
        self.dyn = self.dyn_outer.pop()

    def bind_dyn(self, name: str, size: int, who: str) -> None:
        """Bind ``pl.dynamic(name)`` to ``size`` in the running function (``who``: what bound
        it, for messages): one size per name per function call."""
        seen = self.dyn.get(name)
        if seen is None:
            self.dyn[name] = (int(size), who)
        elif seen[0] != size:
            raise DynamicDimMismatch(
                f"dynamic dim {name}: {who} has size {size} but {seen[1]} has size {seen[0]} "
                "(one size per pl.dynamic name in a function call)")

    def dyn_size(self, name: str) -> int:
        """The size bound to ``name`` in the running function, else in its callers."""
        seen = self.dyn.get(name)
        for frame in reversed(self.dyn_outer):
            if seen is not None:
                break
            seen = frame.get(name)
        if seen is None:
            raise DynamicDimUnbound(
                f"pl.dynamic({name!r}) used as a value ({fmt_site(caller_site())}) before any "
                "annotated parameter or Tensor.bind_dynamic bound it in this run")
        return seen[0]

    # -- messages ----------------------------------------------------------------------
    def indices(self) -> tuple[tuple[str, int], ...]:
        """The running loops' indices. In a loop running in lanes, an op that runs once for
        all of them (its findings are of shapes, which the lanes share) and a scope entered
        once for all (its budget) are the pass's first lane's: the one-at-a-time run meets
        them first in that iteration."""
        return tuple((f.name, f.value if type(f.value) is not Lanes else f.value.at(0))
                     for f in self.loops)

    def where(self, indices: tuple | None = None, scope: str | None = None) -> str:
        idx = self.indices() if indices is None else indices
        sc = scope if scope is not None else (self.scope.name if self.scope else None)
        s = f"kernel {self.kernel!r}"
        if sc is not None:
            s += f", scope {sc!r}"
        if idx:
            s += ", " + ", ".join(f"{n}={v}" for n, v in idx)
        return s

    def report(self, check: str, severity: str, message: str, *, tensor: str | None = None,
               once: Any = None, indices: tuple | None = None, scope: str | None = None) -> None:
        if not self.checks:
            return
        if self.lane_frame is not None and check == "race" and severity == "fail":
            # a race makes the values depend on the order: the one-at-a-time run's to show
            raise LaneEscape("a race")
        if once is not None:
            if once in self._once:
                return
            self._once.add(once)
        idx = self.indices() if indices is None else indices
        sc = scope if scope is not None else (self.scope.name if self.scope else None)
        self.findings.append(Finding(check=check, severity=severity, kernel=self.kernel,
                                     scope=sc, loop_indices=idx, tensor=tensor,
                                     message=f"{self.where(idx, sc)}: {message}"))

    # -- tiles -------------------------------------------------------------------------
    def _entry(self) -> ScopeEntry:
        """The scope entry tiles count in now (the run-wide OUTSIDE entry outside scopes)."""
        entry = self.scope
        if entry is None:
            entry = self.outside
            if entry is None:
                entry = self.outside = ScopeEntry(OUTSIDE, (), 0, ("?", 0))
        return entry

    def new_tile(self, data: Any, dtype: DType, origin: str = "op",
                 share: Buf | None = None) -> Tile:
        site = caller_site()
        if self.lane_out and origin != "load" and type(data) is not LaneArray:
            data = _lanes_of(data, self.lane_out)  # a lane op's result has the lanes
        if type(data) is LaneArray and data.nbytes > self.lane_bytes * data.shape[0]:
            self.lane_bytes = data.nbytes // data.shape[0]
        self.next_id += 1
        buf = None
        if self.checks:
            entry = self._entry()
            home = None
            if share is not None and share.entry is not entry:
                home = share.home
                share = entry.imports.get(id(share))
            if share is not None:
                buf = share
                buf.shared = True
                buf.last = 2 * self.seq + 1
                if origin == "acc" and self.par:  # matmul_acc accumulates in place
                    self._tile_log(buf, WRITE, None)
            else:
                mult = self.pipeline_mult() if origin == "load" else 1
                buf = Buf(entry, 2 * self.seq + 1, shape_of(data), dtype, origin, mult, site,
                          home)
                entry.bufs.append(buf)
        return Tile(data, dtype, buf, self.next_id, site)

    def scratch(self, shape: tuple[int, ...], dtype: DType) -> None:
        """A scratch buffer live during the current op only (row reductions)."""
        if self.checks:
            entry = self._entry()
            b = Buf(entry, 2 * self.seq, shape, dtype, "scratch", 1, caller_site())
            b.last = 2 * self.seq + 1  # live while the op reads its input and writes its output
            entry.bufs.append(b)

    def use(self, tile: Tile, how: str = "vec", read: bool = True,
            box: tuple | None = None) -> None:
        """Mark ``tile`` used by the current op ('vec', 'left', 'right' or 'acc'); ``read=False``:
        the op only writes into it (the race log then holds the written box alone); ``box``
        ``(lo, hi)``: the op reads that window of it only (a slice)."""
        if not self.checks:
            return
        buf = tile.buf
        entry = self._entry()
        if buf is None or buf.entry is not entry:
            # a value from outside this scope entry crosses the boundary through GM: in this
            # scope it occupies a buffer like a load
            key = id(buf) if buf is not None else -tile.id
            nb = entry.imports.get(key)
            if nb is None:
                nb = Buf(entry, 2 * self.seq, tile.shape, tile.dtype,
                         "acc" if how == "acc" else "load", self.pipeline_mult(), tile.site,
                         buf.home if buf is not None else None)
                entry.bufs.append(nb)
                entry.imports[key] = nb
            buf = nb
        if buf.last < 2 * self.seq:
            buf.last = 2 * self.seq
        if how == "vec":
            buf.vec = True
        elif how == "left" or how == "right":
            if how == "left":
                buf.left = True
            else:
                buf.right = True
            if not buf.cuses or buf.cuses[-1] != 2 * self.seq:
                buf.cuses.append(2 * self.seq)
        if self.par and read:
            home = buf.home
            whole = box is None or home is None or tile.shape != home.shape
            self._tile_log(buf, READ, None if whole else box)

    def tile_write(self, tile: Tile, lo: tuple, hi: tuple) -> None:
        """``tile[lo:hi]`` is written in place (``tile[...] = v``, ``pl.assemble`` into a tile);
        call after ``use(tile)``."""
        if self.par and self.checks and tile.buf is not None:
            entry = self._entry()
            buf = tile.buf if tile.buf.entry is entry else entry.imports.get(id(tile.buf))
            if buf is not None:
                self._tile_log(buf, WRITE, (lo, hi) if tile.shape == buf.home.shape else None)

    def _tile_log(self, buf: Buf, kind: int, box: tuple | None) -> None:
        """Log a use of an on-chip buffer made outside the current iteration of an enclosing
        independent-iteration loop (a value made in this iteration is private to it)."""
        home = buf.home
        start = home.start
        for fr in self.par:
            if home.entry is fr.block if fr.block is not None else start >= fr.iter_seq:
                continue  # made in this iteration (this block of a phased pl.spmd)
            if start >= fr.loop_seq:
                # made by an earlier iteration: a race unless the loop carries values (an
                # in-core pl.parallel may: pypto turns a rebinding into a carried value)
                if fr.carry is None and (fr.kind != "parallel" or not fr.incore):
                    self._carried(fr, home)
                continue
            key = -id(home)
            lo, hi = box if box is not None else ((0,) * len(home.shape), home.shape)
            it = fr.value if type(fr.value) is not Lanes else EVERY_LANE
            if it == EVERY_LANE and kind != READ:  # every iteration writes one shared tile
                raise LaneEscape(f"every iteration writes the tile made at {fmt_site(home.site)}")
            rec = (key, kind, lo, hi, it, fr.epoch)
            if rec not in fr.seen:
                fr.seen.add(rec)
                fr.log.setdefault(key, []).append((kind, lo, hi, it, None, fr.epoch, None))
                fr.tiles[key] = home

    def _carried(self, fr: LoopFrame, home: Buf) -> None:
        """A tile made by an earlier iteration of ``fr`` is used by a later one."""
        self.report(
            "race", "fail",
            f"on-chip tile made at {fmt_site(home.site)} by an earlier iteration of pl.{fr.kind} "
            f"loop {fr.name!r} ({fmt_site(fr.site)}) is used in iteration {fr.name}={fr.value}"
            f" ({fmt_site(caller_site())}): independent iterations share no values (make it in "
            "each iteration, or carry it with init_values / pl.yield_ in a sequential loop)",
            tensor=f"tile@{fmt_site(home.site)}", once=("carried", fr.site, home.site))

    def pipeline_mult(self) -> int:
        m = 1
        depth = self.scope.depth if self.scope is not None else 0
        for fr in self.loops[depth:]:
            if fr.stage > m:
                m = fr.stage
        return m

    # -- GM accesses -------------------------------------------------------------------
    def access(self, view: Tensor, lo: tuple, hi: tuple, write: bool, atomic: bool = False,
               value: bytes | None = None) -> None:
        """Record a GM access of ``view[lo:hi]``: a read, a write, or (``atomic``) an atomic
        add, which reads and writes each element in one indivisible step. ``value``: the bits
        a scalar write stores (``pl.write``), so that two iterations storing the same bits
        unordered are told apart from a race whose outcome depends on the order."""
        if not self.checks:
            return
        base = view.base
        boxes = view.to_base(lo, hi)
        bid = id(base)
        kind = ATOMIC if atomic else WRITE if write else READ
        task = self.task
        if task is not None and task.log is not None:
            for blo, bhi in boxes:
                task.log[(bid, kind, blo, bhi)] = None
        if self.par:
            scope = self.scope.name if self.scope is not None else None
            if kind != READ and self.lane_frame is not None and type(
                    self.lane_frame.value) is Lanes:
                # every iteration writes this one box: what the checks make of N writes
                # (unordered writes of the same bits, a dead first write) is told by their order
                raise LaneEscape(f"every iteration writes {fmt_box(base.name, *boxes[0])}")
            for fr in self.par:
                seen, ep = fr.seen, fr.epoch
                recs = fr.log.get(bid)
                if recs is None:
                    recs = fr.log[bid] = []
                it = fr.value if type(fr.value) is not Lanes else EVERY_LANE
                for blo, bhi in boxes:
                    rec = (bid, kind, blo, bhi, it, ep, value)
                    if rec not in seen:
                        seen.add(rec)
                        recs.append((kind, blo, bhi, it, scope, ep, value))
        for blo, bhi in boxes:
            key = box_key(blo, bhi)
            if kind != READ:
                if base.kind == "input":
                    self.inputs_written = True
                    self.report("coverage", self.input_store,
                                f"store into input tensor {fmt_box(base.name, blo, bhi)} "
                                "(declared without pl.Out / pl.InOut: the write is invisible "
                                "to pypto's dependency tracking)",
                                tensor=base.name, once=("input-write", bid))
                    continue
                base.written[key] = True
                if base.unread is not None:
                    if kind == WRITE:  # an atomic add reads the old value: never dead
                        sub = base.unread[key]
                        if sub.any():
                            self._dead_overwrite(base, blo, sub)
                    base.unread[key] = True
            elif base.unread is not None:
                base.unread[key] = False

    def _dead_overwrite(self, base: BaseTensor, blo: tuple, sub: np.ndarray) -> None:
        site = caller_site()
        nz = np.nonzero(sub)
        lo = tuple(int(a.min()) + o for a, o in zip(nz, blo, strict=True))
        hi = tuple(int(a.max()) + 1 + o for a, o in zip(nz, blo, strict=True))
        self.report("dead_write", "warning",
                    f"{fmt_box(base.name, lo, hi)} was written and is overwritten at "
                    f"{fmt_site(site)} before any read (the first write is dead)",
                    tensor=base.name, once=("dead", id(base), site))

    # -- GM tensors ----------------------------------------------------------------------
    def add_base(self, base: BaseTensor) -> Tensor:
        self.bases[id(base)] = base
        return Tensor(base)

    def fill_value(self, dtype: DType) -> float | int:
        """Initial value of outputs / internal tensors: NaN for floats, the dtype's minimum
        for ints (e.g. -128 for INT8), False for BOOL."""
        if dtype.is_float:
            return float("nan")
        if dtype.kind in "bu":
            return 0
        return -(1 << (8 * dtype.itemsize - 1))


# --------------------------------------------------------------------------------------------
# the current run
# --------------------------------------------------------------------------------------------

# the active run is per thread: each rank of a multi-device run has its own
# (lowering.tile.distributed runs every rank's chip program in its own thread)
_current = threading.local()
_detached: Run | None = None


def current() -> Run:
    global _detached
    run = getattr(_current, "run", None)
    if run is not None:
        return run
    if _detached is None:
        _detached = Run(checks=False, kernel="<detached>")
        _detached.gm_views = False
    return _detached


@contextlib.contextmanager
def use_backend(backend: Any) -> Iterator[Run]:
    """Ops outside a kernel run (``make_tile``, single-op tests) use ``backend`` inside the
    ``with`` block: a detached run (no checks) on that backend."""
    global _detached
    prev = _detached
    _detached = Run(backend, checks=False, kernel="<detached>")
    try:
        yield _detached
    finally:
        _detached = prev


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """A run makes millions of small container objects that live as long as it does (tiles,
    buffers, access records); the cyclic collector's young-generation passes over them cost
    10–25% of a run (pypto-lib's pro qkv_proj_rope.py prefill case: 14.5–16.7 s → 12.2–12.5 s,
    Intel Xeon, another job beside it). Collect 100× less often while it runs."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 100_000), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def active() -> Run | None:
    """The run in progress on this thread, if any (:func:`current` falls back to a detached
    run without checks)."""
    return getattr(_current, "run", None)


def activate(run: Run | None) -> Run | None:
    """Make ``run`` the current run of this thread; returns the previous one."""
    prev = getattr(_current, "run", None)
    _current.run = run
    return prev


class DslError(KernelDefect, ValueError):
    """The kernel breaks a rule pypto's parser or compiler enforces (the real toolchain
    rejects it), found while running it."""


class AtScope:
    """``with pl.at(level=..., name_hint=...) [as tid]:``.

    At CORE_GROUP / CORE / AIC / AIV an in-core scope: a budget entry named ``name_hint``,
    unless an in-core scope is already open (an ``pl.at`` inside a ``pl.spmd`` block or a
    ``@pl.jit.incore`` function runs on the same core). Other levels (HOST, CLUSTER, ...)
    group work and open nothing. ``as tid`` binds ``task`` (the scope's task id)."""

    def __init__(self, level: Any, name_hint: str, site: tuple[str, int], task: Any = None
                 ) -> None:
        self.incore = getattr(level, "name", str(level)) in ("CORE_GROUP", "CORE", "AIC", "AIV")
        self.name = name_hint or f"scope@{fmt_site(site)}"
        self.site = site
        self.task = task
        self.opened = self.started = False

    def __enter__(self) -> Any:
        rt = current()
        rt.scope_stack.append(rt.scope)
        self.opened = self.incore and rt.scope is None
        if self.opened:
            rt.scope = ScopeEntry(self.name, rt.indices(), len(rt.loops), self.site)
            self.started = rt.begin_task(self.task)
        return self.task

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        rt = current()
        if self.started:
            rt.task = None
        entry = rt.scope
        rt.scope = rt.scope_stack.pop()
        if self.opened and exc_type is None and rt.checks and entry is not None:
            rt.budget.add_entry(entry)


def loop(kind: str, args: tuple, stage: int = 1, *, hint: str = "", carry: tuple | None = None,
         emit: Any = None, name: str | None = None, task: Any = None, tag: Any = None
         ) -> Iterator[Any]:
    """The iterator behind pl.range / parallel / pipeline / unroll / spmd / split_aiv.

    ``args``: (stop) | (start, stop) | (start, stop, step), ints (or ``__index__`` objects:
    bound ``pl.dynamic`` dims). ``carry``: the ``init_values`` of a loop with carried values
    (yields ``(i, carried)``; see ``pl.yield_``). ``emit``: yield this instead of the index
    (``with pl.spmd(...) as tid`` yields the task id). ``hint``: the ``pl.spmd`` name_hint."""
    if not 1 <= len(args) <= 3:
        raise TypeError(f"pl.{kind}() takes 1 to 3 positional arguments, got {len(args)}")
    rt = current()
    if kind in _SEQUENTIAL and any(type(a) is Lanes for a in args):
        values: Sequence[Any] = _lane_range(args)
    else:
        ints = [operator.index(a) for a in args]
        if len(ints) == 1:
            ints = [0, ints[0], 1]
        elif len(ints) == 2:
            ints.append(1)
        values = range(*ints)
    site = caller_site()
    name = name or source_name(site, "loop") or f"{kind}@{fmt_site(site)}"
    return _iterate(rt, kind, values, name, stage, site, hint, carry, emit, task, tag)


#: loops whose iterations run in order, one after another
_SEQUENTIAL = ("range", "pipeline", "unroll")


def _lane_range(args: tuple) -> list[Any]:
    """The values of a sequential loop whose bounds differ across the lanes of the loop
    running in lanes around it (``for t in pl.range(t0, t0 + T)``): one trip count for all,
    each value the lanes' own. A trip count that differs leaves the lanes."""
    a = [x.v if type(x) is Lanes else operator.index(x) for x in args]
    start, stop, step = (0, a[0], 1) if len(a) == 1 else (*a, 1) if len(a) == 2 else a
    if np.any(np.asarray(step) == 0):  # the one-at-a-time run tells it
        raise LaneEscape("a loop step of 0")
    counts = np.unique([len(range(*map(int, b))) for b in np.broadcast(start, stop, step)])
    if len(counts) > 1:
        raise LaneEscape("a trip count that differs across the iterations")
    return [Lanes.of(start + k * np.asarray(step)) for k in range(int(counts[0]))]


def _gm_tensor(value: Any) -> bool:
    """A value a lane loop's body may carry by name: a GM tensor, the same in every iteration
    (``out = pl.assemble(out, ...)`` returns it)."""
    return isinstance(value, Tensor)


def _checked(value: Any) -> bool:
    """A value whose items a lane loop's iterations may each set (``t[i] = ...``): a GM tensor
    or a tile, whose writes the race check logs per iteration."""
    return isinstance(value, Tensor | Tile)


def _same_kind(a: Any, b: Any) -> bool:
    """Can ``b`` replace carried value ``a`` (pypto: a carried value keeps one type)?"""
    if isinstance(a, Tile | Tensor) or isinstance(b, Tile | Tensor):
        return type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, bool | np.bool_) or isinstance(b, bool | np.bool_):
        return isinstance(a, bool | np.bool_) and isinstance(b, bool | np.bool_)
    if isinstance(a, int | np.integer) or isinstance(b, int | np.integer):
        return isinstance(a, int | np.integer) and isinstance(b, int | np.integer)
    return True


def _next_carry(frame: LoopFrame) -> tuple:
    got = frame.yielded
    if got is None:
        raise DslError(f"pl.{frame.kind} loop {frame.name!r} ({fmt_site(frame.site)}) has "
                       f"init_values but iteration {frame.name}={frame.value} ended without "
                       "pl.yield_(...) of the carried values")
    if len(got) != len(frame.carry):
        raise DslError(f"pl.{frame.kind} loop {frame.name!r} ({fmt_site(frame.site)}) carries "
                       f"{len(frame.carry)} values but pl.yield_ gave {len(got)}")
    for k, (a, b) in enumerate(zip(frame.carry, got, strict=True)):
        if not _same_kind(a, b):
            raise DslError(f"pl.{frame.kind} loop {frame.name!r} ({fmt_site(frame.site)}): "
                           f"carried value {k} changes type from {a!r} to {b!r}")
    return got


#: iterations run side by side in one pass of a loop running in lanes, at most: enough to
#: make an op's Python cost small beside its arithmetic
LANES_PER_PASS = 128
#: a pass's largest tile (all its lanes) after the first pass: numpy maps an array over 32 MB
#: afresh, and first touching fresh memory costs up to 1 s/GB on these machines (qwen3_32b
#: decode.py's [16, 5120] fp32 tiles, 128 lanes: 42 MB each, the emulator slower than one at
#: a time); arrays that stay in the cache are faster still (V3.2 decode_front.py with top-k
#: 256, Intel Xeon, another job beside: emulator 38.0 s at 1 MiB, 45.6 s at 4 MiB)
LANE_TILE_BYTES = 1 << 20
#: the first pass, before a tile's size is known
FIRST_PASS_LANES = 8


def _passes(rt: Run, groups: list[np.ndarray]) -> Iterator[Any]:
    """The passes of a loop running in lanes over the runs of iterations ``groups``, in order
    (``lowering.tile.lanes.iteration_groups``): in each, the first pass of FIRST_PASS_LANES,
    the next ones as many as keep its largest tile under LANE_TILE_BYTES (``rt.lane_bytes``:
    the largest tile of the pass, one lane's bytes). A single iteration is its index, not
    lanes."""
    n = min(FIRST_PASS_LANES, LANES_PER_PASS)
    for idx in groups:
        i = 0
        while i < len(idx):
            c = idx[i:i + n]
            rt.lane_bytes = 0
            yield Lanes(c) if len(c) > 1 else int(c[0])
            i += len(c)
            n = max(2, min(LANES_PER_PASS, LANE_TILE_BYTES // max(1, rt.lane_bytes)))


#: loops whose iterations may run side by side (lowering.tile.lanes): the independent ones
#: (a pl.split_aiv's two lanes are one core's two vector units: too few to gain)
_LANE_KINDS = ("parallel", "spmd")


def _iterate(rt: Run, kind: str, values: range, name: str, stage: int,
             site: tuple[str, int], hint: str = "", carry: tuple | None = None,
             emit: Any = None, task: Any = None, tag: Any = None) -> Iterator[Any]:
    frame = LoopFrame(kind, name, stage, site)
    frame.tag = tag
    parallel = kind in PARALLEL_KINDS
    frame.count = len(values)
    frame.incore = rt.scope is not None
    frame.carry = carry
    vals: Sequence[int] = values
    if parallel and rt.permute_parallel:
        vals = list(values)
        rt.rng.shuffle(vals)
    own = kind == "spmd" and rt.scope is None  # each block is an in-core scope
    ename = hint or f"spmd@{fmt_site(site)}"
    entry = None
    rt.loops.append(frame)
    if parallel:
        rt.par.append(frame)
    frame.loop_seq = 2 * rt.seq + 2
    started = own and rt.begin_task(task)  # the blocks of a pl.spmd are one task
    if (kind in _LANE_KINDS and carry is None and (emit is None or kind == "spmd")
            and rt.lanes and rt.lane_frame is None and len(values) > 1 and not rt.manual):
        caller = sys._getframe(1)
        why = rt.lane_deny.get(site) or body_refusal(
            site, caller, _gm_tensor, rt.scope is None and kind == "parallel", _checked)
        groups = why or iteration_groups(site, caller, np.array(vals, np.int64))
        if type(groups) is str:
            why = groups
        if why is None:  # passes of iterations side by side, each iteration a lane
            vals = _passes(rt, groups)
            rt.lane_frame = frame
            rt.lane_sites.add(site)
        else:
            rt.lane_refused[site] = why
    try:
        for v in vals:
            frame.value = v
            frame.iter_seq = 2 * rt.seq + 2
            if own:
                entry = ScopeEntry(ename, rt.indices(), len(rt.loops), site)
                rt.scope_stack.append(rt.scope)
                rt.scope = entry
            if carry is not None:
                frame.yielded = None
                yield (v, frame.carry)
                frame.carry = _next_carry(frame)
            else:
                yield v if emit is None else emit
            if own:
                rt.scope = rt.scope_stack.pop()
                if rt.checks:
                    rt.budget.add_entry(entry)
                entry = None
        rt.loops.pop()
        if parallel:
            rt.par.pop()
            _race_check(rt, frame)
        if rt.lane_frame is frame:  # left only when the pass ends normally (see LaneEscape)
            rt.lane_frame = None
        frame = None
    finally:
        if started:
            rt.task = None
        if frame is not None:  # left early (break / exception)
            if entry is not None and rt.scope is entry:
                rt.scope = rt.scope_stack.pop()
            if rt.loops and rt.loops[-1] is frame:
                rt.loops.pop()
            if parallel and rt.par and rt.par[-1] is frame:
                rt.par.pop()


def innermost(kind: str) -> LoopFrame | None:
    """The innermost executing loop of ``kind`` ('spmd', 'split_aiv', ...), or None."""
    for fr in reversed(current().loops):
        if fr.kind == kind:
            return fr
    return None


def run_phased(n: int, hint: str, site: tuple[str, int], body: Any, with_index: bool,
               name: str, task: Any = None) -> None:
    """Run the ``n`` blocks of a ``pl.spmd`` whose body has ``pl.system.syncall`` barriers.

    ``body`` is the block body as a generator function (``lowering.tile.rewrite`` turned
    each barrier statement into ``yield``), called with the block index if ``with_index``.
    Blocks run one at a time in block order (seeded random order with permute_parallel) up
    to the next barrier; once every block has arrived, the next phase starts. A block's
    loops, scopes and on-chip values are kept across its barriers. Accesses of different
    phases never race (the barrier orders them). Some blocks finishing while others wait at
    a barrier is a deadlock on the device: :class:`DslError`."""
    rt = current()
    frame = LoopFrame("spmd", name, 1, site)
    frame.phased = True
    frame.count = n
    frame.incore = rt.scope is not None
    own = rt.scope is None
    ename = hint or f"spmd@{fmt_site(site)}"
    order = list(range(n))
    if rt.permute_parallel:
        rt.rng.shuffle(order)
    outer_scope = rt.scope
    rt.loops.append(frame)
    rt.par.append(frame)
    frame.loop_seq = 2 * rt.seq + 2
    lbase, pbase, sbase = len(rt.loops), len(rt.par), len(rt.scope_stack)
    state: dict[int, list] = {}
    started = own and rt.begin_task(task)
    try:
        for b in order:
            frame.value = b
            entry = ScopeEntry(ename, rt.indices(), lbase, site) if own else outer_scope
            state[b] = [None, entry, [], [], entry, [], 2 * rt.seq + 2]
        live, epoch = order, 0
        while live:
            arrived, finished = [], []
            for b in live:
                st = state[b]
                frame.value, frame.epoch, frame.barriers = b, epoch, 0
                frame.iter_seq = st[6]
                frame.block = st[1] if own else None  # the block's entry: its private tiles
                rt.scope = st[4]
                rt.scope_stack.extend(st[5])
                rt.loops.extend(st[2])
                rt.par.extend(st[3])
                try:
                    if st[0] is None:
                        st[0] = body(b) if with_index else body()
                    next(st[0])
                    if frame.barriers != 1:
                        raise DslError(f"pl.spmd {ename!r}: a pl.system.syncall the emulator "
                                       "cannot suspend at (inside a called function?)")
                    arrived.append(b)
                except StopIteration:
                    if frame.barriers:
                        raise DslError(f"pl.spmd {ename!r}: a pl.system.syncall the emulator "
                                       "cannot suspend at (inside a called function?)") from None
                    finished.append(b)
                st[2], st[3] = rt.loops[lbase:], rt.par[pbase:]
                st[4], st[5] = rt.scope, rt.scope_stack[sbase:]
                del rt.loops[lbase:], rt.par[pbase:], rt.scope_stack[sbase:]
                rt.scope = outer_scope
            if arrived and finished:
                raise DslError(
                    f"pl.spmd {ename!r} ({fmt_site(site)}): blocks {sorted(arrived)} wait at "
                    f"pl.system.syncall #{epoch + 1} but blocks {sorted(finished)} have ended: "
                    "the barrier never completes (the device hangs)")
            for b in finished:
                if own and rt.checks:
                    rt.budget.add_entry(state[b][1])
            live, epoch = arrived, epoch + 1
        rt.loops.pop()
        rt.par.pop()
        _race_check(rt, frame)
        frame = None
    finally:
        if started:
            rt.task = None
        if frame is not None:
            del rt.loops[lbase - 1:], rt.par[pbase - 1:], rt.scope_stack[sbase:]
            rt.scope = outer_scope
            for st in state.values():
                if st[0] is not None:
                    st[0].close()


def _race_check(rt: Run, frame: LoopFrame) -> None:
    """Accesses of different iterations (same barrier phase) to overlapping boxes where one
    writes, other than two atomic adds -> 'race' findings (GM tensors and on-chip tiles)."""
    if not rt.checks:
        return
    outer = rt.indices()
    for bid, recs in frame.log.items():
        n = len(recs)
        if n < 2:
            continue
        kind = np.fromiter((r[0] for r in recs), np.int8, n)
        if not kind.any():
            continue
        home = frame.tiles.get(bid)
        shape = home.shape if home is not None else getattr(rt.bases.get(bid), "shape", None)
        if shape is not None and _race_free(recs, tuple(shape)):
            continue
        lo = np.array([r[1] for r in recs], dtype=np.int64)
        hi = np.array([r[2] for r in recs], dtype=np.int64)
        it = np.array([r[3] for r in recs], dtype=np.int64)
        ep = np.fromiter((r[5] for r in recs), np.int64, n)
        # scalar writes carry their bits: two plain writes of the same bits are unordered
        # but cannot change the outcome (e.g. every block setting one ready flag to 1)
        vals: dict = {}
        vid = np.fromiter((-1 if r[6] is None else vals.setdefault(r[6], len(vals))
                           for r in recs), np.int64, n)
        widx = np.nonzero(kind)[0]
        step = max(1, 4_000_000 // (n * lo.shape[1] + 1))
        hits = same = 0
        first = benign = None
        for s in range(0, len(widx), step):
            wi = widx[s:s + step]
            ov = np.all((lo[wi, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[wi, None, :]),
                        axis=2)
            ov &= (it[wi, None] != it[None, :]) & (ep[wi, None] == ep[None, :])
            ov &= (kind[wi, None] != ATOMIC) | (kind[None, :] != ATOMIC)
            if vals:
                eq = ov & (vid[wi, None] >= 0) & (vid[wi, None] == vid[None, :])
                eq &= (kind[wi, None] == WRITE) & (kind[None, :] == WRITE)
                if eq.any():
                    a, b = np.nonzero(eq)
                    same += len(a)
                    if benign is None:
                        benign = (int(wi[a[0]]), int(b[0]))
                    ov &= ~eq
            if ov.any():
                a, b = np.nonzero(ov)
                hits += len(a)
                if first is None:
                    first = (int(wi[a[0]]), int(b[0]))
        if first is not None:
            _report_race(rt, frame, bid, recs, first, hits, outer, lo, hi)
        elif benign is not None:
            _report_race(rt, frame, bid, recs, benign, same, outer, lo, hi, same_bits=True)


#: above this many touched elements the race check compares boxes pairwise, without a raster
_RASTER_LIMIT = 1 << 24


def _race_free(recs: list, shape: tuple[int, ...]) -> bool:
    """True when no two iterations of one barrier phase conflict on the tensor of ``shape``
    (the common case, proved in time linear in the records): per phase, a raster of which
    iteration plainly writes each element (a second writer is a conflict), then of who adds
    atomically (one iteration or several), then every access checked against both — a write
    or a read against another iteration's write or atomic add, an atomic add against another
    iteration's write. False on any conflict (or a tensor too large to raster): the pairwise
    check then finds and reports it."""
    if any(len(r[1]) != len(shape) for r in recs):
        return False
    phases: dict[int, list] = {}
    for r in recs:
        phases.setdefault(r[5], []).append(r)
    for group in phases.values():
        if len({r[3] for r in group}) < 2:
            continue
        # the raster covers the bounding box of the phase's accesses only
        org = tuple(min(r[1][d] for r in group) for d in range(len(shape)))
        ext = tuple(max(r[2][d] for r in group) - o for d, o in enumerate(org))
        if math.prod(ext) > _RASTER_LIMIT:
            return False
        writer = np.full(ext, -1, np.int32)
        adder = np.full(ext, -1, np.int32)  # -2: several iterations add here

        def rbox(lo: tuple, hi: tuple, org: tuple = org) -> tuple[slice, ...]:
            return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, org, strict=True))

        for kind, lo, hi, it, *_ in group:
            box = rbox(lo, hi)
            if kind == WRITE:
                w = writer[box]
                if ((w >= 0) & (w != it)).any():
                    return False
                w[...] = it
            elif kind == ATOMIC:
                a = adder[box]
                a[...] = np.where((a == -1) | (a == it), it, -2)
        for kind, lo, hi, it, *_ in group:
            box = rbox(lo, hi)
            w = writer[box]
            if ((w >= 0) & (w != it)).any():
                return False
            if kind != ATOMIC:
                a = adder[box]
                if ((a == -2) | ((a >= 0) & (a != it))).any():
                    return False
    return True


def _report_race(rt: Run, frame: LoopFrame, bid: int, recs: list, first: tuple, hits: int,
                 outer: tuple, lo: np.ndarray, hi: np.ndarray, same_bits: bool = False) -> None:
    """A 'race' finding: a FAIL, or a warning when every conflicting pair is two scalar
    writes of the same bits (``same_bits``: unordered, yet the outcome is one)."""
    i, j = first
    home = frame.tiles.get(bid)
    if home is not None:
        name = f"tile@{fmt_site(home.site)}"
        what = (f"on-chip tile made at {fmt_site(home.site)} (before the iteration: one buffer "
                "shared by all iterations)")
    else:
        base = rt.bases.get(bid)
        name = base.name if base is not None else "?"
        what = f"tensor {name!r}"
    ilo = np.maximum(lo[i], lo[j]).tolist()
    ihi = np.minimum(hi[i], hi[j]).tolist()

    def in_scope(rec: tuple) -> str:
        return f" in scope {rec[4]!r}" if rec[4] is not None else ""

    rt.report(
        "race", "warning" if same_bits else "fail",
        ("unordered writes of the same bits (the outcome does not depend on their order) "
         if same_bits else "")
        + f"race on {what} in pl.{frame.kind} loop {frame.name!r} "
        f"({fmt_site(frame.site)}): iteration {frame.name}={int(recs[i][3])} "
        f"{_VERB[recs[i][0]]} {fmt_box(name, recs[i][1], recs[i][2])}{in_scope(recs[i])} and "
        f"iteration {frame.name}={int(recs[j][3])} {_VERB[recs[j][0]]} "
        f"{fmt_box(name, recs[j][1], recs[j][2])}{in_scope(recs[j])}; overlap "
        f"{fmt_box(name, ilo, ihi)} ({hits} conflicting access pairs)",
        tensor=name, indices=outer, once=("race", frame.site, bid),
        scope=recs[i][4] if rt.scope is None else None)
