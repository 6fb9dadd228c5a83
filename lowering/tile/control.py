"""Control flow, placement, task ids and annotations-adjacent values of the ``pl`` language,
for a sequential, eager emulator.

What the emulator does with each construct (pypto's meaning in brackets):

- loops — ``pl.range`` / ``pl.parallel`` / ``pl.pipeline(stage=F)`` / ``pl.unroll``: Python
  loops over ints; ``init_values=(...)`` carries values: the loop yields ``(i, (carried...))``
  and the iteration's last ``pl.yield_(...)`` gives the next ones [SSA iter_args];
  ``pl.parallel`` iterations are race-checked [independent iterations];
- ``pl.spmd(n)`` — ``for i in pl.spmd(n)`` and ``with pl.spmd(n) [as tid]`` run the body for
  blocks 0..n-1 in order (race-checked like ``pl.parallel``); each block is an in-core scope
  named by ``name_hint`` (budget); ``pl.tile.get_block_idx()`` / ``get_block_num()`` read the
  innermost block [one kernel launched on n blocks];
- ``pl.split_aiv(2, mode=...)`` — lanes 0 and 1 run the body (race-checked),
  ``get_subblock_idx()`` is the lane; ``NONE``: the full body on each lane, ``UP_DOWN`` /
  ``LEFT_RIGHT``: ``pl.aiv_shard`` gives each lane its half of the cube value [both AIV
  lanes run it];
- dependency and scheduling hints — ``deps=``, task ids, ``pl.system.task_dummy``,
  ``allow_early_resolve``, ``no_dep_args``, ``pl.no_dep``, ``sync_start``, ``pl.scope`` /
  ``pl.manual_scope``, ``pl.cluster``, ``pl.prefetch.*``, ``cross_core_slot``: they order or
  speed up work on the device; the emulator runs in program order, so they change nothing
  here — their arguments are checked (types, where they may appear), nothing more. An
  ordering the device would need but the kernel does not declare (a missing ``deps=`` in a
  manual scope) is not detected;
- ``pl.system.syncall`` — a barrier of the enclosing ``pl.spmd``: blocks run phase by phase
  (see ``core.run_phased``).

Constructs whose effect on values cannot be modelled exactly raise ``NotImplementedError``
naming the construct and the kernel's line (``pl.aic_gather``, ``predicate=``,
soft ``syncall``, ``pl.while_``, ``pl.aic_gather``, ...).
"""

from __future__ import annotations

import builtins
import enum
import operator
from collections.abc import Iterator
from typing import Any

import numpy as np

from lowering.tile import core, ops
from lowering.tile.core import DslError, DynVar, Tensor, caller_site, fmt_site
from lowering.tile.dtypes import DType, Level, as_dtype
from lowering.tile.lanes import LaneEscape


def _here() -> str:
    return fmt_site(caller_site())


def _unmodelled(what: str, why: str) -> NotImplementedError:
    return NotImplementedError(f"{what} (at {_here()}) is not emulated: {why}")


# -- enums and hint objects ----------------------------------------------------------------------


class SplitMode(enum.IntEnum):
    """``pl.SplitMode``: how the two AIV lanes share vector work."""

    NONE = 0
    UP_DOWN = 1
    LEFT_RIGHT = 2


class AtomicType(enum.IntEnum):
    """``pl.AtomicType``: the combine of a GM store (``pl.assemble(..., atomic=...)``)."""

    None_ = 0
    Add = 1


class ScopeMode(enum.IntEnum):
    """``pl.ScopeMode``: dependency tracking of a runtime scope."""

    AUTO = 0
    MANUAL = 1


class Role(enum.IntEnum):
    """``pl.Role`` of a ``pl.at`` hierarchy scope (recorded, no effect here)."""

    Orchestrator = 0
    Worker = 1
    SubWorker = 2


class Optimization:
    """An ``optimizations=[...]`` entry."""


class Split(Optimization):
    """``pl.split(mode)``: cross-core split of the scope's vector work between the two AIV
    lanes. Values are the same (each lane computes its half); the budget counts whole tiles
    (an upper bound per lane)."""

    def __init__(self, mode: SplitMode, slot_num: int | None = None) -> None:
        if not isinstance(mode, SplitMode):
            raise TypeError(f"pl.split(mode): mode must be a pl.SplitMode, got {mode!r}")
        if slot_num is not None:
            _slot_num(slot_num, "pl.split")
        self.mode = mode
        self.slot_num = slot_num

    def __repr__(self) -> str:
        return f"pl.split({self.mode.name})"


class CrossCoreSlot(Optimization):
    """``pl.cross_core_slot(slot_num=N)``: ring depth of the cube<->vector pipe (no effect on
    values; the budget does not count pipe slots)."""

    def __init__(self, slot_num: int) -> None:
        self.slot_num = _slot_num(slot_num, "pl.cross_core_slot")

    def __repr__(self) -> str:
        return f"pl.cross_core_slot(slot_num={self.slot_num})"


