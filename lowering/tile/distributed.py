"""Multi-device programs (``pypto.language.distributed``, ``pld``) on the tile emulator.

A HOST program (``@pl.jit.host``) allocates window buffers (``pld.alloc_window_buffer``),
views them (``pld.window``) and dispatches one chip program per rank
(``chip(x[r], ..., device=r)``). :func:`run_host` runs the host body, then every rank's chip
programs on the tile emulator: each rank in its own thread with its own ``core.Run`` (the
current run is per thread), under a cooperative scheduler — one rank runs at a time, until it
blocks in ``pld.system.wait`` or finishes; the next rank (round robin) whose wait is now
satisfied then runs. ``schedule_seed``: switch ranks at random at every cross-rank op as well
(other legal interleavings).

Model (pypto's meaning):

- host tensors: ``x[r]`` (int / unit-step slice indices) is a view of the host tensor; a chip
  program gets its rank's own copy of each view it is passed (H2D at first use on that rank;
  after all ranks finish, the elements each rank wrote are copied back, D2H). Two ranks
  mapping one host element that either writes is a race (each sees only its own copy);
- window buffers: per rank one zeroed GM region of the requested bytes, visible to every
  rank of the world (the comm domain) through the remote ops; ``pld.window(buf, shape,
  dtype)`` views it (one view per buffer: aliasing views are not modelled);
- ``pld.tile.remote_load`` / ``remote_store`` / ``pld.tensor.put`` / ``get`` read or write a
  peer's window like a local load / store (``atomic=pld.AtomicType.Add``: each element one add
  in the target dtype, as ``pl.assemble(..., atomic=Add)``); put / get stream through a VEC
  staging tile ``[chunk_rows, chunk_cols]`` (``pipeline=True``: two), counted in the budget;
- ``pld.system.notify(target, peer, offsets, value, op=AtomicAdd | Set)`` adds ``value`` to /
  stores it in the peer's signal cell (int32, wrapping); ``pld.system.wait(signal, offsets,
  expected, cmp=Ge | Eq)`` blocks until this rank's own cell satisfies the comparison.

Checks (on top of every rank's own run checks, coverage of its outputs included):

- deadlock: every live rank waits on a cell no running rank can change -> :class:`Deadlock`
  naming the ranks, cells, values and expected values (a missing notify, a wrong peer, ...);
- cross-rank race: happens-before by vector clocks (a notify releases everything its rank
  did before it; the wait it satisfies acquires it); two accesses of one window element by
  different ranks, one a write, neither ordered before the other, is a ``race`` FAIL (two
  atomic adds never race; a notify is an atomic add, ``Set`` a write, the wait's own read
  none);
- order-dependent wait: a wait whose cell, counting every notify that is not ordered after
  the wait, still misses ``expected`` was satisfied only because of the order the ranks ran
  in: in another order it may never be (``race`` FAIL);
- vacuous wait: a wait already satisfied by notifies its rank has synchronised with orders
  nothing new (stale credits, a missing reset): ``race`` warning.

Not modelled (they raise ``NotImplementedError`` naming the construct and the line): the
``pld.tensor`` collectives (``allreduce``, ``barrier``, ...), ``pld.system.defer_wait``,
comm domains smaller than the world, aliasing windows of one buffer, host code that computes
tiles. Within a rank, chip programs run in dispatch order and a rank is one sequential
thread: a race between ``pl.spmd`` blocks of one rank is the rank run's own race check.

A rank runs its ``pl.parallel`` loops in lanes (:mod:`lowering.tile.lanes`), except a loop
whose body makes a cross-rank op (each notify is an epoch of its own, in program order).
Where a loop leaves its lanes at run time, the whole program runs again (:func:`run_host`);
so that it can, the ranks share the host's input arrays read-only, and a store into one
starts the program again with a copy of its views on each rank.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import itertools
import math
import operator
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lowering.backends import NumpyBackend, get_backend
from lowering.tile import core, lanes, ops, ops_data, runner
from lowering.tile.budget import BudgetReport
from lowering.tile.core import Tensor, Tile, fmt_box, fmt_site
from lowering.tile.dtypes import DType, as_dtype
from lowering.tile.findings import Finding, KernelDefect, OutOfBounds
from lowering.tile.lanes import LaneEscape
from lowering.tile.runner import KernelRun, _final_checks

READ, WRITE, ATOMIC = 0, 1, 2
_VERB = {READ: "reads", WRITE: "writes", ATOMIC: "atomically adds into"}


class NotifyOp(enum.IntEnum):
    """``pld.NotifyOp``: AtomicAdd adds ``value`` to the peer's cell, Set stores it."""

    AtomicAdd = 0
    Set = 1


class WaitCmp(enum.IntEnum):
    """``pld.WaitCmp``: wait until the cell == (Eq) or >= (Ge) ``expected``."""

    Eq = 0
    Ge = 1


class AtomicType(enum.IntEnum):
    """``pld.AtomicType``: None_ overwrites the peer's region, Add adds into it."""

    None_ = 0
    Add = 1


class ReduceOp(enum.IntEnum):
    """``pld.ReduceOp`` of the collectives (which are not emulated)."""

    Sum = 0
    Max = 1
    Min = 2
    Prod = 3


class DistributedDefect(KernelDefect, ValueError):
    """A ``pld`` op used against pypto's contract (a plain tensor where a window is needed, a
    peer out of range, mismatched shapes or dtypes, ...): the kernel's own defect."""


class Deadlock(KernelDefect):
    """Every rank still running waits on a signal cell no running rank can change."""


class _InputStore(BaseException):
    """A rank stores into an input it shares with the host and the other ranks: the run
    starts again with a private copy of its inputs on every rank (``Rank.view``)."""


class _Abort(BaseException):
    """Unwinds a rank's thread when the run is abandoned (never caught by kernel code)."""


def _here() -> str:
    return fmt_site(core.caller_site())


def _unmodelled(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what} (at {_here()}) is not emulated")


def _int(x: Any, what: str) -> int:
    """A scalar argument as an int (Python / numpy ints, ``pl.cast`` scalars, 1-element tiles)."""
    if isinstance(x, Tile):
        if math.prod(x.shape) != 1:
            raise DistributedDefect(f"{what}: expected a scalar, got the tile {x!r} ({_here()})")
        return int(x.numpy().reshape(-1)[0])
    try:
        return operator.index(x)
    except TypeError:
        raise DistributedDefect(f"{what}: expected an integer scalar, got {x!r} ({_here()})"
                                ) from None


def _enum(cls: type[enum.IntEnum], x: Any, what: str) -> enum.IntEnum:
    try:
        return cls(int(getattr(x, "value", x)))
    except (TypeError, ValueError):
        raise DistributedDefect(f"{what}: not a pld.{cls.__name__}: {x!r} ({_here()})"
                                ) from None


# -- host side -------------------------------------------------------------------------------------


