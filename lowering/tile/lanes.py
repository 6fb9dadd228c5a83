"""Lanes: the iterations of a ``pl.parallel`` loop (or the blocks of a ``pl.spmd``) run side
by side, once.

Their iterations are independent (the race check proves it of every run), so the body can run
once for all of them: the loop index is a :class:`Lanes` value (the N indices), and a tile
whose value differs from iteration to iteration carries its N values along a leading axis (a
:class:`LaneArray`; ``Tile.shape`` is one iteration's shape). Values every iteration shares (a
tile loaded from one row of a cache, a full, a constant) stay one value. Each op then runs
once on N iterations' data: the Python cost of an op, most of the emulator's time on small
tiles, is paid once instead of N times (``lowering.tile.ops_lanes``).

What each iteration would have done is kept exactly — the run in lanes gives the bits, the
findings and the budget of the run one iteration at a time:

- the arithmetic is the same numpy arithmetic on a stacked array (elementwise, row reductions
  along the last axis, one 2-D product per iteration);
- every GM access is logged per iteration, under that iteration's index, so the race,
  coverage and dead-write checks see what the one-at-a-time run shows them;
- a tile's budget is one iteration's shape (each iteration runs on its own core);
- whatever would make the lanes differ from the iterations in order raises
  :class:`LaneEscape`, and the run starts again with that loop run one iteration at a time
  (``lowering.tile.runner``): a value the lanes do not agree on where one is needed (a
  branch, an ``int()``, a trip count), a value of the lanes kept past the loop, an atomic
  add, a write every iteration makes to one place, a race (its values depend on the order),
  any error (the one-at-a-time run tells it). Before a loop starts, :func:`body_refusal`
  reads its source for what would otherwise only show half-way: a branch or trip count on
  data read with the index, Python state carried from one iteration to the next; and
  :func:`iteration_groups` cuts the iterations into runs that agree on every branch, trip
  count and valid shape made from the index (:mod:`lowering.tile.lane_groups`). Nothing is
  guessed: a run that disagrees after all leaves the lanes.
"""

from __future__ import annotations

import ast
import linecache
import operator
from typing import Any, NamedTuple

import numpy as np

from lowering.tile.lane_groups import INDEX_CALLS, Split, callee, groups, split_of