def _slot_num(n: Any, api: str) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{api} slot_num must be a positive integer, got {n!r}")
    return n


def split(mode: SplitMode, *, slot_num: int | None = None) -> Split:
    """``optimizations=[pl.split(mode)]`` on a scope: how the cube and the vector cores share
    its work (recorded for ``pl.split_aiv``; values are unaffected)."""
    return Split(mode, slot_num)


def cross_core_slot(*, slot_num: int) -> CrossCoreSlot:
    """``optimizations=[pl.cross_core_slot(slot_num=N)]``: see :class:`CrossCoreSlot`."""
    return CrossCoreSlot(slot_num)


def _optimizations(opts: Any, what: str) -> list[Optimization]:
    if opts is None:
        return []
    if not isinstance(opts, list | tuple):
        raise TypeError(f"{what}(optimizations=...) must be a list, got {opts!r}")
    for o in opts:
        if not isinstance(o, Optimization):
            raise TypeError(f"{what}(optimizations=[...]): {o!r} is not pl.split(...) or "
                            "pl.cross_core_slot(...)")
    return list(opts)


# -- task ids and arrays ---------------------------------------------------------------------------


class TaskId:
    """A ``pl.Scalar[pl.TASK_ID]``: the producer id of a dispatched task (``with pl.at(...) as
    tid``, ``with pl.spmd(...) as tid``, ``pl.system.task_dummy``, ``pl.submit``). Used only
    as a dependency edge; ``TaskId.INVALID`` is ``pl.system.task_invalid()``."""

    __slots__ = ("serial", "what", "deps", "log", "site")
    INVALID: TaskId

    def __init__(self, serial: int, what: str, deps: tuple = (), site: tuple = ("?", 0)
                 ) -> None:
        self.serial = serial
        self.what = what
        self.deps = deps  # the task ids it waits for (deps=)
        self.log: dict | None = None  # its GM accesses, when started in a manual scope
        self.site = site

    def __repr__(self) -> str:
        return "TaskId(invalid)" if self.serial < 0 else f"TaskId#{self.serial}({self.what})"

    def __bool__(self) -> bool:
        raise TypeError(f"{self!r} is a task id, not a condition")


TaskId.INVALID = TaskId(-1, "invalid")


def new_task(what: str, deps: Any = None) -> TaskId:
    """A new task id named ``what`` that waits for ``deps`` (checked as ``deps=``)."""
    rt = core.current()
    if rt.lane_frame is not None and rt.manual:  # one task per iteration, ordered by deps=
        raise LaneEscape("a task of a pl.manual_scope")
    rt.next_task += 1
    return TaskId(rt.next_task, what, tuple(_deps(deps, what)), caller_site())


_UNSET = object()


class Array:
    """``pl.array.create(n, dtype)``: a small 1-D array of scalars (a C-stack local), for int
    / BOOL / TASK_ID elements. ``a[i]`` reads, ``a[i] = v`` writes in place (pypto's
    functional ``update_element`` lowers to the same in-place store). Ints wrap to the dtype.
    Made in orchestration code it starts zeroed (TASK_ID: invalid ids); made in an in-core
    scope it starts undefined, and reading an element never written raises."""

    __slots__ = ("extent", "dtype", "values")

    def __init__(self, extent: int, dtype: DType, fill: Any) -> None:
        self.extent = extent
        self.dtype = dtype
        self.values = [fill] * extent

    def _index(self, i: Any) -> int:
        k = operator.index(i)
        if not 0 <= k < self.extent:
            raise core.OutOfBounds(f"pl.array index {k} out of bounds for an array of "
                                   f"{self.extent} ({_here()})")
        return k

    def __getitem__(self, i: Any) -> Any:
        v = self.values[self._index(i)]
        if v is _UNSET:
            raise DslError(f"pl.array element {i} read before any write ({_here()}); an "
                           "in-core array starts undefined")
        return v

    def __setitem__(self, i: Any, v: Any) -> None:
        self.values[self._index(i)] = _array_value(self.dtype, v)

    def __len__(self) -> int:
        return self.extent

    def __repr__(self) -> str:
        return f"pl.Array[{self.extent}, {self.dtype.name}]"


def _array_value(dtype: DType, v: Any) -> Any:
    if dtype.name == "TASK_ID":
        if v is None:
            return TaskId.INVALID
        if not isinstance(v, TaskId):
            raise TypeError(f"a TASK_ID array holds task ids, got {v!r}")
        return v
    if isinstance(v, TaskId):
        raise TypeError(f"a {dtype.name} array cannot hold the task id {v!r}")
    if dtype.name == "BOOL":
        return bool(v)
    bits = 8 * dtype.itemsize
    x = operator.index(v) & ((1 << bits) - 1)
    if dtype.kind == "i" and x >> (bits - 1):
        x -= 1 << bits
    return x