class HostTensor(Tensor):
    """A host tensor of a ``@pl.jit.host`` program, or a view of one (``x[r]``, ``x[0:2]``):
    ``lo``/``hi`` its box in the root tensor, ``dims`` the root dims it keeps (an int index
    drops one). Only indexing and ``bind_dynamic`` are host operations here."""

    __slots__ = ("lo", "hi", "dims")

    def __init__(self, base: core.BaseTensor, lo: tuple = (), hi: tuple = (),
                 dims: tuple | None = None) -> None:
        super().__init__(base)
        self.lo = lo or (0,) * len(base.shape)
        self.hi = hi or tuple(base.shape)
        self.dims = tuple(range(len(base.shape))) if dims is None else dims
        self.shape = tuple(self.hi[d] - self.lo[d] for d in self.dims)
        self.data = base.data[core.box_key(self.lo, self.hi)].reshape(self.shape)
        if self.lo != (0,) * len(base.shape) or self.hi != tuple(base.shape):
            idx = [str(a) if d not in self.dims else f"{a}:{b}"
                   for d, (a, b) in enumerate(zip(self.lo, self.hi, strict=True))]
            self.name = f"{base.name}[{', '.join(idx)}]"

    def __getitem__(self, key: Any) -> HostTensor:
        klo, khi, _ = core.parse_key(self.shape, key, self.__repr__)
        nkey = key if isinstance(key, tuple) else (key,)
        lo, hi, dims = list(self.lo), list(self.hi), []
        for i, d in enumerate(self.dims):
            lo[d], hi[d] = self.lo[d] + klo[i], self.lo[d] + khi[i]
            if i >= len(nkey) or isinstance(nkey[i], slice):
                dims.append(d)
        return HostTensor(self.base, tuple(lo), tuple(hi), tuple(dims))

    def __setitem__(self, key: Any, value: Any) -> None:
        raise _unmodelled(f"a store into the host tensor {self!r} in a host program")

    def written(self, mask: np.ndarray) -> np.ndarray:
        """A view-shaped mask in the shape of the view's box in the root (int dims as 1)."""
        return mask.reshape(tuple(b - a for a, b in zip(self.lo, self.hi, strict=True)))


@dataclass
class Window:
    """``pld.window(buf, shape, dtype=...)`` in a host program: a typed view of a buffer."""

    buffer: WindowBuffer
    shape: tuple[int, ...]
    dtype: DType


class WindowBase(core.BaseTensor):
    """One rank's window of one buffer (GM, zeroed at allocation)."""

    __slots__ = ("buffer", "rank")


_ALLOC = re.compile(r"^\s*(\w+)\s*(?::[^=]*)?=\s*pld\.")


class WindowBuffer:
    """``pld.alloc_window_buffer``: ``nbytes`` per rank; its one typed view (``shape``,
    ``dtype``) is fixed by the first ``pld.window``; ``bases[r]``: rank r's region."""

    def __init__(self, name: str, nbytes: int, site: tuple[str, int]) -> None:
        self.name = name
        self.nbytes = nbytes
        self.site = site
        self.shape: tuple[int, ...] | None = None
        self.dtype: DType | None = None
        self.bases: list[WindowBase] = []
        self.ranks: set[int] = set()

    def view(self, shape: tuple[int, ...], dtype: DType) -> None:
        if self.shape is None:
            need = math.prod(shape) * dtype.itemsize
            if need > self.nbytes:
                raise OutOfBounds(f"pld.window({self.name}, {list(shape)}, dtype={dtype!r}) "
                                  f"needs {need} B but the buffer has {self.nbytes} B per rank "
                                  f"({_here()})")
            self.shape, self.dtype = shape, dtype
        elif (shape, dtype) != (self.shape, self.dtype):
            raise _unmodelled(f"a second view pld.window({self.name}, {list(shape)}, "
                              f"dtype={dtype!r}) of a buffer already viewed as "
                              f"{list(self.shape)} {self.dtype!r} (aliasing windows)")

    def materialize(self, world: int, bk: Any) -> None:
        if self.bases:
            return
        for r in range(world):
            b = WindowBase(f"{self.name}@rank{r}", bk.full(self.shape, self.dtype.name, 0),
                           self.dtype, "inout")
            b.buffer, b.rank = self, r
            self.bases.append(b)


@dataclass
class Task:
    """One chip program dispatched to a rank: ``fn(*args, **kwargs)``."""

    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    site: tuple[str, int]


class HostRun(core.Run):
    """The host program's run: it dispatches, it computes no tiles."""

    def new_tile(self, *_a: Any, **_k: Any) -> Tile:
        raise _unmodelled("a tile op in a host program (@pl.jit.host) outside a device= "
                          "dispatch: host code that computes")


# -- the run -----------------------------------------------------------------------------------------


class Program:
    """One host program run: its world, buffers, per-rank task lists, ranks and sync log."""

    def __init__(self, world: int, name: str, bk: Any, seed: int | None) -> None:
        if world < 1:
            raise ValueError(f"a distributed run needs at least one rank, got {world}")
        self.world = world
        self.name = name
        self.bk = bk
        self.buffers: list[WindowBuffer] = []
        self.tasks: list[list[Task]] = [[] for _ in range(world)]
        self.ranks: list[Rank] = []
        self.sync = SyncLog(world)
        self.sched = Scheduler(self, seed)
        self.findings: list[Finding] = []
        self.private_inputs = False  # every rank copies the inputs it is given (Rank.view)

    def lane_sites(self) -> set[tuple[str, int]]:
        """The pl.parallel loops that ran in lanes so far, on any rank."""
        return {s for r in self.ranks for s in r.run.lane_sites}

    def report(self, check: str, severity: str, message: str, tensor: str | None = None
               ) -> None:
        self.findings.append(Finding(check=check, severity=severity, kernel=self.name,
                                     scope=None, loop_indices=(), tensor=tensor,
                                     message=f"kernel {self.name!r}: {message}"))


_state = threading.local()  # .program (the host program being run), .rank (in a rank thread)


def _program(what: str) -> Program:
    prog = getattr(_state, "program", None)
    if prog is None:
        raise _unmodelled(f"{what} outside a multi-device run (a @pl.jit.host program run with "
                          "a distributed_config)")
    return prog


def _rank(what: str) -> Rank:
    rank = getattr(_state, "rank", None)
    if rank is None:
        raise DistributedDefect(f"{what} ({_here()}) runs on a device: call it in a chip program "
                                "dispatched with device=r, not in the host program")
    return rank


def _cross(what: str) -> Rank:
    """The rank running a cross-rank op: these run in program order, so not in lanes (a
    notify per iteration, each a new epoch; a wait between two iterations' work)."""
    rank = _rank(what)
    if rank.run.lane_frame is not None:
        raise LaneEscape(f"{what} ({_here()}) in the body: a cross-rank op")
    return rank


class RankRun(core.Run):
    """A rank's run: every access of a window (its own or a peer's) also goes to the
    cross-rank race log."""

    rank: Rank

    def access(self, view: Tensor, lo: tuple, hi: tuple, write: bool, *args: Any,
               **kwargs: Any) -> None:
        if write and view.base.kind == "input" and not getattr(
                getattr(view.base.data, "flags", None), "writeable", True):
            raise _InputStore  # before the store: the host's array stays as it was given
        super().access(view, lo, hi, write, *args, **kwargs)
        if self.checks and isinstance(view.base, WindowBase):
            atomic = kwargs.get("atomic", args[0] if args else False)
            kind = ATOMIC if atomic else WRITE if write else READ
            self.rank.program.sync.access(self.rank, view, lo, hi, kind)


