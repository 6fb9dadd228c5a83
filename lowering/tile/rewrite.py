"""Source rewrites that let the eager emulator run ``pl.spmd`` forms whose body must run once
per block, as pypto's parser does by outlining the body into a kernel.

Applied by the ``@pl.jit`` family / ``@pl.function`` decorators to the decorated function
(nothing changes when its source has no ``spmd``; line numbers are kept, so tracebacks and
messages name the kernel's own lines):

- ``with pl.spmd(n, ...) [as tid]: BODY`` becomes ``for tid in pl.spmd(n, ...).
  __pl_blocks__(has_as): BODY`` — BODY runs for blocks 0..n-1 (``pl.tile.get_block_idx()``
  reads the block), and ``tid`` is the dispatch's task id (the same object every block).
- a ``pl.spmd`` body (either form) with ``pl.system.syncall(...)`` statements becomes a
  generator function, one generator per block, with each barrier statement turned into
  ``yield``; ``core.run_phased`` runs the blocks phase by phase. Names the body assigns start
  from the enclosing function's values (an outlined kernel receives them as arguments) and
  do not flow back out.

A form the rewrite refuses (``break`` / ``continue`` / ``return`` at the body's top level in
the loop conversion, a non-name loop target in the generator conversion) is left alone and
recorded in ``REFUSED``; running it then raises, naming the reason.
"""

from __future__ import annotations

import ast
import inspect
import types
from collections.abc import Callable
from typing import Any

#: (file, line) of a ``pl.spmd`` form left alone -> why
REFUSED: dict[tuple[str, int], str] = {}

_PL_MODULES = ("lowering.pypto_compat.language", "lowering.tile.pl")


def _pl_names(fn: Callable) -> set[str]:
    """Names under which ``fn``'s module sees the emulated ``pypto.language``."""
    g = getattr(fn, "__globals__", {})
    return {n for n, v in g.items() if isinstance(v, types.ModuleType)
            and v.__name__ in _PL_MODULES}


def _is_pl_call(node: ast.AST, names: set[str], *attrs: str) -> bool:
    """``node`` is a call of ``<pl>.<attrs[0]>.<attrs[1]>...`` for a pl module name."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    for a in reversed(attrs):
        if not isinstance(f, ast.Attribute) or f.attr != a:
            return False
        f = f.value
    return isinstance(f, ast.Name) and f.id in names


class _Walk(ast.NodeVisitor):
    """Facts about a statement list, not descending into nested functions / classes."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.syncall = False
        self.other_yield = False
        self.stored: set[str] = set()
        self.declared = False

    def visit_FunctionDef(self, node: ast.AST) -> None:  # noqa: N802
        pass

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef  # noqa: N815

    def visit_Expr(self, node: ast.Expr) -> None:  # noqa: N802
        if _is_pl_call(node.value, self.names, "system", "syncall"):
            self.syncall = True
        self.generic_visit(node)

    def visit_Yield(self, node: ast.AST) -> None:  # noqa: N802
        self.other_yield = True

    visit_YieldFrom = visit_Await = visit_Yield  # noqa: N815

    def visit_Name(self, node: ast.Name) -> None:  # noqa: N802
        if isinstance(node.ctx, ast.Store | ast.Del):
            self.stored.add(node.id)

    def visit_Global(self, node: ast.AST) -> None:  # noqa: N802
        self.declared = True

    visit_Nonlocal = visit_Global  # noqa: N815


def _walk(body: list[ast.stmt], names: set[str]) -> _Walk:
    w = _Walk(names)
    for st in body:
        w.visit(st)
    return w


def _escapes(body: list[ast.stmt], allow_return: bool) -> str | None:
    """A ``break`` / ``continue`` (or ``return``) of ``body`` that would leave the rewritten
    loop differently from the original statement."""
    todo: list[tuple[ast.AST, bool]] = [(st, False) for st in body]
    while todo:
        node, in_loop = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(node, ast.Break | ast.Continue) and not in_loop:
            return f"`{type(node).__name__.lower()}` in its body"
        if isinstance(node, ast.Return) and not allow_return:
            return "`return` in its body"
        loop = isinstance(node, ast.For | ast.AsyncFor | ast.While)
        for child in ast.iter_child_nodes(node):
            todo.append((child, in_loop or (loop and child not in getattr(node, "orelse", []))))
    return None