class _ArrayOps:
    """``pl.array``: create / get_element / update_element."""

    @staticmethod
    def create(extent: int, dtype: DType) -> Array:
        """A scalar array of ``extent`` integers (or BOOL, TASK_ID): zeros / invalid task ids
        outside a scope; inside one, unset until written (a read before a write raises)."""
        if not isinstance(extent, int) or isinstance(extent, bool) or extent <= 0:
            raise DslError(f"pl.array.create extent must be a positive int constant, got "
                           f"{extent!r} ({_here()})")
        if not isinstance(dtype, DType) or not (dtype.is_int or dtype.name in ("BOOL",
                                                                               "TASK_ID")):
            raise DslError(f"pl.array.create dtype must be an integer type, BOOL or TASK_ID, "
                           f"got {dtype!r} ({_here()})")
        if core.current().scope is not None:
            fill: Any = _UNSET
        else:
            fill = TaskId.INVALID if dtype.name == "TASK_ID" else _array_value(dtype, 0)
        return Array(extent, dtype, fill)

    @staticmethod
    def get_element(array: Array, index: Any) -> Any:
        """``array[index]``, bounds-checked."""
        return array[index]

    @staticmethod
    def update_element(array: Array, index: Any, value: Any) -> Array:
        """Functional: a new array with element ``index`` replaced."""
        out = Array(array.extent, array.dtype, None)
        out.values = list(array.values)
        out[index] = value
        return out


array = _ArrayOps()


def _deps(deps: Any, what: str) -> list[TaskId]:
    """Check a ``deps=[...]`` list: task ids, TASK_ID arrays, None (skipped)."""
    if deps is None:
        return []
    if not isinstance(deps, list | tuple):
        raise TypeError(f"{what}(deps=...) must be a list, got {deps!r} ({_here()})")
    out = []
    for d in deps:
        if d is None:
            continue
        if isinstance(d, Array) and d.dtype.name == "TASK_ID":
            out.extend(v for v in d.values if isinstance(v, TaskId))
        elif isinstance(d, TaskId):
            out.append(d)
        else:
            raise TypeError(f"{what}(deps=[...]): {d!r} is not a task id ({_here()})")
    return out


# -- scopes --------------------------------------------------------------------------------------


def at(level: Any = Level.CORE_GROUP, role: Any = None, *, optimizations: Any = None,
       deps: Any = None, no_dep_args: Any = None, dumps: Any = None,
       allow_early_resolve: bool = False, name_hint: str = "",
       windowize: bool = False) -> core.AtScope:
    """``with pl.at(level=pl.Level.CORE_GROUP, name_hint="x") [as tid]:`` an in-core scope
    (budget and messages use ``name_hint``); ``as tid`` binds the scope's task id.

    ``deps`` (task ids), ``no_dep_args`` (tensors the scope's siblings touch disjointly),
    ``dumps``, ``allow_early_resolve``, ``windowize``, ``optimizations=[pl.split(...),
    pl.cross_core_slot(...)]`` and ``role`` steer compilation and scheduling, not values: the
    emulator checks their types and runs the body once, in program order."""
    site = caller_site()
    if name_hint and not name_hint.isidentifier():
        raise DslError(f"pl.at(name_hint={name_hint!r}) must be a valid identifier "
                       f"({fmt_site(site)})")
    _optimizations(optimizations, "pl.at")
    for t in list(no_dep_args or []) + list(dumps or []):
        if not isinstance(t, Tensor):
            raise TypeError(f"pl.at(no_dep_args= / dumps=): {t!r} is not a tensor "
                            f"({fmt_site(site)})")
    return core.AtScope(level, name_hint, site, new_task(name_hint or "pl.at", deps))


class _Context:
    """A structural context manager: pushes ``tag`` on ``Run.ctx`` for its body."""

    def __init__(self, tag: str, value: Any = None) -> None:
        self.tag = tag
        self.value = value

    def __enter__(self) -> Any:
        core.current().ctx.append(self.tag)
        return self.value

    def __exit__(self, *exc: Any) -> None:
        ctx = core.current().ctx
        if ctx and ctx[-1] == self.tag:
            ctx.pop()


def cluster(*, name_hint: str = "") -> _Context:
    """``with pl.cluster():`` co-schedules the AIC and AIV kernels inside on one cluster."""
    return _Context("cluster")