class Rank:
    """One device: its run, its tasks, its vector clock (``vc[i]``: the epoch of rank i it has
    synchronised with; its own epoch grows by one at each notify)."""

    def __init__(self, program: Program, index: int, run: RankRun) -> None:
        self.program = program
        self.index = index
        self.run = run
        run.rank = self
        self.vc = [0] * program.world
        self.vc[index] = 1
        self.vct = tuple(self.vc)
        self.state = "ready"  # 'ready' | 'waiting' | 'done'
        self.waiting: WaitRecord | None = None
        self.pred: Callable[[], bool] | None = None
        self.error: BaseException | None = None
        self.views: dict[tuple, tuple[HostTensor, Tensor]] = {}

    def release(self) -> tuple:
        """This rank's clock as a notify carries it; later work is a new epoch."""
        sent = self.vct
        self.vc[self.index] += 1
        self.vct = tuple(self.vc)
        return sent

    def acquire(self, clocks: Sequence[tuple]) -> None:
        for c in clocks:
            self.vc = [max(a, b) for a, b in zip(self.vc, c, strict=True)]
        self.vct = tuple(self.vc)

    def arg(self, a: Any) -> Any:
        """A dispatched argument as this rank sees it."""
        if isinstance(a, HostTensor):
            return self.view(a)
        if isinstance(a, Window):
            return Tensor(a.buffer.bases[self.index])
        if isinstance(a, Tensor | Tile):
            raise _unmodelled(f"passing {a!r} (not a host tensor parameter) to a chip program")
        if isinstance(a, list | tuple) and any(isinstance(x, Tensor | Window) for x in a):
            raise _unmodelled("a list of tensors as a chip program argument")
        return a

    def view(self, hv: HostTensor) -> Tensor:
        """This rank's copy of the host view ``hv`` (made at its first use on this rank)."""
        key = (id(hv.base), hv.lo, hv.hi, hv.dims)
        got = self.views.get(key)
        if got is not None:
            return got[1]
        for other, _t in self.views.values():
            if other.base is hv.base and _overlap(other.lo, other.hi, hv.lo, hv.hi) \
                    and hv.base.kind != "input":
                raise _unmodelled(f"two overlapping views {other.name} and {hv.name} of a host "
                                  f"output on rank {self.index}")
        rt = self.run
        arr = np.ascontiguousarray(hv.data)
        if hv.base.kind == "input" and isinstance(rt.bk, NumpyBackend) and (
                not self.program.private_inputs):
            data = arr  # the host's read-only array, no copy per rank (see RankRun.access)
        else:
            data = rt.bk.from_numpy(arr, hv.dtype.name)
        base = core.BaseTensor(hv.name, data, hv.dtype, hv.base.kind)
        t = rt.add_base(base)
        self.views[key] = (hv, t)
        return t


def _overlap(alo: Sequence[int], ahi: Sequence[int], blo: Sequence[int], bhi: Sequence[int]
             ) -> bool:
    return all(a0 < b1 and b0 < a1 for a0, a1, b0, b1 in zip(alo, ahi, blo, bhi, strict=True))


# -- scheduling ----------------------------------------------------------------------------------------


class Scheduler:
    """One rank runs at a time (``turn``); the main thread picks the next (see module doc)."""

    def __init__(self, program: Program, seed: int | None) -> None:
        self.program = program
        self.cv = threading.Condition()
        self.turn: int | None = None
        self.aborted = False
        self.rng = random.Random(seed) if seed is not None else None

    # in a rank's thread ----------------------------------------------------------------------
    def _await_turn(self, rank: Rank) -> None:
        with self.cv:
            while self.turn != rank.index and not self.aborted:
                self.cv.wait()
        if self.aborted:
            raise _Abort

    def _hand_back(self) -> None:
        with self.cv:
            self.turn = None
            self.cv.notify_all()

    def block(self, rank: Rank, pred: Callable[[], bool], rec: WaitRecord) -> None:
        """Return once ``pred()`` holds (other ranks run meanwhile)."""
        if self.rng is not None:
            self.maybe_switch(rank)
        while not pred():
            rank.state, rank.pred, rank.waiting = "waiting", pred, rec
            self._hand_back()
            self._await_turn(rank)
        rank.state, rank.pred, rank.waiting = "ready", None, None

    def maybe_switch(self, rank: Rank) -> None:
        """At a cross-rank op under a random schedule: maybe let another rank run first."""
        if self.rng is not None and self.rng.random() < 0.5:
            self._hand_back()
            self._await_turn(rank)

    def thread_main(self, rank: Rank, body: Callable[[Rank], None]) -> None:
        _state.rank = rank
        prev = core.activate(rank.run)
        try:
            self._await_turn(rank)
            body(rank)
        except _Abort:
            pass
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            rank.error = e
        finally:
            rank.state = "done"
            core.activate(prev)
            self._hand_back()

    # in the main thread ----------------------------------------------------------------------
    def run(self, body: Callable[[Rank], None]) -> None:
        ranks = self.program.ranks
        threads = [threading.Thread(target=self.thread_main, args=(r, body), daemon=True,
                                    name=f"{self.program.name} rank {r.index}") for r in ranks]
        for t in threads:
            t.start()
        last = len(ranks) - 1
        try:
            while True:
                live = [r for r in ranks if r.state != "done"]
                if not live:
                    break
                nxt = self._pick(live, last)
                if nxt is None:
                    raise self._deadlock(live)
                with self.cv:
                    self.turn = nxt.index
                    self.cv.notify_all()
                    while self.turn is not None:
                        self.cv.wait()
                if nxt.error is not None:
                    raise nxt.error
                last = nxt.index
        finally:
            with self.cv:
                self.aborted = True
                self.cv.notify_all()
            for t in threads:
                t.join()

    def _pick(self, live: list[Rank], last: int) -> Rank | None:
        ok = [r for r in live if r.state == "ready" or (r.pred is not None and r.pred())]
        if not ok:
            return None
        if self.rng is not None:
            return self.rng.choice(ok)
        n = self.program.world
        return min(ok, key=lambda r: (r.index - last - 1) % n)

    def _deadlock(self, live: list[Rank]) -> Deadlock:
        lines = [f"rank {r.index} waits at {fmt_site(r.waiting.site)} for "
                 f"{r.waiting.describe()}" for r in live]
        done = [r.index for r in self.program.ranks if r.state == "done"]
        tail = f"; ranks {done} have finished" if done else ""
        first = live[0].waiting.site
        return Deadlock(f"deadlock in {self.program.name!r}: every rank still running waits on a "
                        f"signal no running rank will change — {'; '.join(lines)}{tail} "
                        "(a missing pld.system.notify, or a wrong peer / offsets / expected) "
                        f"(used at {first[0]}:{first[1]})")


# -- synchronisation log and checks ---------------------------------------------------------------


@dataclass
class Contribution:
    """One notify into a cell: its value, op, sender and the sender's clock."""

    value: int
    op: NotifyOp
    sender: int
    vct: tuple
    site: tuple[str, int]


@dataclass
class WaitRecord:
    """One ``pld.system.wait`` (``epoch``: the waiter's own epoch at the wait)."""

    rank: int
    base: WindowBase
    cell: tuple[int, ...]
    expected: int
    cmp: WaitCmp
    site: tuple[str, int]
    bk: Any
    epoch: int = 0

    def value(self) -> int:
        return int(self.bk.item(self.base.data, self.cell))

    def describe(self) -> str:
        op = ">=" if self.cmp is WaitCmp.Ge else "=="
        return (f"{fmt_box(self.base.buffer.name, self.cell, [c + 1 for c in self.cell])} of "
                f"rank {self.base.rank} {op} {self.expected} (it holds {self.value()})")


def _holds(cmp: WaitCmp, value: int, expected: int) -> bool:
    return value >= expected if cmp is WaitCmp.Ge else value == expected


