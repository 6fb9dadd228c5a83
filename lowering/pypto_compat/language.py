"""The emulated ``pypto.language``: pypto-lib kernel files run unchanged on the tile emulator.

Installed as ``pypto.language`` only for the duration of a run (see
:func:`lowering.pypto_compat.installed`). Ops, scopes, loops, task ids, annotations and the
``@pl.jit`` family are the tile language's (:mod:`lowering.tile.pl`, with
:mod:`lowering.tile.control` and :mod:`lowering.tile.jit` for their semantics); this module
adds what a pypto-lib *file* needs around them: the ``@pl.program`` / ``@pl.function`` /
``@pl.inline`` decorators (no compilation: the decorated Python runs eagerly, with its
``with pl.spmd`` forms rewritten by :mod:`lowering.tile.rewrite`), ``pl.FunctionType``, and
namespaces whose unknown names fail with the kernel's line. Any other name is an
:class:`UnsupportedAPI` error naming ``pl.<name>`` and the kernel's file:line.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from lowering.tile import core as _core
from lowering.tile import jit as _jit
from lowering.tile import pl as _tpl
from lowering.tile.control import new_task as _new_task
from lowering.tile.dtypes import DType
from lowering.tile.rewrite import rewrite as _rewrite

_HERE = os.path.dirname(os.path.abspath(__file__))

# -- errors ----------------------------------------------------------------------------------


class UnsupportedAPI(NotImplementedError):
    """A ``pl`` name the emulator does not provide; the message names the kernel's line."""


def _site(depth: int = 2) -> str:
    f = sys._getframe(depth)
    while f is not None and (f.f_code.co_filename.startswith(_HERE)
                             or f.f_code.co_filename.startswith("<frozen importlib")):
        f = f.f_back
    return f"{f.f_code.co_filename}:{f.f_lineno}" if f is not None else "?"


def _unsupported(name: str) -> UnsupportedAPI:
    return UnsupportedAPI(f"pl.{name} is not supported by the emulator (used at {_site(3)}); "
                          "see docs/run_kernel.md for the emulated API")


# -- re-exported tile language -----------------------------------------------------------------

_REEXPORT = (
    "BF16 BOOL FP16 FP32 INDEX INT8 INT16 INT32 INT64 UINT8 UINT16 UINT32 UINT64 Level "
    "create_tensor slice assemble load store reshape full expands read write dim cast matmul "
    "matmul_acc add sub mul div maximum minimum neg abs sqrt recip exp log rsqrt row_sum "
    "row_max row_min col_sum col_max col_min row_expand row_expand_mul row_expand_sub "
    "row_expand_add row_expand_div row_expand_max row_expand_min col_expand col_expand_mul "
    "col_expand_sub col_expand_add col_expand_div col_expand_max col_expand_min gather concat "
    "transpose "
    # scopes, loops, tasks (lowering.tile.control)
    "at range unroll parallel pipeline spmd split_aiv cluster scope manual_scope yield_ "
    "while_ cond const static_assert static_print dynamic split cross_core_slot no_dep "
    "aiv_shard aic_gather get_block_idx get_block_num get_subblock_idx submit spmd_submit "
    "SplitMode AtomicType ScopeMode Role optimizations TaskId"
).split()
globals().update({n: getattr(_tpl, n) for n in _REEXPORT})
DataType = DType


class _Namespace:
    """``pl.tensor`` / ``pl.tile``: the tile language's sub-namespaces, unknown names named
    with the kernel's file:line."""

    def __init__(self, name: str, inner: Any) -> None:
        self._name = name
        self._inner = inner

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        try:
            return getattr(self._inner, item)
        except AttributeError:
            raise _unsupported(f"{self._name}.{item}") from None


tensor = _Namespace("tensor", _tpl.tensor)
tile = _Namespace("tile", _tpl.tile)
system = _Namespace("system", _tpl.system)
array = _Namespace("array", _tpl.array)
prefetch = _Namespace("prefetch", _tpl.prefetch)


class FunctionType(enum.Enum):
    """``@pl.function(type=pl.FunctionType.X)``: recorded, not acted on."""

    Opaque = "Opaque"
    Orchestration = "Orchestration"
    InCore = "InCore"
    AIC = "AIC"
    AIV = "AIV"
    Group = "Group"
    Inline = "Inline"


# -- annotations (lowering.tile.jit) -------------------------------------------------------------

DynVar = _core.DynVar
TensorType, Tensor, Tile = _jit.TensorType, _jit.Tensor, _jit.Tile
ScalarType, Scalar, TASK_ID = _jit.ScalarType, _jit.Scalar, _jit.TASK_ID
Direction, Out, InOut = _jit.Direction, _jit.Out, _jit.InOut
ArrayType, Array = _jit.ArrayType, _jit.ArrayAnnotation
JITFunction, jit = _jit.JITFunction, _jit.jit


# -- decorators ------------------------------------------------------------------------------


def _mark(fn: Callable, kind: str, ftype: Any = None) -> Callable:
    fn = _rewrite(fn)
    if getattr(ftype, "name", "") in ("InCore", "AIC", "AIV"):
        fn = _incore(fn)
    fn.__pl_kind__ = kind
    fn.__pl_type__ = ftype
    return fn


def _incore(inner: Callable) -> Callable:
    """An InCore / AIC / AIV ``@pl.function``: a call from orchestration code is an in-core
    scope (budget entry) named after the function."""

    @functools.wraps(inner)
    def call(*args: Any, **kwargs: Any) -> Any:
        if _core.current().scope is not None:
            return inner(*args, **kwargs)
        with _core.AtScope(_tpl.Level.CORE_GROUP, inner.__name__, _core.caller_site(),
                           _new_task(inner.__name__)):
            return inner(*args, **kwargs)

    return call


def function(fn: Callable | None = None, *, type: Any = None, **_kw: Any) -> Any:  # noqa: A002
    """``@pl.function`` / ``@pl.function(type=pl.FunctionType.Opaque)``: the method runs as
    written."""
    if fn is None:
        return lambda f: _mark(f, "function", type)
    return _mark(fn, "function", type)


def inline(fn: Callable | None = None, **_kw: Any) -> Any:
    if fn is None:
        return lambda f: _mark(f, "inline")
    return _mark(fn, "inline")


def program(cls: type | None = None, **_kw: Any) -> Any:
    """``@pl.program`` class: its ``@pl.function`` methods run eagerly on an instance."""
    if cls is None:
        return lambda c: program(c)
    cls.__pl_program__ = True
    return cls


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "auto_chunk":
        raise UnsupportedAPI(f"pl.auto_chunk (used at {_site(2)}) was removed from pypto (the "
                             "chunk / auto_chunk loop-chunking feature); pypto HEAD has no such "
                             "name")
    try:  # names the op-group modules export (lowering.tile.surface)
        return getattr(_tpl, name)
    except AttributeError:
        raise _unsupported(name) from None