def scope(mode: ScopeMode = ScopeMode.AUTO) -> _Context:
    """``with pl.scope(mode=...)``: a runtime scope (dependency tracking and memory
    reclamation boundary on the device). Checked: not inside an in-core scope; AUTO only in a
    function decorated with ``auto_scope=False`` and not inside a MANUAL scope."""
    rt = core.current()
    if not isinstance(mode, ScopeMode):
        raise TypeError(f"pl.scope(mode=...) takes a pl.ScopeMode, got {mode!r}")
    _runtime_scope_check(rt, "pl.scope")
    if mode == ScopeMode.AUTO:
        if "manual" in rt.ctx:
            raise DslError(f"pl.scope() (AUTO) inside a pl.manual_scope ({_here()}): the "
                           "runtime forbids it")
        fn = rt.calls[-1] if rt.calls else None
        if fn is not None and getattr(fn, "auto_scope", False):
            raise DslError(f"pl.scope() (AUTO) in {fn.__name__} ({_here()}) needs "
                           f"@pl.jit...(auto_scope=False): with auto_scope the compiler places "
                           "AUTO scopes itself")
    return _ManualScope(caller_site()) if mode == ScopeMode.MANUAL else _Context("auto")


def manual_scope() -> _Context:
    """``with pl.manual_scope():`` = ``pl.scope(mode=pl.ScopeMode.MANUAL)``: dependencies only
    from ``deps=`` on the device. Checked: not in an in-core scope, not nested in another."""
    rt = core.current()
    _runtime_scope_check(rt, "pl.manual_scope")
    if "manual" in rt.ctx:
        raise DslError(f"pl.manual_scope() nested in another ({_here()}): the runtime "
                       "forbids it")
    return _ManualScope(caller_site())


class _ManualScope(_Context):
    """A MANUAL runtime scope: the device orders its tasks only by ``deps=`` edges. On exit,
    two of its in-core tasks that touch one GM element (one writing, not both atomic adds)
    with no chain of ``deps=`` from the earlier to the later are reported as a race: the
    device may run them in either order, or together."""

    def __init__(self, site: tuple[str, int]) -> None:
        super().__init__("manual")
        self.site = site

    def __enter__(self) -> Any:
        core.current().manual.append([])
        return super().__enter__()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        super().__exit__(exc_type, *exc)
        rt = core.current()
        tasks = rt.manual.pop() if rt.manual else []
        if exc_type is None and rt.checks:
            _check_manual(rt, tasks, self.site)


def _ancestors(t: TaskId, memo: dict[int, set[int]]) -> set[int]:
    got = memo.get(t.serial)
    if got is None:
        got = memo[t.serial] = set()
        for d in t.deps:
            got.add(d.serial)
            got |= _ancestors(d, memo)
    return got


def _accesses(t: TaskId) -> dict[int, tuple]:
    """bid -> (kinds, lo, hi) arrays of a task's logged GM accesses, plus the bounding boxes
    of all of them and of those that write (None: no write)."""
    per: dict[int, list] = {}
    for bid, kind, lo, hi in t.log or ():
        per.setdefault(bid, []).append((kind, lo, hi))
    out = {}
    for b, v in per.items():
        k = np.array([r[0] for r in v], np.int8)
        lo, hi = np.array([r[1] for r in v], np.int64), np.array([r[2] for r in v], np.int64)
        w = k != core.READ
        wbox = (lo[w].min(axis=0), hi[w].max(axis=0)) if w.any() else None
        out[b] = (k, lo, hi, (lo.min(axis=0), hi.max(axis=0)), wbox)
    return out


def _meets(a: tuple | None, b: tuple | None) -> bool:
    return a is not None and b is not None and bool(np.all((a[0] < b[1]) & (b[0] < a[1])))


def _conflict(a: tuple, b: tuple) -> tuple[int, int] | None:
    ka, la, ha, abox, awrite = a
    kb, lb, hb, bbox, bwrite = b
    if not (_meets(awrite, bbox) or _meets(abox, bwrite)):  # no write meets the other task
        return None
    ov = np.all((la[:, None, :] < hb[None, :, :]) & (lb[None, :, :] < ha[:, None, :]), axis=2)
    ov &= (ka[:, None] != core.READ) | (kb[None, :] != core.READ)
    ov &= (ka[:, None] != core.ATOMIC) | (kb[None, :] != core.ATOMIC)
    if not ov.any():
        return None
    i, j = np.argwhere(ov)[0]
    return int(i), int(j)