def _needed(contribs: list[Contribution], cmp: WaitCmp, expected: int) -> int:
    """How many of a cell's notifies (in arrival order) a satisfied wait synchronises with:
    the shortest prefix after which the cell satisfied the wait in every state up to now (any
    of those states could be the one the wait saw). A notify that merely arrived earlier than
    needed orders nothing: no other order of the ranks guarantees it."""
    if any(c.op is NotifyOp.Set for c in contribs):
        return len(contribs)
    states = np.concatenate([[0], np.cumsum([c.value for c in contribs], dtype=np.int64)])
    ok = states >= expected if cmp is WaitCmp.Ge else states == expected
    bad = np.nonzero(~ok)[0]
    return 0 if bad.size == 0 else int(bad[-1]) + 1


class SyncLog:
    """Window accesses by rank and clock, notifies per cell, satisfied waits."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.log: dict[int, list[tuple]] = {}
        self.seen: set = set()
        self.bases: dict[int, WindowBase] = {}
        self.cells: dict[tuple[int, tuple], list[Contribution]] = {}
        self.waits: list[WaitRecord] = []

    def access(self, rank: Rank, view: Tensor, lo: tuple, hi: tuple, kind: int) -> None:
        base = view.base
        for blo, bhi in view.to_base(lo, hi):
            key = (id(base), rank.index, kind, blo, bhi, rank.vct)
            if key in self.seen:
                continue
            self.seen.add(key)
            self.bases[id(base)] = base
            self.log.setdefault(id(base), []).append(
                (rank.index, kind, blo, bhi, rank.vct, core.caller_site()))

    def races(self, prog: Program) -> None:
        for bid, recs in self.log.items():
            hit = _first_race(recs)
            if hit is None:
                continue
            (i, j), n = hit
            base = self.bases[bid]
            a, b = recs[i], recs[j]
            ilo = [max(x, y) for x, y in zip(a[2], b[2], strict=True)]
            ihi = [min(x, y) for x, y in zip(a[3], b[3], strict=True)]
            name = base.buffer.name
            prog.report("race", "fail",
                        f"race on window {name!r} of rank {base.rank}: rank {a[0]} {_VERB[a[1]]} "
                        f"{fmt_box(name, a[2], a[3])} ({fmt_site(a[5])}) and rank {b[0]} "
                        f"{_VERB[b[1]]} {fmt_box(name, b[2], b[3])} ({fmt_site(b[5])}) with no "
                        "pld.system.notify -> pld.system.wait ordering one before the other; "
                        f"overlap {fmt_box(name, ilo, ihi)} ({n} conflicting access pairs)",
                        tensor=name)

    def check_waits(self, prog: Program) -> None:
        """Waits satisfied only because of the order the ranks ran in (module docstring)."""
        for w in self.waits:
            contribs = self.cells.get((id(w.base), w.cell), [])
            if any(c.op is NotifyOp.Set for c in contribs):
                continue
            before = [c for c in contribs if c.vct[w.rank] < w.epoch]
            total = sum(c.value for c in before)
            if _holds(w.cmp, total, w.expected):
                continue
            who = ", ".join(f"rank {c.sender} {c.value:+d} ({fmt_site(c.site)})" for c in before)
            op = ">=" if w.cmp is WaitCmp.Ge else "=="
            prog.report("race", "fail",
                        f"rank {w.rank}'s pld.system.wait at {fmt_site(w.site)} "
                        f"({fmt_box(w.base.buffer.name, w.cell, [c + 1 for c in w.cell])} {op} "
                        f"{w.expected}) was satisfied only because of the order the ranks ran "
                        f"in: the notifies not ordered after it add up to {total} "
                        f"({who or 'none'}), so in another order it may never be satisfied",
                        tensor=w.base.buffer.name)


def _first_race(recs: list[tuple]) -> tuple[tuple[int, int], int] | None:
    """The first conflicting pair of access records (and how many there are), or None."""
    n = len(recs)
    if n < 2:
        return None
    rank = np.array([r[0] for r in recs])
    kind = np.array([r[1] for r in recs])
    lo = np.array([r[2] for r in recs], dtype=np.int64).reshape(n, -1)
    hi = np.array([r[3] for r in recs], dtype=np.int64).reshape(n, -1)
    vc = np.array([r[4] for r in recs], dtype=np.int64)
    own = vc[np.arange(n), rank]
    writes = np.nonzero(kind != READ)[0]
    step = max(1, 2_000_000 // (n * (lo.shape[1] + 1)))
    first, hits = None, 0
    for s in range(0, len(writes), step):
        w = writes[s:s + step]
        ov = np.all((lo[w, None, :] < hi[None, :, :]) & (lo[None, :, :] < hi[w, None, :]), axis=2)
        ov &= rank[w, None] != rank[None, :]
        ov &= ~((kind[w, None] == ATOMIC) & (kind[None, :] == ATOMIC))
        ov &= own[w, None] > vc[:, rank[w]].T  # w not ordered before the other access
        ov &= own[None, :] > vc[w][:, rank]  # nor the other access before w
        ov &= (kind[None, :] == READ) | (w[:, None] < np.arange(n)[None, :])  # each pair once
        if ov.any():
            a, b = np.nonzero(ov)
            hits += len(a)
            if first is None:
                first = (int(w[a[0]]), int(b[0]))
    return None if first is None else (first, hits)


# -- op rules (``ops.apply("pld.<op>", ...)``) --------------------------------------------------------


def _window(t: Any, what: str) -> Tensor:
    if not isinstance(t, Tensor) or not isinstance(t.base, WindowBase):
        raise DistributedDefect(f"{what} needs a window-bound pld.DistributedTensor (a pld.window "
                                f"view), got {t!r} ({_here()})")
    return t


def _peer_view(rank: Rank, t: Tensor, peer: Any, what: str) -> Tensor:
    """Rank ``peer``'s window seen through the same (reshaped) view as ``t``."""
    p = _int(peer, f"{what} peer")
    if not 0 <= p < rank.program.world:
        raise DistributedDefect(f"{what}: peer {p} is not a rank of the world "
                                f"(0..{rank.program.world - 1}) ({_here()})")
    return t.rebase(t.base.buffer.bases[p])


def _box(t: Tensor, offsets: Any, shape: Sequence[int], what: str) -> tuple[tuple, tuple]:
    if any(isinstance(o, Tile) for o in (offsets if isinstance(offsets, list | tuple) else ())):
        # pypto reads ``t[i]`` of a 1-D tensor as a scalar; the emulator has a 0-d tile there
        raise _unmodelled(f"{what} with a tile among its offsets {list(offsets)} (an element "
                          "read as a tile, where pypto has a scalar)")
    lo = ops._ints(offsets)
    if len(lo) != t.ndim or len(shape) != t.ndim:
        raise DistributedDefect(f"{what}: offsets {list(lo)} / shape {list(shape)} need "
                                f"{t.ndim} entries for {t!r} ({_here()})")
    hi = tuple(a + s for a, s in zip(lo, shape, strict=True))
    lo, hi, _ = core.parse_key(t.shape, tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)),
                               lambda: f"{what} of {t!r}")
    return lo, hi


@ops.rule("pld.remote_load")
def _remote_load(rt: core.Run, target: Any, peer: Any, offsets: Any, shape: Any,
                 valid_shape: Any = None) -> Tile:
    """A tile of ``shape`` loaded from rank ``peer``'s window at ``offsets`` (exactly
    ``pl.slice`` on that rank's region; ``valid_shape``: only that box is read)."""
    what = "pld.tile.remote_load"
    rank = _cross(what)
    src = _peer_view(rank, _window(target, what), peer, what)
    _box(src, offsets, ops._ints(shape), what)
    rank.program.sched.maybe_switch(rank)
    return ops.RULES["slice"](rt, src, shape, offsets, valid_shape=valid_shape)