class _Barriers(ast.NodeTransformer):
    """``pl.system.syncall(...)`` statements -> ``yield pl.system.syncall(...)``."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:  # noqa: N802
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef  # noqa: N815

    def visit_Expr(self, node: ast.Expr) -> ast.AST:  # noqa: N802
        if _is_pl_call(node.value, self.names, "system", "syncall"):
            return ast.copy_location(ast.Expr(ast.copy_location(ast.Yield(node.value), node)),
                                     node)
        return node


class _Spmd(ast.NodeTransformer):
    def __init__(self, names: set[str], filename: str, offset: int) -> None:
        self.names = names
        self.filename = filename
        self.offset = offset  # parsed line + offset = the file's line
        self.changed = False

    def _refuse(self, node: ast.AST, why: str) -> ast.AST:
        REFUSED[(self.filename, node.lineno + self.offset)] = why
        return node

    def visit_With(self, node: ast.With) -> Any:  # noqa: N802
        self.generic_visit(node)
        if len(node.items) != 1 or not _is_pl_call(node.items[0].context_expr, self.names,
                                                   "spmd"):
            return node
        call, target = node.items[0].context_expr, node.items[0].optional_vars
        w = _walk(node.body, self.names)
        if w.syncall:
            return self._phased(node, call, node.body, target, None, w)
        why = _escapes(node.body, allow_return=False)
        if why:
            return self._refuse(node, why)
        self.changed = True
        blocks = ast.Call(ast.Attribute(call, "__pl_blocks__", ast.Load()),
                          [ast.Constant(target is not None)], [])
        ast.copy_location(blocks.func, call)
        ast.copy_location(blocks, call)  # the loop's line is the `with` line (its site)
        tgt = target if target is not None else ast.Name("_pl_spmd_block", ast.Store())
        return ast.copy_location(ast.For(tgt, blocks, node.body, []), node)

    def visit_For(self, node: ast.For) -> Any:  # noqa: N802
        self.generic_visit(node)
        if not _is_pl_call(node.iter, self.names, "spmd"):
            return node
        w = _walk(node.body, self.names)
        if not w.syncall:
            return node
        if not isinstance(node.target, ast.Name) or node.orelse:
            return self._refuse(node, "a loop target other than one name, or an else clause")
        return self._phased(node, node.iter, node.body, None, node.target.id, w)

    def _phased(self, node: ast.stmt, call: ast.Call, body: list[ast.stmt],
                target: ast.expr | None, var: str | None, w: _Walk) -> Any:
        if w.other_yield or w.declared:
            return self._refuse(node, "yield / global / nonlocal in a body with syncall")
        why = _escapes(body, allow_return=True)
        if why:
            return self._refuse(node, why)
        self.changed = True
        fname = f"_pl_spmd_body_{node.lineno}"
        env = "_pl_env"
        prologue: list[ast.stmt] = []
        if var is not None:
            prologue.append(ast.Assign([ast.Name(var, ast.Store())], ast.Name("_pl_block",
                                                                            ast.Load())))
        for n in sorted(w.stored - {var}):
            # an outlined kernel receives the enclosing values as its arguments
            prologue.append(ast.If(
                ast.Compare(ast.Constant(n), [ast.In()], [ast.Name(env, ast.Load())]),
                [ast.Assign([ast.Name(n, ast.Store())],
                            ast.Subscript(ast.Name(env, ast.Load()), ast.Constant(n),
                                          ast.Load()))], []))
        new_body = [_Barriers(self.names).visit(st) for st in body]
        args = ast.arguments([], [ast.arg("_pl_block"), ast.arg(env)], None, [], [], None, [])
        fdef = ast.FunctionDef(fname, args, prologue + new_body, [], None, None)
        run = ast.Call(ast.Attribute(call, "__pl_phased__", ast.Load()),
                       [ast.Name(fname, ast.Load()), ast.Constant(var is not None),
                        ast.Call(ast.Name("locals", ast.Load()), [], [])], [])
        tail: ast.stmt = (ast.Assign([target], run) if target is not None else ast.Expr(run))
        out = [fdef, tail]
        for st in out:
            ast.copy_location(st, node)
            ast.fix_missing_locations(st)
        for sub in ast.walk(fdef):  # generated nodes take the statement's line
            if not hasattr(sub, "lineno") or sub.lineno is None:
                ast.copy_location(sub, node)
        return out


def rewrite(fn: Callable) -> Callable:
    """``fn`` with its ``pl.spmd`` forms rewritten (see the module docstring); ``fn`` itself
    when nothing needs rewriting or its source is unavailable."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return fn
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return fn
    src = "".join(lines)
    if "spmd" not in src:
        return fn
    names = _pl_names(fn)
    if not names:
        return fn
    indented = lines[0][:1] in " \t"
    try:
        tree = ast.parse(("if 1:\n" if indented else "") + src)
    except SyntaxError:
        return fn
    fdef = tree.body[0].body[0] if indented else tree.body[0]
    if not isinstance(fdef, ast.FunctionDef) or fdef.name != fn.__name__:
        return fn
    offset = first - 2 if indented else first - 1
    tr = _Spmd(names, code.co_filename, offset)
    fdef = tr.visit(fdef)
    if not tr.changed:
        return fn
    fdef.decorator_list = []
    ast.increment_lineno(fdef, offset)
    free = code.co_freevars
    if free:  # keep the closure: define fn inside a function whose locals are its free vars
        inner: list[ast.stmt] = [ast.Assign([ast.Name(v, ast.Store()) for v in free],
                                            ast.Constant(None)), fdef,
                                 ast.Return(ast.Name(fdef.name, ast.Load()))]
        outer = ast.FunctionDef("_pl_outer", ast.arguments([], [], None, [], [], None, []),
                                inner, [], None, None)
        body = [outer]
    else:
        body = [fdef]
    mod = ast.Module(body, [])
    ast.fix_missing_locations(mod)
    compiled = compile(mod, code.co_filename, "exec")
    new_code = _find_code(compiled, fdef.name, fdef.lineno)
    cells = dict(zip(free, fn.__closure__ or (), strict=True))
    closure = tuple(cells[v] for v in new_code.co_freevars) if new_code.co_freevars else None
    new = types.FunctionType(new_code, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__annotations__ = dict(getattr(fn, "__annotations__", {}))
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    new.__dict__.update(getattr(fn, "__dict__", {}))
    new.__pl_source__ = fn  # the function as written
    return new


def _find_code(code: types.CodeType, name: str, line: int) -> types.CodeType:
    todo = [code]
    while todo:
        c = todo.pop()
        if c.co_name == name and c.co_firstlineno == line:
            return c
        todo.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    raise LookupError(f"rewritten code of {name} not found")


def refused_reason(site: tuple[str, int]) -> str:
    """Why the ``pl.spmd`` form at ``site`` was not rewritten ('' if it was not seen)."""
    return REFUSED.get(site, "")


__all__ = ["REFUSED", "refused_reason", "rewrite"]