def _check_manual(rt: core.Run, tasks: list[TaskId], site: tuple[str, int]) -> None:
    memo: dict[int, set[int]] = {}
    acc = [_accesses(t) for t in tasks]
    for j in builtins.range(1, len(tasks)):
        before = _ancestors(tasks[j], memo)
        for i in builtins.range(j):
            if tasks[i].serial in before:
                continue
            for bid in acc[i].keys() & acc[j].keys():
                hit = _conflict(acc[i][bid], acc[j][bid])
                if hit is None:
                    continue
                base = rt.bases.get(bid)
                name = base.name if base is not None else "?"
                (ka, la, ha, *_), (kb, lb, hb, *_) = acc[i][bid], acc[j][bid]
                p, q = hit
                rt.report(
                    "race", "fail",
                    f"in pl.manual_scope ({fmt_site(site)}) task {tasks[i].what!r} "
                    f"({fmt_site(tasks[i].site)}) {core.VERBS[int(ka[p])]} "
                    f"{core.fmt_box(name, la[p].tolist(), ha[p].tolist())} and the later task "
                    f"{tasks[j].what!r} ({fmt_site(tasks[j].site)}) {core.VERBS[int(kb[q])]} "
                    f"{core.fmt_box(name, lb[q].tolist(), hb[q].tolist())}, with no deps= path "
                    "from the first to the second: the device may run them in any order",
                    tensor=name, indices=(), scope=None, once=("manual", tasks[i].serial,
                                                              tasks[j].serial))
                break


def _runtime_scope_check(rt: core.Run, what: str) -> None:
    if rt.scope is not None:
        raise DslError(f"{what}() inside the in-core scope {rt.scope.name!r} ({_here()}): a "
                       "runtime scope belongs to orchestration code")