class LaneEscape(Exception):
    """A loop running in lanes met what lanes do not model (``why``): that loop must run one
    iteration at a time."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
        self.site: tuple[str, int] | None = None  # the loop running in lanes, if one is
        self.sites: set[tuple[str, int]] = set()  # every loop that ran in lanes so far


class LaneArray(np.ndarray):
    """A backend array whose leading axis is the lanes (one iteration per row)."""


def lane_array(a: np.ndarray) -> LaneArray:
    return np.ascontiguousarray(a).view(LaneArray)


_NUMBER = (int, float, np.integer, np.floating)


class Lanes:
    """A Python scalar with one value per lane (the loop index, or a number read per
    iteration). Arithmetic stays per lane; where one value is needed (``range``, an index, a
    branch) the lanes must agree, else :class:`LaneEscape`."""

    __slots__ = ("v",)

    def __init__(self, values: np.ndarray) -> None:
        self.v = values

    @staticmethod
    def of(values: Any) -> Any:
        """``values`` as Lanes, or a plain number when every lane holds the same one."""
        v = np.asarray(values)
        if v.size and (v == v.flat[0]).all():
            return v.flat[0].item()
        return Lanes(v)

    def at(self, i: int) -> Any:
        return self.v[i].item()

    def _one(self, what: str) -> Any:
        one = Lanes.of(self.v)
        if type(one) is Lanes:
            raise LaneEscape(f"{what} of a value that differs across the iterations ({self})")
        return one

    def __index__(self) -> int:
        return operator.index(self._one("an index"))

    def __int__(self) -> int:
        return int(self._one("int()"))

    def __float__(self) -> float:
        return float(self._one("float()"))

    def __bool__(self) -> bool:
        return bool(self._one("a branch"))

    def __hash__(self) -> int:
        raise LaneEscape(f"hash of a value that differs across the iterations ({self})")

    def __repr__(self) -> str:
        v = self.v
        if v.dtype.kind in "iu" and len(v) > 2 and (np.diff(v) == v[1] - v[0]).all():
            return f"{v[0]}..{v[-1]}" + ("" if v[1] - v[0] == 1 else f" step {v[1] - v[0]}")
        return "[" + ", ".join(map(str, v[:4].tolist())) + (", ...]" if len(v) > 4 else "]")

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def _bin(self, other: Any, fn: Any) -> Any:
        if isinstance(other, Lanes):
            return Lanes.of(fn(self.v, other.v))
        if isinstance(other, _NUMBER) and not isinstance(other, bool):
            return Lanes.of(fn(self.v, other))
        return NotImplemented

    def _rbin(self, other: Any, fn: Any) -> Any:
        if isinstance(other, _NUMBER) and not isinstance(other, bool):
            return Lanes.of(fn(other, self.v))
        return NotImplemented

    def __add__(self, o: Any) -> Any:
        return self._bin(o, operator.add)

    def __radd__(self, o: Any) -> Any:
        return self._rbin(o, operator.add)

    def __sub__(self, o: Any) -> Any:
        return self._bin(o, operator.sub)

    def __rsub__(self, o: Any) -> Any:
        return self._rbin(o, operator.sub)

    def __mul__(self, o: Any) -> Any:
        return self._bin(o, operator.mul)

    def __rmul__(self, o: Any) -> Any:
        return self._rbin(o, operator.mul)

    def __floordiv__(self, o: Any) -> Any:
        return self._bin(o, operator.floordiv)

    def __rfloordiv__(self, o: Any) -> Any:
        return self._rbin(o, operator.floordiv)

    def __mod__(self, o: Any) -> Any:
        return self._bin(o, operator.mod)

    def __rmod__(self, o: Any) -> Any:
        return self._rbin(o, operator.mod)

    def __neg__(self) -> Any:
        return Lanes.of(-self.v)

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return self._bin(o, operator.eq)

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return self._bin(o, operator.ne)

    def __lt__(self, o: Any) -> Any:
        return self._bin(o, operator.lt)

    def __le__(self, o: Any) -> Any:
        return self._bin(o, operator.le)

    def __gt__(self, o: Any) -> Any:
        return self._bin(o, operator.gt)

    def __ge__(self, o: Any) -> Any:
        return self._bin(o, operator.ge)


def has_lanes(x: Any) -> bool:
    """Does ``x`` (an op argument: a number, a tile, a sequence or a slice of them) hold a
    value that differs across lanes?"""
    t = type(x)
    if t is Lanes:
        return True
    if t is tuple or t is list:
        return any(has_lanes(y) for y in x)
    if t is slice:
        return type(x.start) is Lanes or type(x.stop) is Lanes or type(x.step) is Lanes
    return type(getattr(x, "data", None)) is LaneArray and hasattr(x, "buf")


def lane_of(x: Any, i: int) -> Any:
    """``x`` as lane ``i`` sees it (numbers and sequences; tiles are handled by the op)."""
    t = type(x)
    if t is Lanes:
        return x.at(i)
    if t is tuple or t is list:
        return t(lane_of(y, i) for y in x)
    if t is slice:
        return slice(lane_of(x.start, i), lane_of(x.stop, i), lane_of(x.step, i))
    return x


#: methods that change a Python container in place: run once for N iterations, they would
#: do once what the iterations do N times
_MUTATORS = frozenset("append extend insert pop remove clear update setdefault add discard "
                      "popitem sort reverse".split())



#: the cross-rank ops (:mod:`lowering.tile.distributed` adds them): each runs in program order
#: (a notify is an epoch of its own), so a loop whose body calls one runs one iteration at a time
CROSS_RANK: set[Any] = set()
_CROSS_NAMES = frozenset("notify wait put get remote_load remote_store tile_remote_store "
                         "tensor_remote_store".split())


class _Body(NamedTuple):
    """What the source of a loop body shows, once per loop (``_refusal``)."""

    why: str | None  # refused whatever the run holds
    calls: tuple  # (name, method, line): a mutating method of a name from outside the body
    carried: tuple  # (name, line): a name read before the body assigns it
    buffers: tuple  # lines of pl.create_tensor calls outside every `with` of the body
    split: Split | None  # what in the body depends on the index (lowering.tile.lane_groups)
    cross: tuple  # (attribute chain, line): calls that may be cross-rank ops (pld.system.wait)


_bodies: dict[tuple[str, int], _Body] = {}


def body_refusal(site: tuple[str, int], frame: Any, shared: Any, outside: bool,
                 checked: Any) -> str | None:
    """Why the body of the loop at ``site`` (file, line), run from ``frame``, cannot run once
    for all its iterations, or None. Python state a body carries from one iteration to the
    next would change once instead of N times: a name the body reads before it assigns it
    (unless it holds a value every iteration shares — ``shared(value)``, a GM tensor that
    ``out = pl.assemble(out, ...)`` hands back), a container from outside appended to or an
    item of it set (unless ``checked(value)``: a GM tensor or a tile, whose writes are logged
    per iteration), a ``global``; so would anything the source does not show (no source).
    ``outside``: the loop runs outside every in-core scope, where a ``pl.create_tensor`` in
    its body (outside a ``with`` of it) is a GM buffer per iteration."""
    body = _bodies.get(site)
    if body is None:
        body = _bodies[site] = _refusal(site)
    if body.why is not None:
        return body.why
    if outside and body.buffers:
        return (f"line {body.buffers[0]}: pl.create_tensor outside an in-core scope (a buffer "
                "per iteration)")
    if not (body.carried or body.calls or body.cross):
        return None
    local, glob = (frame.f_locals, frame.f_globals) if frame is not None else ({}, {})
    for chain, line in body.cross:
        if _resolve(chain, local, glob) in CROSS_RANK:
            return f"line {line}: {'.'.join(chain)}(), a cross-rank op"
    for name, line in body.carried:
        value = local.get(name, glob.get(name, _MISSING))
        if value is not _MISSING and not shared(value):
            return (f"line {line}: {name!r} is read before the body assigns it (a value "
                    "carried from one iteration to the next)")
    for name, attr, line in body.calls:  # x.append(...) of a container from outside the body
        obj = local.get(name, glob.get(name, _MISSING))
        if attr == "[]":  # an item of a pl.array, a list: set once for N iterations
            if not checked(obj):
                return f"line {line}: an item of {name!r} from outside the body is set"
        elif obj is _MISSING or isinstance(obj, list | dict | set | bytearray):
            return f"line {line}: .{attr}() of a container from outside the body"
    return None


_MISSING = object()


def _resolve(chain: tuple[str, ...], local: dict, glob: dict) -> Any:
    """``a.b.c`` looked up from a frame's names, or _MISSING."""
    obj = local.get(chain[0], glob.get(chain[0], _MISSING))
    for attr in chain[1:]:
        if obj is _MISSING:
            break
        try:
            obj = getattr(obj, attr, _MISSING)
        except Exception:  # noqa: BLE001 - a namespace that raises for names it lacks
            return _MISSING
    return obj