@ops.rule("pld.remote_store")
def _remote_store(rt: core.Run, src: Any, target: Any, peer: Any, offsets: Any, atomic: Any,
                  what: str) -> None:
    """Store tile ``src`` into rank ``peer``'s window at ``offsets`` (exactly ``pl.assemble``
    on that region: a 2-D tile lands on the inner two dims; ``atomic=Add`` adds into it). A
    GM tensor ``src`` (tensor form only) is loaded whole first, as pypto bridges it."""
    rank = _cross(what)
    dst = _peer_view(rank, _window(target, what), peer, what)
    add = _enum(AtomicType, atomic, f"{what} atomic") is AtomicType.Add
    if isinstance(src, Tensor) and what.startswith("pld.tensor"):
        src = ops._tile(rt, src, op=what)
    if not isinstance(src, Tile):
        raise DistributedDefect(f"{what}: src must be a tile, got {src!r} ({_here()})")
    if src.dtype != dst.dtype or dst.ndim < 2 or any(d != 1 for d in src.shape[:-2]):
        raise DistributedDefect(f"{what} of {src!r} into {dst!r}: the dtypes must match, the "
                                f"window have rank >= 2 and the tile be 2-D ({_here()})")
    ext = src.shape if add else ops_data.valid_box(src)  # a store moves the valid box only
    moved = (1,) * (dst.ndim - min(len(ext), 2)) + tuple(ext[-2:])
    _box(dst, offsets, moved, what)
    rank.program.sched.maybe_switch(rank)
    ops.RULES["assemble"](rt, dst, src, offsets, **({"atomic": 1} if add else {}))


def _transfer(rt: core.Run, dst: Tensor, src: Tensor, regions: tuple, add: bool, chunk: tuple,
              pipeline: bool, what: str) -> None:
    """GM -> GM copy of ``src[region]`` to ``dst[region]`` through a VEC staging tile."""
    (dlo, dhi), (slo, shi) = regions
    if dst.dtype != src.dtype:
        raise DistributedDefect(f"{what}: dtypes of {dst!r} and {src!r} differ ({_here()})")
    shape = tuple(b - a for a, b in zip(dlo, dhi, strict=True))
    rows, cols = math.prod(shape[:-1]), shape[-1]
    stage = (min(chunk[0] or rows, rows), min(chunk[1] or cols, cols))
    for _ in range(2 if pipeline else 1):
        rt.scratch(stage, dst.dtype)
    data = rt.bk.read(src.data, core.box_key(slo, shi))
    rt.access(src, slo, shi, write=False)
    box = core.box_key(dlo, dhi)
    if add:
        data = rt.bk.binary("add", rt.bk.read(dst.data, box), data, dst.dtype.name)
    rt.access(dst, dlo, dhi, write=True, **({"atomic": True} if add else {}))
    rt.bk.write(dst.data, box, data)


def _regions(dst: Tensor, src: Tensor, dst_offsets: Any, src_offsets: Any, shape: Any,
             what: str) -> tuple:
    given = [x is not None for x in (dst_offsets, src_offsets, shape)]
    if any(given) and not all(given):
        raise DistributedDefect(f"{what}: dst_offsets, src_offsets and shape go together "
                                f"({_here()})")
    if not any(given):
        if dst.shape != src.shape:
            raise DistributedDefect(f"{what}: a full-slice transfer needs equal shapes, got "
                                    f"{dst!r} and {src!r} ({_here()})")
        return ((0,) * dst.ndim, dst.shape), ((0,) * src.ndim, src.shape)
    shp = ops._ints(shape)
    return _box(dst, dst_offsets, shp, what), _box(src, src_offsets, shp, what)