def no_dep(tensor: Any) -> Any:
    """``pl.no_dep(t)`` at a kernel-call argument: no dependency tracking for it (returns
    ``t``)."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"pl.no_dep takes a tensor, got {tensor!r} ({_here()})")
    return tensor


# -- loops ---------------------------------------------------------------------------------------


def _carry(init_values: Any, what: str) -> tuple | None:
    if init_values is None:
        return None
    if not isinstance(init_values, tuple | list):
        raise TypeError(f"pl.{what}(init_values=...) must be a tuple, got {init_values!r}")
    return tuple(init_values) or None


def range(*args: int, init_values: tuple | None = None) -> Iterator[Any]:  # noqa: A001
    """Sequential ``pl.range([start,] stop[, step])``; with ``init_values`` it yields
    ``(i, carried)`` (see ``pl.yield_``)."""
    return core.loop("range", args, carry=_carry(init_values, "range"))


def parallel(*args: int, init_values: tuple | None = None, **removed: Any) -> Iterator[Any]:
    """``pl.parallel``: iterations asserted independent; the emulator runs them in order (or
    shuffled with permute_parallel) and reports conflicting accesses as races."""
    if removed:
        raise TypeError(f"pl.parallel() got {sorted(removed)} ({_here()}): pypto removed "
                        "chunk= with its loop-chunking feature")
    return core.loop("parallel", args, carry=_carry(init_values, "parallel"))


def pipeline(*args: int, stage: int, init_values: tuple | None = None) -> Iterator[Any]:
    """Sequential loop whose body is replicated ``stage`` times for ping-pong buffering:
    tiles loaded from GM in it count ``stage``× in the budget."""
    if not isinstance(stage, int) or isinstance(stage, bool) or stage < 1:
        raise ValueError(f"pl.pipeline() stage must be a positive integer, got {stage!r}")
    return core.loop("pipeline", args, stage, carry=_carry(init_values, "pipeline"))


def unroll(*args: int) -> Iterator[int]:
    """``pl.unroll``: a sequential loop the compiler unrolls (no carried values)."""
    return core.loop("unroll", args)


def yield_(*values: Any) -> Any:
    """``pl.yield_(v...)``: returns the value(s) (one value, or a tuple). Inside a loop with
    ``init_values`` the iteration's last ``pl.yield_`` also gives the next iteration's
    carried values (an ``if``/``else`` yield before it is overridden by it)."""
    for fr in reversed(core.current().loops):
        if fr.carry is not None:
            fr.yielded = values
            break
        if fr.kind in ("spmd", "split_aiv"):
            break
    return values[0] if len(values) == 1 else tuple(values)


def while_(*, init_values: tuple | None = None) -> Any:
    """Not emulated (raises naming it): a ``pl.cond`` would have to stop the body mid-way."""
    raise _unmodelled("pl.while_", "the loop condition pl.cond(...) would have to stop the body "
                      "mid-way; rewrite as pl.range")


def cond(condition: Any) -> None:
    """Not emulated (raises naming it): meaningful only in ``pl.while_``."""
    raise _unmodelled("pl.cond", "only meaningful in pl.while_")


class SpmdContext:
    """``pl.spmd(core_num, ...)``: see the module docstring. ``for i in pl.spmd(n)`` iterates
    the blocks; ``with pl.spmd(n) [as tid]`` works in decorated functions, where
    ``lowering.tile.rewrite`` turns it into a loop over ``__pl_blocks__``."""

    def __init__(self, core_num: Any, sync_start: bool, name_hint: str, optimizations: Any,
                 deps: Any, allow_early_resolve: bool, predicate: Any,
                 site: tuple[str, int]) -> None:
        if isinstance(core_num, bool):
            raise ValueError(f"pl.spmd core_num must be a positive integer, got {core_num!r}")
        self.n = operator.index(core_num)
        if self.n < 0:
            raise ValueError(f"pl.spmd core_num must be a positive integer, got {self.n}")
        if predicate is not None:
            raise _unmodelled("pl.spmd(predicate=...)", "the dispatch-time comparison is not "
                              "evaluated by the eager emulator")
        if name_hint and not name_hint.isidentifier():
            raise DslError(f"pl.spmd(name_hint={name_hint!r}) must be a valid identifier "
                           f"({fmt_site(site)})")
        self.hint = name_hint
        self.deps = deps
        _optimizations(optimizations, "pl.spmd")
        if allow_early_resolve and "cluster" in core.current().ctx:
            raise DslError(f"pl.spmd(allow_early_resolve=True) inside pl.cluster() "
                           f"({fmt_site(site)}): pypto rejects it (the hint would be lost)")
        self.site = site
        self.task = new_task(name_hint or "pl.spmd", deps)

    def __iter__(self) -> Iterator[int]:
        if self.deps is not None:
            raise DslError(f"pl.spmd(deps=...) ({fmt_site(self.site)}) is accepted only in the "
                           "`with pl.spmd(...) as tid:` form")
        return core.loop("spmd", (self.n,), hint=self.hint, task=self.task)

    def __pl_blocks__(self, has_as: bool) -> Iterator[Any]:
        if self.deps is not None and not has_as:
            raise DslError(f"pl.spmd(deps=...) ({fmt_site(self.site)}) is accepted only in the "
                           "`with pl.spmd(...) as tid:` form")
        return core.loop("spmd", (self.n,), hint=self.hint, emit=self.task, name="block",
                         task=self.task)

    def __pl_phased__(self, body: Any, with_index: bool, env: dict) -> TaskId:
        core.run_phased(self.n, self.hint, self.site, lambda b: body(b, env), True,
                        "block" if not with_index else _loop_name(self.site, "block"), self.task)
        return self.task

    def __enter__(self) -> Any:
        from lowering.tile.rewrite import refused_reason

        why = refused_reason(self.site)
        raise NotImplementedError(
            f"`with pl.spmd(...)` at {fmt_site(self.site)}: its body must run once per block, "
            + (f"and the emulator cannot rewrite it ({why})" if why else
               "which the emulator arranges only inside a function decorated with @pl.jit / "
               "@pl.jit.inline / @pl.jit.incore / @pl.function (with its source available)"))

    def __exit__(self, *exc: Any) -> None:
        return None


def _loop_name(site: tuple[str, int], default: str) -> str:
    return core.source_name(site, "loop") or default


def spmd(core_num: Any, *, sync_start: bool = False, name_hint: str = "",
         optimizations: Any = None, deps: Any = None, allow_early_resolve: bool = False,
         predicate: Any = None) -> SpmdContext:
    """``pl.spmd(n, name_hint=...)``: n blocks of one in-core kernel (see the module
    docstring). ``sync_start`` / ``allow_early_resolve`` / ``deps`` / ``optimizations`` are
    scheduling and compilation hints (checked, no effect on values)."""
    return SpmdContext(core_num, sync_start, name_hint, optimizations, deps,
                       allow_early_resolve, predicate, caller_site())


class _SplitAiv:
    def __init__(self, mode: SplitMode, site: tuple[str, int]) -> None:
        self.mode = mode
        self.site = site

    def __iter__(self) -> Iterator[int]:
        return core.loop("split_aiv", (2,), tag=self.mode)


def split_aiv(n: int, *, mode: SplitMode) -> _SplitAiv:
    """``for aiv_id in pl.split_aiv(2, mode=...)``: lane 0, then lane 1 run the body
    (race-checked as independent). ``NONE``: both lanes run the full body. ``UP_DOWN`` /
    ``LEFT_RIGHT`` (data-parallel): ``pl.aiv_shard(x)`` hands each lane its half of the cube
    value ``x`` — rows (UP_DOWN) or columns (LEFT_RIGHT) ``[lane·n/2, (lane+1)·n/2)`` — and the
    vector work on it is the lane's half; ``pl.aic_gather`` (rejoining the halves) raises."""
    if isinstance(n, bool) or not isinstance(n, int) or n != 2:
        raise ValueError(f"pl.split_aiv(n): n must be the integer 2, got {n!r}")
    if not isinstance(mode, SplitMode):
        raise ValueError(f"pl.split_aiv(mode=...): mode must be a pl.SplitMode, got {mode!r}")
    return _SplitAiv(mode, caller_site())


