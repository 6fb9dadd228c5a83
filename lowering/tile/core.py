"""Runtime of the tile emulator: GM tensors, tiles, scopes, loops and access bookkeeping.

One ``Run`` is active while ``run_kernel`` executes a kernel; ops outside a run use a detached
run (numpy backend, no checks), which is handy for unit tests of single ops.

Bookkeeping that drives the checks:
- every op advances ``Run.seq``; a tile's buffer (``Buf``) is live from the op that creates it
  to the last op (in the same ``pl.at`` scope entry) that uses it — see ``budget``;
- every GM load/store is recorded as boxes in the coordinates of the base tensor (views made
  by ``pl.reshape`` are mapped back), appended to the log of every enclosing
  ``pl.parallel``/``pl.spmd`` loop (race check at loop end), and applied to numpy bool masks
  (written: coverage; written-but-unread: dead writes).
"""

from __future__ import annotations

import contextlib
import itertools
import linecache
import math
import operator
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lowering.backends import get_backend
from lowering.tile import budget as _budget
from lowering.tile.dtypes import DType
from lowering.tile.findings import Finding, OutOfBounds

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def caller_site() -> tuple[str, int]:
    """(file, line) of the innermost frame outside this package: the kernel's source line."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return ("?", 0)
    return (f.f_code.co_filename, f.f_lineno)


def call_stack() -> tuple[tuple[str, int], ...]:
    """(file, line) of every frame outside this package, innermost first: identifies one
    source statement even when a helper function is called from several places."""
    out = []
    f = sys._getframe(1)
    while f is not None:
        if not f.f_code.co_filename.startswith(_PKG_DIR):
            out.append((f.f_code.co_filename, f.f_lineno))
        f = f.f_back
    return tuple(out)


def fmt_site(site: tuple[str, int]) -> str:
    return f"{os.path.basename(site[0])}:{site[1]}"


_LOOP_VAR = re.compile(r"for\s+(\w+)\s+in\s+pl\.")
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
                 "mult", "site")

    def __init__(self, entry: Any, seq: int, shape: tuple[int, ...], dtype: DType, origin: str,
                 mult: int, site: tuple[str, int]) -> None:
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


class Tile:
    """An on-chip value: backend array ``data``, ``dtype``, ``shape``, an ``id`` and the kernel
    source ``site`` (file, line) that created it. Ops never mutate a tile's data except the
    in-place forms (``tile[...] = x``, ``pl.assemble(tile, ...)``, ``matmul_acc``'s result),
    which return / rebind tiles sharing the same buffer."""

    __slots__ = ("data", "dtype", "shape", "buf", "id", "site", "__weakref__")

    def __init__(self, data: Any, dtype: DType, buf: Buf | None, tid: int,
                 site: tuple[str, int]) -> None:
        self.data = data
        self.dtype = dtype
        self.shape = tuple(data.shape)
        self.buf = buf
        self.id = tid
        self.site = site

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
    """A GM tensor as the kernel sees it: the base tensor or a ``pl.reshape`` view of it.

    ``t[a:b, c:d]`` inside a scope loads a tile (an int index drops that dimension);
    ``t[a:b, c:d] = tile`` stores one."""

    __slots__ = ("base", "data", "shape", "dtype", "name", "_groups")

    def __init__(self, base: BaseTensor, shape: tuple[int, ...] | None = None) -> None:
        self.base = base
        self.shape = tuple(shape) if shape is not None else base.shape
        self.dtype = base.dtype
        self.name = base.name
        self.data = base.data if shape is None else current().bk.reshape(base.data, self.shape)
        self._groups = None if self.shape == base.shape else _reshape_groups(self.shape,
                                                                             base.shape)

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

    def to_base(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> list[tuple[tuple, tuple]]:
        """Boxes in base coordinates covering the view box [lo, hi)."""
        if self._groups is None:
            return [(lo, hi)]
        per_group = []
        for vdims, bdims in self._groups:
            vshape = [self.shape[d] for d in vdims]
            bshape = [self.base.shape[d] for d in bdims]
            boxes = []
            for a, b in _box_intervals([lo[d] for d in vdims], [hi[d] for d in vdims], vshape):
                boxes.extend(_interval_boxes(a, b, bshape))
            per_group.append(boxes)
        out = []
        for combo in itertools.product(*per_group):
            blo = tuple(x for part in combo for x in part[0])
            bhi = tuple(x for part in combo for x in part[1])
            out.append((blo, bhi))
        return out


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


def parse_key(shape: tuple[int, ...], key: Any, what: str) -> tuple[tuple, tuple, tuple]:
    """Subscript -> (lo, hi, result shape); ints drop their dimension. Bounds are checked."""
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > len(shape):
        raise IndexError(f"{what}: {len(key)} indices for a {len(shape)}-d value")
    key = key + (slice(None),) * (len(shape) - len(key))
    lo, hi, out = [], [], []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            if k.step not in (None, 1):
                raise IndexError(f"{what}: strided slices are not tile loads (step {k.step})")
            a = 0 if k.start is None else operator.index(k.start)
            b = n if k.stop is None else operator.index(k.stop)
            if not 0 <= a < b <= n:
                raise OutOfBounds(f"{what}: slice {a}:{b} out of bounds for a dimension of {n}")
            lo.append(a)
            hi.append(b)
            out.append(b - a)
        else:
            i = operator.index(k)
            if not 0 <= i < n:
                raise OutOfBounds(f"{what}: index {i} out of bounds for a dimension of {n}")
            lo.append(i)
            hi.append(i + 1)
    return tuple(lo), tuple(hi), tuple(out)


def box_key(lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


# --------------------------------------------------------------------------------------------
# scopes and loops
# --------------------------------------------------------------------------------------------


class ScopeEntry:
    """One execution of a ``pl.at`` scope."""

    __slots__ = ("name", "indices", "bufs", "imports", "depth", "site")

    def __init__(self, name: str, indices: tuple, depth: int, site: tuple[str, int]) -> None:
        self.name = name
        self.indices = indices
        self.bufs: list[Buf] = []
        self.imports: dict[int, Buf] = {}
        self.depth = depth
        self.site = site


class LoopFrame:
    __slots__ = ("kind", "name", "value", "stage", "site", "log", "seen")

    def __init__(self, kind: str, name: str, stage: int, site: tuple[str, int]) -> None:
        self.kind = kind
        self.name = name
        self.value = None
        self.stage = stage
        self.site = site
        self.log: dict[int, list] = {}
        self.seen: set = set()


class Run:
    """State of one kernel execution (see module docstring)."""

    def __init__(self, backend: Any = "numpy", platform: str = "a2a3", kernel: str = "kernel",
                 seed: int = 0, permute_parallel: bool = False, checks: bool = True) -> None:
        if platform not in _budget.PLATFORMS:
            raise ValueError(f"unknown platform {platform!r} (known: {_budget.PLATFORMS})")
        self.bk = get_backend(backend)
        self.platform = platform
        self.kernel = kernel
        self.rng = np.random.default_rng(seed)
        self.permute_parallel = permute_parallel
        self.checks = checks
        self.seq = 0
        self.next_id = 0
        self.scope: ScopeEntry | None = None
        self.scope_stack: list[ScopeEntry | None] = []
        self.loops: list[LoopFrame] = []
        self.par: list[LoopFrame] = []
        self.findings: list[Finding] = []
        self.budget = _budget.BudgetReport()
        self.bases: dict[int, BaseTensor] = {}
        self.created: dict[tuple, BaseTensor] = {}
        self._once: set = set()

    # -- messages ----------------------------------------------------------------------
    def indices(self) -> tuple[tuple[str, int], ...]:
        return tuple((f.name, f.value) for f in self.loops)

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
    def new_tile(self, data: Any, dtype: DType, origin: str = "op",
                 share: Buf | None = None) -> Tile:
        site = caller_site()
        self.next_id += 1
        entry = self.scope
        buf = None
        if entry is not None and self.checks:
            if share is not None and share.entry is not entry:
                share = entry.imports.get(id(share))
            if share is not None:
                buf = share
                buf.last = 2 * self.seq + 1
            else:
                mult = self.pipeline_mult() if origin == "load" else 1
                buf = Buf(entry, 2 * self.seq + 1, tuple(data.shape), dtype, origin, mult, site)
                entry.bufs.append(buf)
        return Tile(data, dtype, buf, self.next_id, site)

    def scratch(self, shape: tuple[int, ...], dtype: DType) -> None:
        """A scratch buffer live during the current op only (row reductions)."""
        entry = self.scope
        if entry is not None and self.checks:
            b = Buf(entry, 2 * self.seq, shape, dtype, "scratch", 1, caller_site())
            b.last = 2 * self.seq + 1  # live while the op reads its input and writes its output
            entry.bufs.append(b)

    def use(self, tile: Tile, how: str = "vec") -> None:
        """Mark ``tile`` used by the current op ('vec', 'left', 'right' or 'acc')."""
        buf = tile.buf
        entry = self.scope
        if entry is None or not self.checks:
            return
        if buf is None or buf.entry is not entry:
            # a value from outside this scope entry crosses the boundary through GM: in this
            # scope it occupies a buffer like a load
            key = id(buf) if buf is not None else -tile.id
            nb = entry.imports.get(key)
            if nb is None:
                nb = Buf(entry, 2 * self.seq, tile.shape, tile.dtype,
                         "acc" if how == "acc" else "load", self.pipeline_mult(), tile.site)
                entry.bufs.append(nb)
                entry.imports[key] = nb
            buf = nb
        if buf.last < 2 * self.seq:
            buf.last = 2 * self.seq
        if how == "vec":
            buf.vec = True
        elif how == "left":
            buf.left = True
        elif how == "right":
            buf.right = True

    def pipeline_mult(self) -> int:
        m = 1
        depth = self.scope.depth if self.scope is not None else 0
        for fr in self.loops[depth:]:
            if fr.stage > m:
                m = fr.stage
        return m

    # -- GM accesses -------------------------------------------------------------------
    def access(self, view: Tensor, lo: tuple, hi: tuple, write: bool) -> None:
        if not self.checks:
            return
        base = view.base
        boxes = view.to_base(lo, hi)
        bid = id(base)
        scope = self.scope.name if self.scope is not None else None
        for fr in self.par:
            seen, it = fr.seen, fr.value
            recs = fr.log.get(bid)
            if recs is None:
                recs = fr.log[bid] = []
            for blo, bhi in boxes:
                rec = (bid, write, blo, bhi, it)
                if rec not in seen:
                    seen.add(rec)
                    recs.append((write, blo, bhi, it, scope))
        for blo, bhi in boxes:
            key = box_key(blo, bhi)
            if write:
                if base.kind == "input":
                    self.report("coverage", "fail",
                                f"store into input tensor {fmt_box(base.name, blo, bhi)}",
                                tensor=base.name, once=("input-write", bid))
                    continue
                base.written[key] = True
                if base.unread is not None:
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

_current: Run | None = None
_detached: Run | None = None


def current() -> Run:
    global _detached
    if _current is not None:
        return _current
    if _detached is None:
        _detached = Run(checks=False, kernel="<detached>")
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


def activate(run: Run | None) -> Run | None:
    global _current
    prev, _current = _current, run
    return prev


class AtScope:
    """``with pl.at(level=pl.Level.CORE_GROUP, name_hint=...)``: an in-core scope."""

    def __init__(self, level: Any, name_hint: str, site: tuple[str, int]) -> None:
        self.incore = getattr(level, "name", str(level)) in ("CORE_GROUP", "CORE", "AIC", "AIV")
        self.name = name_hint or f"scope@{fmt_site(site)}"
        self.site = site

    def __enter__(self) -> AtScope:
        rt = current()
        rt.scope_stack.append(rt.scope)
        if self.incore:
            rt.scope = ScopeEntry(self.name, rt.indices(), len(rt.loops), self.site)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        rt = current()
        entry = rt.scope
        rt.scope = rt.scope_stack.pop()
        if self.incore and exc_type is None and rt.checks and entry is not None:
            rt.budget.add_entry(entry)


def loop(kind: str, args: tuple, stage: int = 1) -> Iterator[int]:
    """The iterator behind pl.range / parallel / pipeline / spmd (loop variables are ints)."""
    if not 1 <= len(args) <= 3:
        raise TypeError(f"pl.{kind}() takes 1 to 3 positional arguments, got {len(args)}")
    ints = [operator.index(a) for a in args]
    if len(ints) == 1:
        ints = [0, ints[0], 1]
    elif len(ints) == 2:
        ints.append(1)
    site = caller_site()
    name = source_name(site, "loop") or f"{kind}@{fmt_site(site)}"
    return _iterate(current(), kind, range(*ints), name, stage, site)


def _iterate(rt: Run, kind: str, values: range, name: str, stage: int,
             site: tuple[str, int]) -> Iterator[int]:
    frame = LoopFrame(kind, name, stage, site)
    parallel = kind in ("parallel", "spmd")
    vals: Sequence[int] = values
    if parallel and rt.permute_parallel:
        vals = list(values)
        rt.rng.shuffle(vals)
    rt.loops.append(frame)
    if parallel:
        rt.par.append(frame)
    try:
        for v in vals:
            frame.value = v
            yield v
        rt.loops.pop()
        if parallel:
            rt.par.pop()
            _race_check(rt, frame)
        frame = None
    finally:
        if frame is not None:  # left early (break / exception)
            if rt.loops and rt.loops[-1] is frame:
                rt.loops.pop()
            if parallel and rt.par and rt.par[-1] is frame:
                rt.par.pop()


def _race_check(rt: Run, frame: LoopFrame) -> None:
    """Writes of one iteration overlapping writes or reads of another -> 'race' findings."""
    if not rt.checks:
        return
    outer = rt.indices()
    for bid, recs in frame.log.items():
        if len(recs) < 2:
            continue
        w = np.fromiter((r[0] for r in recs), bool, len(recs))
        if not w.any():
            continue
        lo = np.array([r[1] for r in recs], dtype=np.int64)
        hi = np.array([r[2] for r in recs], dtype=np.int64)
        it = np.array([r[3] for r in recs], dtype=np.int64)
        widx = np.nonzero(w)[0]
        n = len(recs)
        step = max(1, 4_000_000 // (n * lo.shape[1] + 1))
        hits = 0
        first = None
        for s in range(0, len(widx), step):
            wi = widx[s:s + step]
            ov = np.all((lo[wi, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[wi, None, :]),
                        axis=2)
            ov &= it[wi, None] != it[None, :]
            if ov.any():
                a, b = np.nonzero(ov)
                hits += len(a)
                if first is None:
                    first = (int(wi[a[0]]), int(b[0]))
        if first is None:
            continue
        i, j = first
        base = rt.bases.get(bid)
        name = base.name if base is not None else "?"
        ilo = np.maximum(lo[i], lo[j]).tolist()
        ihi = np.minimum(hi[i], hi[j]).tolist()
        other = "writes" if w[j] else "reads"

        def in_scope(rec: tuple) -> str:
            return f" in scope {rec[4]!r}" if rec[4] is not None else ""

        rt.report(
            "race", "fail",
            f"race on tensor {name!r} in pl.{frame.kind} loop {frame.name!r} "
            f"({fmt_site(frame.site)}): iteration {frame.name}={int(it[i])} writes "
            f"{fmt_box(name, recs[i][1], recs[i][2])}{in_scope(recs[i])} and iteration "
            f"{frame.name}={int(it[j])} {other} {fmt_box(name, recs[j][1], recs[j][2])}"
            f"{in_scope(recs[j])}; overlap {fmt_box(name, ilo, ihi)} ({hits} conflicting "
            "access pairs)",
            tensor=name, indices=outer, once=("race", frame.site, bid),
            scope=recs[i][4] if rt.scope is None else None)