def _chunks(chunk_rows: Any, chunk_cols: Any, pipeline: Any, what: str) -> tuple:
    for name, v in (("chunk_rows", chunk_rows), ("chunk_cols", chunk_cols)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DistributedDefect(f"{what} {name} must be a static int >= 0 (0 = full), got "
                                    f"{v!r} ({_here()})")
    if pipeline and not (chunk_rows > 0 and chunk_cols > 0):
        raise DistributedDefect(f"{what} pipeline=True needs chunk_rows > 0 and chunk_cols > 0 "
                                f"({_here()})")
    return (chunk_rows, chunk_cols), bool(pipeline)


@ops.rule("pld.put")
def _put(rt: core.Run, dst: Any, peer: Any, src: Any, dst_offsets: Any, src_offsets: Any,
         shape: Any, atomic: Any, chunk_rows: Any, chunk_cols: Any, pipeline: Any) -> None:
    """TPUT: local GM ``src`` (a window or a plain tensor) -> rank ``peer``'s window ``dst``
    (whole slices, or the given regions); ``atomic=Add`` adds into the destination."""
    what = "pld.tensor.put"
    rank = _cross(what)
    chunk, pipe = _chunks(chunk_rows, chunk_cols, pipeline, what)
    remote = _peer_view(rank, _window(dst, what), peer, what)
    if isinstance(src, Tile):
        raise _unmodelled(f"{what} from a tile (a sliced or computed value here): pass the "
                          "tensor with src_offsets")
    if not isinstance(src, Tensor):
        raise DistributedDefect(f"{what}: src must be a tensor, got {src!r} ({_here()})")
    add = _enum(AtomicType, atomic, f"{what} atomic") is AtomicType.Add
    regions = _regions(remote, src, dst_offsets, src_offsets, shape, what)
    rank.program.sched.maybe_switch(rank)
    _transfer(rt, remote, src, regions, add, chunk, pipe, what)


@ops.rule("pld.get")
def _get(rt: core.Run, dst: Any, peer: Any, src: Any, dst_offsets: Any, src_offsets: Any,
         shape: Any, chunk_rows: Any, chunk_cols: Any, pipeline: Any) -> None:
    """TGET: rank ``peer``'s window ``src`` -> local GM ``dst`` (a window or a plain tensor)."""
    what = "pld.tensor.get"
    rank = _cross(what)
    chunk, pipe = _chunks(chunk_rows, chunk_cols, pipeline, what)
    remote = _peer_view(rank, _window(src, what), peer, what)
    if not isinstance(dst, Tensor):
        raise DistributedDefect(f"{what}: dst must be a tensor, got {dst!r} ({_here()})")
    regions = _regions(dst, remote, dst_offsets, src_offsets, shape, what)
    rank.program.sched.maybe_switch(rank)
    _transfer(rt, dst, remote, regions, False, chunk, pipe, what)


def _cell(t: Tensor, offsets: Any, what: str) -> tuple[tuple, tuple, tuple[int, ...]]:
    """(lo, hi) of the one-element cell at ``offsets`` and its index in the window base."""
    lo, hi = _box(t, offsets, (1,) * t.ndim, what)
    if not t.dtype.is_int:
        raise DistributedDefect(f"{what}: the signal {t!r} must have an integer dtype ({_here()})")
    ((blo, _),) = t.to_base(lo, hi)
    return lo, hi, tuple(blo)


@ops.rule("pld.notify")
def _notify(rt: core.Run, target: Any, peer: Any, offsets: Any, value: Any, op: Any) -> None:
    """TNOTIFY: rank ``peer``'s cell ``target[offsets]`` += ``value`` (AtomicAdd, wrapping in
    the cell dtype) or := ``value`` (Set). Releases everything this rank did before it."""
    what = "pld.system.notify"
    rank = _cross(what)
    dst = _peer_view(rank, _window(target, what), peer, what)
    opv = _enum(NotifyOp, op, f"{what} op")
    v = _int(value, f"{what} value")
    lo, hi, cell = _cell(dst, offsets, what)
    rank.program.sched.maybe_switch(rank)
    key, dt = core.box_key(lo, hi), dst.dtype.name
    new = rt.bk.full((1,) * dst.ndim, dt, v)
    if opv is NotifyOp.AtomicAdd:
        new = rt.bk.binary("add", rt.bk.read(dst.data, key), new, dt)
    rt.bk.write(dst.data, key, new)
    rt.access(dst, lo, hi, write=True, **({"atomic": True} if opv is NotifyOp.AtomicAdd else {}))
    sync = rank.program.sync
    sync.cells.setdefault((id(dst.base), cell), []).append(
        Contribution(v, opv, rank.index, rank.release(), core.caller_site()))


@ops.rule("pld.wait")
def _wait(rt: core.Run, signal: Any, offsets: Any, expected: Any, cmp: Any) -> None:
    """TWAIT: block until this rank's cell ``signal[offsets]`` == / >= ``expected``; then
    everything the notifies into the cell released happens before what follows."""
    what = "pld.system.wait"
    rank = _cross(what)
    sig = _window(signal, what)
    cmpv = _enum(WaitCmp, cmp, f"{what} cmp")
    exp = _int(expected, f"{what} expected")
    _lo, _hi, cell = _cell(sig, offsets, what)
    rec = WaitRecord(rank.index, sig.base, cell, exp, cmpv, core.caller_site(), rt.bk,
                     rank.vc[rank.index])
    contribs = rank.program.sync.cells.setdefault((id(sig.base), cell), [])
    known = sum(c.value for c in contribs if c.op is NotifyOp.AtomicAdd
                and c.vct[c.sender] <= rank.vc[c.sender])
    vacuous = not any(c.op is NotifyOp.Set for c in contribs) and _holds(cmpv, known, exp)
    rank.program.sched.block(rank, lambda: _holds(cmpv, rec.value(), exp), rec)
    rank.acquire([c.vct for c in contribs[:_needed(contribs, cmpv, exp)]])
    rank.program.sync.waits.append(rec)
    if vacuous:
        rt.report("race", "warning",
                  f"pld.system.wait at {fmt_site(rec.site)} ({rec.describe()}) is satisfied by "
                  f"notifies this rank has already synchronised with (they add up to {known}): "
                  "it orders nothing new (stale credits, a missing reset?)",
                  tensor=sig.base.buffer.name, once=("vacuous", rec.site))


# -- the pld surface ------------------------------------------------------------------------------------


def world_size() -> int:
    """``pld.world_size()``: the number of ranks (host programs only)."""
    if getattr(_state, "rank", None) is not None:
        raise DistributedDefect(f"pld.world_size() ({_here()}) is host-only: pypto rejects it in "
                                "chip code (use pld.nranks(pld.get_comm_ctx(window)))")
    return _program("pld.world_size()").world


def alloc_window_buffer(size: Any, *, dtype: Any = None, name: str = "") -> WindowBuffer:
    """``pld.alloc_window_buffer(nbytes)`` / ``(shape, dtype=...)``: a zeroed per-rank window
    buffer (host programs only; named after the variable it is assigned to)."""
    prog = _program("pld.alloc_window_buffer")
    if getattr(_state, "rank", None) is not None:
        raise DistributedDefect(f"pld.alloc_window_buffer ({_here()}) is host-only")
    if isinstance(size, list | tuple):
        if dtype is None:
            raise DistributedDefect(f"pld.alloc_window_buffer(shape) needs dtype= ({_here()})")
        dims = [_int(d, "pld.alloc_window_buffer shape") for d in size]
        if not dims or min(dims) <= 0:
            raise DistributedDefect(f"pld.alloc_window_buffer shape {dims} must be non-empty "
                                    f"and positive ({_here()})")
        nbytes = math.prod(dims) * as_dtype(dtype).itemsize
    elif dtype is not None:
        raise DistributedDefect(f"pld.alloc_window_buffer: dtype= only goes with a shape "
                                f"({_here()})")
    else:
        nbytes = _int(size, "pld.alloc_window_buffer size")
    site = core.caller_site()
    if not name:
        import linecache

        m = _ALLOC.match(linecache.getline(site[0], site[1]))
        name = m.group(1) if m else f"window@{fmt_site(site)}"
    buf = WindowBuffer(name, nbytes, site)
    prog.buffers.append(buf)
    return buf


def window(buf: Any, shape: Sequence[Any], *, dtype: Any) -> Window:
    """``pld.window(buf, shape, dtype=...)``: the typed per-rank view of a window buffer."""
    _program("pld.window")
    if not isinstance(buf, WindowBuffer):
        raise DistributedDefect(f"pld.window expects a pld.alloc_window_buffer handle, got {buf!r} "
                                f"({_here()})")
    shp = tuple(_int(d, "pld.window shape") for d in shape)
    dt = as_dtype(dtype)
    buf.view(shp, dt)
    return Window(buf, shp, dt)


@dataclass(frozen=True)
class CommCtx:
    """``pld.get_comm_ctx(window)``: the rank and rank count of the window's comm domain."""

    rank: int
    nranks: int


def get_comm_ctx(t: Any) -> CommCtx:
    rk = _rank("pld.get_comm_ctx")
    _window(t, "pld.get_comm_ctx")
    return CommCtx(rk.index, rk.program.world)


def rank(ctx: CommCtx) -> int:
    """``pld.rank(ctx)``: this rank's index."""
    if not isinstance(ctx, CommCtx):
        raise DistributedDefect(f"pld.rank expects a pld.CommCtx, got {ctx!r} ({_here()})")
    return ctx.rank


def nranks(ctx: CommCtx) -> int:
    """``pld.nranks(ctx)``: the number of ranks of the comm domain."""
    if not isinstance(ctx, CommCtx):
        raise DistributedDefect(f"pld.nranks expects a pld.CommCtx, got {ctx!r} ({_here()})")
    return ctx.nranks


def notify(target: Any, peer: Any, offsets: Sequence[Any], value: Any, *, op: Any) -> None:
    """``pld.system.notify``: see the ``pld.notify`` rule."""
    ops.apply("pld.notify", target, peer, offsets, value, op)


def wait(signal: Any, offsets: Sequence[Any], expected: Any, *, cmp: Any) -> None:
    """``pld.system.wait``: see the ``pld.wait`` rule."""
    ops.apply("pld.wait", signal, offsets, expected, cmp)


def remote_load(target: Any, peer: Any, offsets: Sequence[Any], shape: Sequence[Any],
                valid_shape: Sequence[Any] | None = None) -> Tile:
    """``pld.tile.remote_load``: see the ``pld.remote_load`` rule."""
    return ops.apply("pld.remote_load", target, peer, offsets, shape, valid_shape)


def tile_remote_store(src_tile: Any, target: Any, peer: Any, offsets: Sequence[Any], *,
                      atomic: Any = AtomicType.None_) -> None:
    """``pld.tile.remote_store``: a tile into a peer's window (see ``pld.remote_store``)."""
    ops.apply("pld.remote_store", src_tile, target, peer, offsets, atomic,
              "pld.tile.remote_store")


def tensor_remote_store(src: Any, target: Any, peer: Any, offsets: Sequence[Any], *,
                        atomic: Any = AtomicType.None_) -> None:
    """``pld.tensor.remote_store``: a tensor-level value into a peer's window."""
    ops.apply("pld.remote_store", src, target, peer, offsets, atomic, "pld.tensor.remote_store")


def remote_store(src: Any, target: Any, peer: Any, offsets: Sequence[Any], *,
                 atomic: Any = AtomicType.None_) -> None:
    """``pld.remote_store``: the tile or tensor form by the kind of ``src``."""
    form = tile_remote_store if isinstance(src, Tile) else tensor_remote_store
    form(src, target, peer, offsets, atomic=atomic)


def put(dst: Any, peer: Any, src: Any, dst_offsets: Any = None, src_offsets: Any = None,
        shape: Any = None, *, atomic: Any = AtomicType.None_, chunk_rows: int = 0,
        chunk_cols: int = 0, pipeline: bool = False) -> None:
    """``pld.tensor.put``: see the ``pld.put`` rule."""
    ops.apply("pld.put", dst, peer, src, dst_offsets, src_offsets, shape, atomic, chunk_rows,
              chunk_cols, pipeline)


def get(dst: Any, peer: Any, src: Any, dst_offsets: Any = None, src_offsets: Any = None,
        shape: Any = None, *, chunk_rows: int = 0, chunk_cols: int = 0,
        pipeline: bool = False) -> None:
    """``pld.tensor.get``: see the ``pld.get`` rule."""
    ops.apply("pld.get", dst, peer, src, dst_offsets, src_offsets, shape, chunk_rows,
              chunk_cols, pipeline)


class Space:
    """``pld.system`` / ``pld.tensor`` / ``pld.tile``: the emulated ops; any other name raises
    ``NotImplementedError`` naming it and the kernel's line."""

    def __init__(self, name: str, **ops_: Any) -> None:
        self._name = name
        self.__dict__.update(ops_)

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        raise NotImplementedError(f"pld.{self._name}.{item} is not emulated (used at {_here()})")


lanes.CROSS_RANK.update((notify, wait, remote_load, tile_remote_store, tensor_remote_store,
                         remote_store, put, get))

system = Space("system", world_size=world_size, get_comm_ctx=get_comm_ctx, rank=rank,
               nranks=nranks, notify=notify, wait=wait)
tensor = Space("tensor", alloc_window_buffer=alloc_window_buffer, window=window, put=put,
               get=get, remote_store=tensor_remote_store)
tile = Space("tile", remote_load=remote_load, remote_store=tile_remote_store)


# -- dispatch and the host run ------------------------------------------------------------------------


def launch(fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """``chip(*args, device=r, **kwargs)`` in a host program: queue ``fn`` on rank r (ranks run
    after the host body, each its queue in order)."""
    kwargs = dict(kwargs)
    device = kwargs.pop("device")
    name = getattr(fn, "__name__", "?")
    prog = _program(f"{name}(..., device=...)")
    if getattr(_state, "rank", None) is not None:
        raise DistributedDefect(f"{name}(..., device=...) ({_here()}): a dispatch from chip code")
    d = _int(device, f"{name}(device=)")
    if not 0 <= d < prog.world:
        raise DistributedDefect(f"{name}(..., device={d}) ({_here()}): no such rank (world size "
                                f"{prog.world})")
    for a in itertools.chain(args, kwargs.values()):
        if isinstance(a, Window):
            a.buffer.ranks.add(d)
            a.buffer.materialize(prog.world, prog.bk)
    prog.tasks[d].append(Task(fn, tuple(args), kwargs, core.caller_site()))


def _call_at(site: tuple[str, int], fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """``fn(*args, **kwargs)`` from a frame at ``site``, the host program's dispatch line: the
    chip program's tracebacks (and a failed argument check's message) start where the host
    called it, as they would had the host called it directly."""
    code = compile("\n" * (site[1] - 1) + "_fn(*_args, **_kwargs)", site[0], "exec")
    exec(code, {"_fn": fn, "_args": args, "_kwargs": kwargs})  # noqa: S102 - our own call


def _rank_body(rank: Rank) -> None:
    rt = rank.run
    for buf in rank.program.buffers:
        for b in buf.bases:
            rt.bases[id(b)] = b
    try:
        for task in rank.program.tasks[rank.index]:
            _call_at(task.site, task.fn, tuple(rank.arg(a) for a in task.args),
                     {k: rank.arg(v) for k, v in task.kwargs.items()})
            if rt.lane_frame is not None:  # its loop was left mid-way (a break)
                raise LaneEscape("the loop was left before its end")
    except Exception as exc:
        e = runner.lane_escape(rt, exc)  # names its loop (run_host starts again)
        if e is None or e is exc:
            raise
        raise e from exc
    finish = getattr(rt, "finish", None)
    if finish is not None:
        finish()


def run_host(host_fn: Callable[..., Any], *, world: int, inputs: dict[str, np.ndarray],
             outputs: dict[str, tuple[tuple[int, ...], Any]],
             inouts: dict[str, tuple[np.ndarray, Any]] | None = None,
             kwargs: dict[str, Any] | None = None, platform: str = "a2a3",
             backend: Any = "numpy", name: str | None = None, seed: int = 0,
             permute_parallel: bool = False, zero_outputs: bool = True,
             budget_model: str = "shape", input_store: str = "fail",
             schedule_seed: int | None = None) -> KernelRun:
    """Run the host program ``host_fn(**host tensors, **kwargs)`` on ``world`` ranks (see the
    module docstring); arguments as :func:`lowering.tile.run_kernel`'s (in/outs: no owned-rows
    contract; ``budget_model`` / ``input_store`` apply to every rank's run). ``outputs`` are
    the host tensors after every rank's writes are copied back; ``findings``: every rank's
    (their messages name the rank) and the cross-rank checks'.

    Each rank runs its pl.parallel loops in lanes where it can (``lowering.tile.lanes``);
    whatever takes a loop out of lanes — a cross-rank op in its body among the rest — starts
    the whole program again without them, as does any error or cross-rank race of a run
    that used them. The host's input arrays are never written: the ranks share them
    read-only, and a store into one starts the program again with a copy per rank."""
    call = _HostCall(host_fn, world, inputs, outputs, inouts or {}, kwargs or {}, platform,
                     backend, name or getattr(host_fn, "__name__", "host"), seed,
                     permute_parallel, zero_outputs, budget_model, input_store, schedule_seed)
    deny = runner.lane_denials(host_fn)
    private = False
    while True:
        try:
            return _run_host(call, deny, private)
        except _InputStore:
            private = True
        except LaneEscape as e:
            runner.deny_lanes(deny, e)


class _HostCall(NamedTuple):
    """What :func:`run_host` was asked to run, the same for every attempt."""

    host_fn: Callable[..., Any]
    world: int
    inputs: dict[str, np.ndarray]
    outputs: dict
    inouts: dict
    kwargs: dict
    platform: str
    backend: Any
    name: str
    seed: int
    permute_parallel: bool
    zero_outputs: bool
    budget_model: str
    input_store: str
    schedule_seed: int | None


def _run_host(call: _HostCall, deny: dict[tuple[str, int], str], private: bool) -> KernelRun:
    """One run of a host program (see :func:`run_host`): its loops in ``deny`` one iteration
    at a time, each rank with a copy of the inputs where ``private``."""
    (host_fn, world, inputs, outputs, inouts, kwargs, platform, backend, kname, seed,
     permute_parallel, zero_outputs, budget_model, input_store, schedule_seed) = call
    host = HostRun(backend, platform, f"{kname} host", seed, checks=False)
    prog = Program(world, kname, host.bk, schedule_seed)
    prog.private_inputs = private
    roots: dict[str, HostTensor] = {}
    for n, arr in inputs.items():
        a = np.asarray(arr).view()
        a.flags.writeable = False  # a rank's store into it is seen first (RankRun.access)
        roots[n] = HostTensor(core.BaseTensor(n, a, as_dtype(a.dtype), "input"))
    for n, (shape, dtype) in outputs.items():
        dt = as_dtype(dtype)
        a = np.full(tuple(shape), 0 if zero_outputs else host.fill_value(dt),
                    get_backend("numpy").native(dt.name))
        roots[n] = HostTensor(core.BaseTensor(n, a, dt, "output"))
    for n, (arr, owned) in inouts.items():
        if owned is not None:
            raise _unmodelled(f"owned rows of the in/out {n!r} of a host program")
        a = np.array(arr)
        roots[n] = HostTensor(core.BaseTensor(n, a, as_dtype(a.dtype), "inout"))
    prev_prog, _state.program = getattr(_state, "program", None), prog
    prev = core.activate(host)
    try:
        host_fn(**roots, **kwargs)
    finally:
        core.activate(prev)
        _state.program = prev_prog
    for buf in prog.buffers:
        if buf.ranks and buf.ranks != set(range(world)):
            raise NotImplementedError(
                f"window buffer {buf.name!r} ({fmt_site(buf.site)}) is dispatched to ranks "
                f"{sorted(buf.ranks)} of {world}: comm domains smaller than the world are not "
                "emulated")
    for r in range(world):
        run = RankRun(host.bk, platform, f"{kname} rank {r}", seed, permute_parallel)
        run.input_store = input_store
        run.lanes = run.lanes and runner.lanes_on(True, permute_parallel)
        run.lane_deny = deny
        prog.ranks.append(Rank(prog, r, run))
    try:
        with core.fewer_collections():
            prog.sched.run(_rank_body)
        out = _finish(prog, roots, "warning" if zero_outputs else "fail", platform, budget_model)
    except Exception as exc:  # a rank's error (its escape names its loop), a deadlock
        if isinstance(exc, LaneEscape) or not prog.lane_sites():
            raise
        raise _escape(prog.lane_sites(), f"{type(exc).__name__}: {exc}") from exc
    races = any(f.check == "race" and f.severity == "fail" for f in prog.findings)
    if races and prog.lane_sites():
        # a cross-rank race names the first pair of accesses it finds: the order's to tell
        raise _escape(prog.lane_sites(), "a cross-rank race")
    return out


def _escape(sites: set[tuple[str, int]], why: str) -> LaneEscape:
    """An escape from every loop that ran in lanes (``sites``): what happened came after."""
    e = LaneEscape(why)
    e.sites = sites
    return e


def _finish(prog: Program, roots: dict[str, HostTensor], unwritten: str, platform: str,
            budget_model: str) -> KernelRun:
    """Every rank's own final checks, the copy-back of host views, the cross-rank checks."""
    bk = prog.bk
    maps: dict[int, list[tuple[int, HostTensor, np.ndarray, np.ndarray]]] = {}
    for rank in prog.ranks:
        tensors = {t.base.name: t for _hv, t in rank.views.values()}
        outs = {n: bk.to_numpy(t.base.data) for n, t in tensors.items()
                if t.base.kind in ("output", "inout")}
        _final_checks(rank.run, tensors, outs, unwritten, budget_model)
        for hv, t in rank.views.values():
            if t.base.kind in ("output", "inout"):
                maps.setdefault(id(hv.base), []).append(
                    (rank.index, hv, outs[t.base.name], t.base.written))
    for root in roots.values():
        _copy_back(prog, root, maps.get(id(root.base), []), unwritten)
    prog.sync.races(prog)
    prog.sync.check_waits(prog)
    findings = _rank_findings(prog) + prog.findings
    outs = {n: r.base.data for n, r in roots.items() if r.base.kind in ("output", "inout")}
    budget = _merge_budgets([r.run.budget for r in prog.ranks])
    loops: dict[str, str] = {}
    for r in prog.ranks:
        for site, how in runner.lane_loops(r.run).items():
            if loops.get(site, "lanes") == "lanes":  # one at a time on any rank: so said
                loops[site] = how
    return KernelRun(prog.name, platform, outs, findings, budget, loops)


def _rank_findings(prog: Program) -> list[Finding]:
    """Every rank's findings; one finding that several ranks report alike (a budget, a layout
    warning of shared code) is kept once, naming the ranks."""
    groups: dict[tuple, tuple[Finding, list[int]]] = {}
    for rank in prog.ranks:
        tag = f"kernel '{prog.name} rank {rank.index}'"
        for f in rank.run.findings:
            key = (f.check, f.severity, f.scope, f.loop_indices, f.tensor,
                   f.message.replace(tag, "\0"))
            groups.setdefault(key, (f, []))[1].append(rank.index)
    out = []
    for key, (f, ranks) in groups.items():
        if len(ranks) > 1:
            who = f"ranks {', '.join(map(str, ranks))}"
            f = dataclasses.replace(f, kernel=f"{prog.name} {who}",
                                    message=key[-1].replace("\0", f"kernel '{prog.name} {who}'"))
        out.append(f)
    return out


def _copy_back(prog: Program, root: HostTensor, maps: list, unwritten: str) -> None:
    """D2H: the elements each rank wrote into its copy of a view land in the host tensor; two
    ranks mapping an element that either writes race."""
    base = root.base
    covered = np.zeros(base.shape, bool) if base.kind == "output" else None
    boxes = []
    for r, hv, data, written in maps:
        w = hv.written(written)
        box = core.box_key(hv.lo, hv.hi)
        region = base.data[box]
        region[w] = data.reshape(w.shape)[w]
        if covered is not None:
            covered[box] = True
        boxes.append((r, hv, w))
    for (ra, a, wa), (rb, b, wb) in itertools.combinations(boxes, 2):
        if ra == rb or not _overlap(a.lo, a.hi, b.lo, b.hi):
            continue
        olo = tuple(max(x, y) for x, y in zip(a.lo, b.lo, strict=True))
        ohi = tuple(min(x, y) for x, y in zip(a.hi, b.hi, strict=True))
        sub_a = wa[tuple(slice(lo - o, hi - o) for lo, hi, o in zip(olo, ohi, a.lo, strict=True))]
        sub_b = wb[tuple(slice(lo - o, hi - o) for lo, hi, o in zip(olo, ohi, b.lo, strict=True))]
        if sub_a.any() or sub_b.any():
            prog.report("race", "fail",
                        f"host tensor {base.name!r}: ranks {ra} and {rb} both map "
                        f"{fmt_box(base.name, olo, ohi)} ({a.name} and {b.name}) and "
                        f"{'both write' if sub_a.any() and sub_b.any() else 'one writes'} it: "
                        "each rank has its own copy, so the host keeps one rank's values",
                        tensor=base.name)
    if covered is not None and not covered.all():
        prog.report("coverage", unwritten,
                    f"output {base.name!r} {list(base.shape)}: elements no rank is given: "
                    f"{core.describe_mask(~covered)}", tensor=base.name)


def _merge_budgets(reports: list[BudgetReport]) -> BudgetReport:
    """The worst use of each scope × space over the ranks."""
    out = BudgetReport()
    for rep in reports:
        for s in rep.scopes:
            if s not in out.scopes:
                out.scopes.append(s)
        for key, u in rep.usage.items():
            m = out.usage.get(key)
            if m is None:
                out.usage[key] = copy.deepcopy(u)
                continue
            for plat, v in u.shape.items():
                if v > m.shape.get(plat, -1):
                    m.shape[plat], m.where[plat], m.top[plat] = v, u.where[plat], u.top[plat]
            for plat, v in u.peak.items():
                if v > m.peak.get(plat, -1):
                    m.peak[plat], m.peak_top[plat] = v, u.peak_top.get(plat, [])
    return out
