"""Where the iterations of a loop part ways: the groups of iterations that can run in lanes
together (see :mod:`lowering.tile.lanes`).

Lanes run one body for N iterations, so every branch, trip count and valid shape must come
out alike in all of them. Most loops that branch on their index do it at their edges: the
last token tile of ``t_dim`` rows is a tail (``valid = pl.min(T, t_dim - t0)``, then
``if valid == T: ... else: ...``), the first block of a split reduction starts it. Such a
loop runs in lanes group by group, each group a run of consecutive iterations on which every
such value is the same.

The groups come from the loop's own source, before it runs: the body's assignments of index
arithmetic (``+ - * // %``, ``min`` / ``max`` and ``pl.min`` / ``pl.max`` of numbers,
comparisons, the block index) are evaluated for every iteration at once, with the names the
loop's frame holds, and so are the branch tests, trip counts and valid shapes that depend on
the index (the *keys*). A loop with a key the arithmetic cannot tell — an inner loop's
variable, a name the body assigns twice, a value that is not a number — runs one iteration
at a time (a key that reads data, ``pl.read(idx, [b])``, is refused from the source alone).
Nothing here decides a result: a group whose lanes still disagree at run time leaves the
lanes as any loop does (:class:`~lowering.tile.lanes.LaneEscape`).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class Split(NamedTuple):
    """How a loop body's index decides its branches: ``keys`` (the branch tests, trip-count
    arguments and valid shapes that depend on the index, each with what it decides: "a
    branch", ...), ``defs`` (its assignments of index
    arithmetic, in order: name, value), ``index`` (the loop's variable names), ``bound``
    (every name the body assigns: never read from the frame)."""

    keys: tuple[tuple[ast.expr, str], ...]
    defs: tuple[tuple[str, ast.expr], ...]
    index: frozenset[str]
    bound: frozenset[str]


#: calls whose value is the block / lane a body runs as (pl.spmd, pl.split_aiv)
INDEX_CALLS = frozenset(("get_block_idx", "get_subblock_idx"))
#: calls of numbers that keep a value index arithmetic (pl.min / pl.max of scalars)
_ARITH_CALLS = {"min": np.minimum, "max": np.maximum}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.mod}
_CMPOPS = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
           ast.Gt: np.greater, ast.GtE: np.greater_equal}
#: groups of, on average, fewer iterations than this are not worth lanes
MIN_GROUP = 2


class _Unknown(Exception):
    """The arithmetic cannot tell this value."""


def callee(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def groups(split: Split, frame: Any, idx: np.ndarray) -> list[np.ndarray] | str:
    """The iterations ``idx`` (the loop's values, in order) cut into runs on which every key of
    ``split`` is the same, evaluated with ``frame``'s names; or why not: the runs are too
    short to gain, or the arithmetic cannot tell a key (a run that disagreed half-way would
    cost a rerun of the kernel up to there: dspark ``markov_head.py``'s valid shapes, made
    in an inner loop whose bounds differ per block, took ``dspark_markov.py``'s emulator
    from 42.6 s to 75.8 s in one run beside other jobs, Intel Xeon, 2 cores)."""
    if not split.keys:
        return [idx]
    try:
        vals = _keys(split, frame, idx)
    except _Unknown as e:
        key, what = e.args[0]
        return (f"line {key.lineno}: {what} on the index that its arithmetic before the loop "
                "cannot tell (made in an inner loop, or of values that are not numbers)")
    cut = np.zeros(len(idx), bool)
    first = None
    for (key, what), v in zip(split.keys, vals, strict=True):
        step = v[1:] != v[:-1]
        if first is None and step.any():
            first = f"line {key.lineno}: {what}"
        cut[1:] |= step
    starts = np.flatnonzero(cut)
    if len(idx) < MIN_GROUP * (len(starts) + 1):
        return (f"{first} that differs across the iterations (alike over runs of "
                f"{len(idx) / (len(starts) + 1):.3g} iterations on average)")
    return np.split(idx, starts)


def _keys(split: Split, frame: Any, idx: np.ndarray) -> list[np.ndarray]:
    local, glob = (frame.f_locals, frame.f_globals) if frame is not None else ({}, {})
    env: dict[str, Any] = dict.fromkeys(split.index, idx)
    for name, value in split.defs:
        try:
            env[name] = _value(value, env, split.bound, local, glob, idx)
        except _Unknown:
            pass
    out = []
    for key, what in split.keys:
        try:
            expr = _trip_count(key) if what == "a trip count" else key  # how many, not where
            v = np.asarray(_value(expr, env, split.bound, local, glob, idx))
            if v.dtype == object:
                raise _Unknown
        except _Unknown as e:
            raise _Unknown((key, what)) from e
        out.append(np.broadcast_to(v, idx.shape))
    return out


def _value(node: ast.expr, env: dict, bound: frozenset, local: dict, glob: dict,
           idx: np.ndarray) -> Any:
    """``node`` evaluated as index arithmetic: an array over the iterations where it depends
    on the index, else a number; :class:`_Unknown` for anything else."""

    def ev(n: ast.expr) -> Any:
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float | bool):
            return n.value
        if isinstance(n, ast.Name):
            if n.id in env:
                return env[n.id]
            if n.id in bound:  # assigned in the body by what the arithmetic cannot tell
                raise _Unknown
            v = local.get(n.id, glob.get(n.id, _MISSING))
            if v is _MISSING or not _number(v):
                raise _Unknown
            return v
        if isinstance(n, ast.Attribute):  # CONFIG.T_TILE: a number of an object the frame holds
            v = _object(n.value)
            v = getattr(v, n.attr, _MISSING)
            if v is _MISSING or not _number(v):
                raise _Unknown
            return v
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return _BINOPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            return np.logical_not(ev(n.operand))
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMPOPS:
            return _CMPOPS[type(n.ops[0])](ev(n.left), ev(n.comparators[0]))
        if isinstance(n, ast.BoolOp):
            fn = np.logical_and if isinstance(n.op, ast.And) else np.logical_or
            vals = [ev(v) for v in n.values]
            out = vals[0]
            for v in vals[1:]:
                out = fn(out, v)
            return out
        if isinstance(n, ast.IfExp):
            return np.where(ev(n.test), ev(n.body), ev(n.orelse))
        if isinstance(n, ast.Call) and not n.keywords:
            name = callee(n)
            if name in _ARITH_CALLS and len(n.args) >= 2:
                vals = [ev(a) for a in n.args]
                out = vals[0]
                for v in vals[1:]:
                    out = _ARITH_CALLS[name](out, v)
                return out
            if name == "get_block_idx" and not n.args:
                return idx
        raise _Unknown

    def _object(n: ast.expr) -> Any:
        if isinstance(n, ast.Name) and n.id not in env and n.id not in bound:
            v = local.get(n.id, glob.get(n.id, _MISSING))
            if v is not _MISSING:
                return v
        raise _Unknown

    try:
        return ev(node)
    except (ArithmeticError, TypeError, ValueError) as e:  # 1 // 0, an odd operand
        raise _Unknown from e


_MISSING = object()


def _trip_count(call: ast.Call) -> ast.expr:
    """The trip count of ``pl.range(...)`` (1 to 3 arguments) as an expression:
    ``max(0, (stop - start) // step + ((stop - start) % step != 0))``."""
    a = call.args
    if not 1 <= len(a) <= 3:
        raise _Unknown
    start, stop, step = (ast.Constant(0), a[0], ast.Constant(1)) if len(a) == 1 else (
        (a[0], a[1], ast.Constant(1)) if len(a) == 2 else tuple(a))
    span = ast.BinOp(stop, ast.Sub(), start)
    rest = ast.Compare(ast.BinOp(span, ast.Mod(), step), [ast.NotEq()], [ast.Constant(0)])
    n = ast.BinOp(ast.BinOp(span, ast.FloorDiv(), step), ast.Add(), rest)
    return ast.Call(ast.Name("max", ast.Load()), [ast.Constant(0), n], [])


def _number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating)


def split_of(body: Sequence[ast.stmt], index: set[str], bound: set[str],
             keys: list[tuple[ast.expr, str]]) -> Split:
    """The :class:`Split` of a loop body: its index-arithmetic assignments (a name assigned
    once, at the body's top level or in its ``with`` blocks) and the ``keys``."""
    stores: dict[str, int] = {}
    for node in ast.walk(ast.Module(body=list(body), type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] = stores.get(node.id, 0) + 1
    defs = []

    def top(stmts: Sequence[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.With):
                top(s.body)
            target = s.targets[0] if isinstance(s, ast.Assign) and len(s.targets) == 1 else (
                s.target if isinstance(s, ast.AnnAssign) and s.value is not None else None)
            if isinstance(target, ast.Name) and stores.get(target.id) == 1:
                defs.append((target.id, s.value))

    top(body)
    return Split(tuple(keys), tuple(defs), frozenset(index), frozenset(bound))