def _refused(why: str) -> _Body:
    return _Body(why, (), (), (), None, ())


def iteration_groups(site: tuple[str, int], frame: Any, idx: np.ndarray
                     ) -> list[np.ndarray] | str:
    """The runs of the iterations ``idx`` of the loop at ``site`` (run from ``frame``; its
    :func:`body_refusal` has passed) that can each run in lanes, or why none can: all of them
    where nothing in the body depends on the index (:func:`lowering.tile.lane_groups.groups`)."""
    split = _bodies[site].split
    return [idx] if split is None else groups(split, frame, idx)


def _refusal(site: tuple[str, int]) -> _Body:
    lines = linecache.getlines(site[0])
    if not lines:
        return _refused("no source")
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return _refused("source does not parse")
    # a `for ... in pl.parallel / pl.spmd(...)`, or a `with pl.spmd(...)` (its blocks)
    loop = next((n for n in ast.walk(tree) if isinstance(n, ast.For | ast.AsyncFor | ast.With)
                 and any(h.lineno <= site[1] <= (h.end_lineno or h.lineno) for h in _heads(n))),
                None)
    if loop is None:
        return _refused("no for / with statement on that line")
    order = _Order()
    for stmt in loop.body:
        order.visit(stmt)
    stored = {n for n, kind, _ in order.events if kind == "store"}
    # the loop variable; a `with pl.spmd(n) as tid:` names its task id (the block index is
    # pl.tile.get_block_idx())
    targets = [loop.target] if isinstance(loop, ast.For) else [
        i.optional_vars for i in loop.items if i.optional_vars is not None]
    index = {n.id for t in targets for n in ast.walk(t)
             if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound = stored | index
    first: dict[str, tuple[str, int]] = {}
    for name, kind, line in order.events:
        first.setdefault(name, (kind, line))
    carried = tuple((n, line) for n, (kind, line) in first.items()
                    if kind == "load" and n in stored and n not in index)
    branch, keys = _branch_on_index(loop.body, index)
    if branch is not None:
        return _refused(branch)
    calls = []
    for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
        if isinstance(node, ast.Global | ast.Nonlocal):
            return _refused(f"line {node.lineno}: global / nonlocal")
        if isinstance(node, ast.AugAssign) and not isinstance(node.target, ast.Name):
            return _refused(f"line {node.lineno}: an augmented assignment of an attribute / item")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr in _MUTATORS):
            v = node.func.value
            if not isinstance(v, ast.Name):
                return _refused(f"line {node.lineno}: .{node.func.attr}() of an unnamed object")
            if v.id not in bound:
                calls.append((v.id, node.func.attr, node.lineno))
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and isinstance(
                node.value, ast.Name) and node.value.id not in bound:
            calls.append((node.value.id, "[]", node.lineno))  # tids[g] = ... (body_refusal)
        if isinstance(node, ast.Yield | ast.YieldFrom | ast.Return | ast.Break):
            return _refused(f"line {node.lineno}: leaves the iteration early")
        if isinstance(node, ast.Call) and any(k.arg == "atomic" for k in node.keywords):
            # atomic adds land one per iteration, in the iterations' order (fp32 sums differ)
            return _refused(f"line {node.lineno}: an atomic add")
    # a GM buffer made in the body outside an in-core scope is one per iteration (where the
    # loop itself runs outside every scope: body_refusal's `outside`)
    buffers = tuple(n.lineno for n in _calls_outside_with(loop.body)
                    if callee(n) == "create_tensor")
    cross = []
    for node in ast.walk(ast.Module(body=loop.body, type_ignores=[])):
        if isinstance(node, ast.Call) and callee(node) in _CROSS_NAMES:
            chain, f = [], node.func
            while isinstance(f, ast.Attribute):
                chain.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                cross.append(((f.id, *reversed(chain)), node.lineno))
    return _Body(None, tuple(calls), carried, buffers,
                 split_of(loop.body, index, bound, keys) if keys else None, tuple(cross))