def aiv_shard(x: Any) -> Any:
    """``pl.aiv_shard(x)``: the cube value ``x`` crosses to the vector lane — whole in a
    ``mode=NONE`` region, this lane's half along the split axis in ``UP_DOWN`` (rows) /
    ``LEFT_RIGHT`` (columns)."""
    fr = core.innermost("split_aiv")
    if fr is None:
        raise DslError(f"pl.aiv_shard outside a `for aiv_id in pl.split_aiv(...)` loop "
                       f"({_here()})")
    if fr.tag in (None, SplitMode.NONE):
        return x
    axis = x.ndim - 2 if fr.tag == SplitMode.UP_DOWN else x.ndim - 1
    n = x.shape[axis]
    if x.ndim < 2 or n % 2:
        raise DslError(f"pl.aiv_shard({x!r}) in a {fr.tag.name} region ({_here()}): the split "
                       f"axis must be even, got {n}")
    shape, offset = list(x.shape), [0] * x.ndim
    shape[axis] = n // 2
    offset[axis] = fr.value * (n // 2)
    return ops.apply("slice", x, shape, offset)


def aic_gather(x: Any) -> Any:
    """Not emulated (raises naming it): the cube receives one vector lane's value, and which
    one is unspecified."""
    raise _unmodelled("pl.aic_gather", "the cube receives one lane's value, unspecified which")


def get_block_idx() -> int:
    """Index of the running block of the innermost ``pl.spmd`` (0 outside one: a task
    dispatched without ``pl.spmd`` is one block)."""
    fr = core.innermost("spmd")
    return fr.value if fr is not None else 0


def get_block_num() -> int:
    """Number of blocks of the innermost ``pl.spmd`` (1 outside one)."""
    fr = core.innermost("spmd")
    return fr.count if fr is not None else 1


def get_subblock_idx() -> int:
    """The AIV lane (0 / 1) inside ``pl.split_aiv``."""
    fr = core.innermost("split_aiv")
    if fr is None:
        raise _unmodelled("pl.tile.get_subblock_idx() outside pl.split_aiv",
                          "which AIV lane runs un-split vector code")
    return fr.value


def submit(kernel: Any, *args: Any, deps: Any = None, allow_early_resolve: bool = False,
           dumps: Any = None, predicate: Any = None) -> tuple[Any, TaskId]:
    """``out, tid = pl.submit(self.kernel, *args, deps=[...])``: run the kernel now; returns
    its result and a new task id."""
    if predicate is not None:
        raise _unmodelled("pl.submit(predicate=...)", "the dispatch-time comparison")
    tid = new_task(getattr(kernel, "__name__", "task"), deps)
    rt = core.current()
    started = rt.begin_task(tid)
    try:
        return kernel(*args), tid
    finally:
        if started:
            rt.task = None


def spmd_submit(kernel: Any, *args: Any, core_num: int, sync_start: bool = False,
                deps: Any = None, allow_early_resolve: bool = False, dumps: Any = None,
                predicate: Any = None) -> tuple[Any, TaskId]:
    """``out, tid = pl.spmd_submit(self.kernel, *args, core_num=N)``: the kernel on N blocks
    (``get_block_idx()`` inside), in block order; returns the last block's result and a new
    task id."""
    if predicate is not None:
        raise _unmodelled("pl.spmd_submit(predicate=...)", "the dispatch-time comparison")
    name = getattr(kernel, "__name__", "spmd_submit")
    tid = new_task(name, deps)
    out = None
    for _ in core.loop("spmd", (core_num,), hint=name, name="block", task=tid):
        out = kernel(*args)
    return out, tid


# -- pl.system -----------------------------------------------------------------------------------


class _System:
    """``pl.system``: task_dummy, task_invalid, syncall (others raise)."""

    @staticmethod
    def task_dummy(*, deps: Any) -> TaskId:
        """A task id ready once every one of ``deps`` is (no work; program order here)."""
        return new_task("task_dummy", deps)

    @staticmethod
    def task_invalid() -> TaskId:
        """The task id that depends on nothing (``TaskId.INVALID``)."""
        return TaskId.INVALID

    @staticmethod
    def syncall(*, core_type: str = "mix", mode: str = "hard", gm_workspace: Any = None,
                used_cores: Any = None) -> None:
        """Barrier of all blocks of the enclosing ``pl.spmd`` (see ``core.run_phased``)."""
        if core_type not in ("mix", "aiv_only", "aic_only"):
            raise ValueError(f"syncall core_type must be 'mix', 'aiv_only' or 'aic_only', got "
                             f"{core_type!r}")
        if mode == "soft":
            raise _unmodelled("pl.system.syncall(mode='soft')", "the GM-polling counter "
                              "protocol on gm_workspace")
        if mode != "hard":
            raise ValueError(f"syncall mode must be 'hard' or 'soft', got {mode!r}")
        if gm_workspace is not None or used_cores is not None:
            raise ValueError("syncall(mode='hard') takes no gm_workspace/used_cores")
        fr = core.innermost("spmd")
        if fr is None or not fr.phased:
            raise _unmodelled("pl.system.syncall" + (" outside pl.spmd" if fr is None else ""),
                              "blocks are suspended only at a syncall statement of a pl.spmd "
                              "body in a decorated function")
        fr.barriers += 1

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"pl.system.{name} is not emulated")


system = _System()


# -- pl.prefetch ---------------------------------------------------------------------------------


class _Handle:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<pl.prefetch {self.kind}>"


class _Prefetch:
    """``pl.prefetch``: GM -> L2 prefetch hints; values are unaffected (no-ops here)."""

    @staticmethod
    def make_context() -> _Handle:
        """A prefetch context (a handle; nothing is prefetched on the CPU)."""
        return _Handle("context")

    @staticmethod
    def async_prefetch(src: Any, ctx: Any) -> _Handle:
        """Prefetch a flat GM region (all dims 1 but the last) into L2: checked, no effect on
        values; returns an event handle."""
        if not isinstance(src, Tensor):
            raise TypeError(f"pl.prefetch.async_prefetch needs a GM tensor, got {src!r}")
        if any(d != 1 for d in src.shape[:-1]):
            raise DslError(f"pl.prefetch.async_prefetch({src!r}) ({_here()}): the region must "
                           "be flat (all dims 1 but the last)")
        if not (isinstance(ctx, _Handle) and ctx.kind == "context"):
            raise TypeError(f"pl.prefetch.async_prefetch: {ctx!r} is not a make_context()")
        return _Handle("event")

    @staticmethod
    def session(ctx: Any) -> _Handle:
        """A prefetch session handle (no effect)."""
        return _Handle("session")

    @staticmethod
    def wait(event: Any, session_handle: Any) -> bool:
        """Wait for a prefetch: always already done here (True)."""
        return True


prefetch = _Prefetch()


# -- constants -----------------------------------------------------------------------------------


def const(value: Any, dtype: Any) -> Any:
    """``pl.const(v, dtype)``: a typed constant — ints checked against the dtype's range,
    floats rounded to it (FP32 / FP16 / BF16: round to nearest even)."""
    dt = as_dtype(dtype)
    if dt.name == "BOOL":
        return bool(value)
    if dt.is_int:
        v = operator.index(value)
        bits = 8 * dt.itemsize
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dt.kind == "i" else (0,
                                                                                     (1 << bits) - 1)
        if not lo <= v <= hi:
            raise DslError(f"pl.const({v}, {dt.name}): out of range ({_here()})")
        return v
    import ml_dtypes

    native = {"FP32": np.float32, "FP16": np.float16, "BF16": ml_dtypes.bfloat16}.get(dt.name)
    if native is None:
        raise TypeError(f"pl.const: unsupported dtype {dt.name}")
    return float(native(value))


class StaticAssertFailed(core.KernelDefect, AssertionError):
    """``pl.static_assert`` was false (pypto rejects the kernel at parse time)."""


def static_assert(condition: Any, msg: str = "") -> None:
    """pypto checks ``condition`` at parse time; here when the statement runs: false raises
    :class:`StaticAssertFailed` (a kernel defect) with ``msg`` and the line."""
    if not condition:
        raise StaticAssertFailed(f"pl.static_assert failed at {_here()}: {msg}")


def static_print(*args: Any) -> None:
    """Prints at parse time in pypto; nothing at run time."""


def dynamic(name: str) -> DynVar:
    """``pl.dynamic("M")``: a dynamic dimension (see ``core.DynVar``)."""
    return DynVar(name)


def auto_chunk_removed() -> NotImplementedError:
    return NotImplementedError("pl.auto_chunk was removed from pypto (the chunk / auto_chunk "
                               "loop-chunking feature); pypto HEAD has no such name")


__all__ = [
    "Array", "AtomicType", "CrossCoreSlot", "Optimization", "Role", "ScopeMode", "Split",
    "SplitMode", "SpmdContext", "StaticAssertFailed", "TaskId", "aic_gather", "aiv_shard",
    "array", "at", "cluster", "cond", "const", "cross_core_slot", "dynamic", "get_block_idx",
    "get_block_num", "get_subblock_idx", "manual_scope", "new_task", "no_dep", "parallel",
    "pipeline", "prefetch", "range", "scope", "split", "split_aiv", "spmd", "spmd_submit",
    "static_assert", "static_print", "submit", "system", "unroll", "while_", "yield_",
]