def _calls_outside_with(body: list[ast.stmt]) -> list[ast.Call]:
    """The calls in ``body`` not inside a ``with`` statement of it (nor a nested function)."""
    out: list[ast.Call] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, ast.With | ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Call):
            out.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    for stmt in body:
        walk(stmt)
    return out


def _heads(node: ast.For | ast.AsyncFor | ast.With) -> list[ast.AST]:
    """The expressions whose evaluation starts the loop (the line a loop site names)."""
    if isinstance(node, ast.With):
        return [item.context_expr for item in node.items]
    return [node.iter]


_LOOPS = frozenset(("range", "parallel", "pipeline", "unroll", "spmd"))


def _branch_on_index(body: list[ast.stmt], index: set[str]) -> tuple[str | None, list]:
    """The branches, trip counts and valid shapes in ``body`` that depend on the loop index
    (a name computed from it, or from a block index), which the lanes must agree on: the
    expressions that decide them (the keys of :mod:`lowering.tile.lane_groups`), or why the
    loop cannot run in lanes — one of them reads data (``pl.read``, a tile, a call) made
    from the index, which only the run can tell: known before the body runs, so no lane pass
    is started only to be abandoned."""
    varying, data = set(index), set()
    tree = ast.Module(body=body, type_ignores=[])

    def mentions(node: ast.AST | None, names: set[str] | None = None) -> bool:
        names = varying if names is None else names
        for n in ast.walk(node) if node is not None else ():
            if isinstance(n, ast.Name) and n.id in names:
                return True
            if names is varying and isinstance(n, ast.Call) and callee(n) in INDEX_CALLS:
                return True
        return False

    def reads_data(node: ast.AST) -> bool:
        """Made from the index through more than index arithmetic (a call, a subscript)."""
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and callee(n) not in ("min", "max", *INDEX_CALLS) and (
                    any(mentions(a) for a in (*n.args, *(k.value for k in n.keywords)))):
                return True
            if isinstance(n, ast.Subscript) and mentions(n.slice):
                return True
        return mentions(node, data)

    for _ in range(2):  # a name made from the index later in the body, used in an inner loop
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.NamedExpr) \
                    and mentions(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {n.id for t in targets for n in ast.walk(t) if _stored(n)}
                varying |= names
                if reads_data(node.value):
                    data |= names
            elif isinstance(node, ast.For) and mentions(node.iter):
                varying |= {n.id for n in ast.walk(node.target) if _stored(n)}
    keys: list[tuple[ast.expr, str]] = []

    def key(exprs: list, what: str, line: int, whole: ast.expr | None = None) -> str | None:
        """``exprs`` decide ``what``; the key is each of them, or ``whole`` (a loop's call:
        its trip count is the key, the bounds may differ)."""
        for e in exprs:
            if mentions(e):
                if reads_data(e):
                    return f"line {line}: {what} on data that differs across the iterations"
                if whole is not None:
                    keys.append((whole, what))
                    return None
                keys.append((e, what))
        return None

    for node in ast.walk(tree):
        why = None
        if isinstance(node, ast.If | ast.While | ast.IfExp):
            why = key([node.test], "a branch", node.lineno)
        elif isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and (
                callee(node.iter) in _LOOPS):
            why = key(node.iter.args, "a trip count", node.lineno, node.iter)
        elif isinstance(node, ast.Call):  # a tile's valid shape is one per tile: lanes share it
            shapes = [k.value for k in node.keywords if k.arg == "valid_shape"]
            if callee(node) == "set_validshape":
                shapes += node.args[1:]
            elts = [e for v in shapes for e in (v.elts if isinstance(v, ast.List | ast.Tuple)
                                                  else [v])]
            why = key(elts, "a valid shape", node.lineno)
        if why is not None:
            return why, []
    return None, keys


def _stored(node: ast.AST) -> bool:
    """A name an assignment binds (not one its subscript or attribute target reads)."""
    return isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)


class _Order(ast.NodeVisitor):
    """The loads and stores of names in a body, in the order Python runs them (an assignment's
    value before its targets, a loop's iterable before its variable); nested functions and
    classes are not entered."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def visit_Name(self, node: ast.Name) -> None:
        kind = "load" if isinstance(node.ctx, ast.Load) else "store"
        self.events.append((node.id, kind, node.lineno))

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.events.append((node.target.id, "load", node.lineno))
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in (*node.body, *node.orelse):
            self.visit(stmt)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        return None

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef  # type: ignore
