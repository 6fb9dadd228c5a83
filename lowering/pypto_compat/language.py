"""The emulated ``pypto.language``: pypto-lib kernel files run unchanged on the tile emulator.

Installed as ``pypto.language`` only for the duration of a run (see
:func:`lowering.pypto_compat.installed`). Ops, scopes and loops are the tile language's
(:mod:`lowering.tile.pl`); this module adds what a pypto-lib *file* needs around them:
annotations that record shape and dtype (``pl.Tensor[[B, D], pl.BF16]``, ``pl.Out[...]``,
``pl.InOut[...]``, ``pl.Scalar[...]``), ``pl.dynamic``, the ``@pl.program`` / ``@pl.function``
/ ``@pl.inline`` and ``@pl.jit`` / ``@pl.jit.inline`` decorators (no compilation: the
decorated Python runs eagerly), ``pl.FunctionType``, ``pl.optimizations``. Any other name is
an :class:`UnsupportedAPI` error naming ``pl.<name>`` and the kernel's file:line.
"""

from __future__ import annotations

import enum
import os
import sys
import types
from collections.abc import Callable
from typing import Any

from lowering.tile import pl as _tpl
from lowering.tile.dtypes import DType

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
    "at range unroll parallel pipeline spmd chunked_loop_optimizer split const "
    "create_tensor slice assemble load store reshape full expands read write dim cast matmul "
    "matmul_acc add sub mul div maximum minimum neg abs sqrt recip exp log rsqrt row_sum "
    "row_max row_min col_sum col_max col_min row_expand row_expand_mul row_expand_sub "
    "row_expand_add row_expand_div row_expand_max row_expand_min col_expand col_expand_mul "
    "col_expand_sub col_expand_add col_expand_div col_expand_max col_expand_min gather concat "
    "transpose"
).split()
globals().update({n: getattr(_tpl, n) for n in _REEXPORT})
DataType = DType
create_tile = _tpl.create_tensor


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


class FunctionType(enum.Enum):
    """``@pl.function(type=pl.FunctionType.X)``: recorded, not acted on."""

    Opaque = "Opaque"
    Orchestration = "Orchestration"
    InCore = "InCore"
    AIC = "AIC"
    AIV = "AIV"
    Group = "Group"
    Inline = "Inline"


optimizations = types.SimpleNamespace(split=_tpl.split, chunked_loop_optimizer=None,
                                      cross_core_slot=lambda **_k: None)


# -- annotations ---------------------------------------------------------------------------------


class DynVar:
    """``pl.dynamic("T")``: a dimension bound to the size of the tensor it annotates (one size
    per name across all parameters of a run)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def dynamic(name: str) -> DynVar:
    return DynVar(name)


class TensorType:
    """``pl.Tensor[[dims], dtype]`` (``shape``/``dtype`` None when not given)."""

    kind = "tensor"

    def __init__(self, shape: tuple | None, dtype: DType | None) -> None:
        self.shape = shape
        self.dtype = dtype

    def __repr__(self) -> str:
        shp = "?" if self.shape is None else list(self.shape)
        return f"pl.{self.kind.capitalize()}[{shp}, {self.dtype!r}]"


class _TensorMeta(type):
    def __getitem__(cls, item: Any) -> TensorType:
        if not isinstance(item, tuple):
            item = (item,)
        shape, dtype = None, None
        for part in item:
            if isinstance(part, DType):
                dtype = part
            elif isinstance(part, list | tuple):
                shape = tuple(part)
        out = TensorType(shape, dtype)
        out.kind = cls.__name__.lower()
        return out


class Tensor(metaclass=_TensorMeta):
    """``pl.Tensor[[B, D], pl.BF16]`` as an annotation (bare ``pl.Tensor``: unchecked)."""


class Tile(metaclass=_TensorMeta):
    """``pl.Tile[[R, C], pl.FP32]`` as an annotation."""


class ScalarType:
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"pl.Scalar[{self.dtype!r}]"


class _ScalarMeta(type):
    def __getitem__(cls, item: Any) -> ScalarType:
        return ScalarType(item)


class Scalar(metaclass=_ScalarMeta):
    """``pl.Scalar[pl.INT32]``: a Python number at run time."""


TASK_ID = DType("TASK_ID", 8, "i")


class Direction:
    """``pl.Out[T]`` / ``pl.InOut[T]``: the parameter's direction around its type."""

    def __init__(self, direction: str, inner: Any) -> None:
        self.direction = direction
        self.inner = inner

    def __repr__(self) -> str:
        return f"pl.{'Out' if self.direction == 'out' else 'InOut'}[{self.inner!r}]"


class _DirMeta(type):
    def __getitem__(cls, item: Any) -> Direction:
        return Direction(cls._direction, item)


class Out(metaclass=_DirMeta):
    _direction = "out"


class InOut(metaclass=_DirMeta):
    _direction = "inout"


# -- decorators ------------------------------------------------------------------------------


def _mark(fn: Callable, kind: str, ftype: Any = None) -> Callable:
    fn.__pl_kind__ = kind
    fn.__pl_type__ = ftype
    return fn


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


class JITFunction:
    """A ``@pl.jit`` function: calling it runs the Python body on the emulator."""

    def __init__(self, fn: Callable, kind: str) -> None:
        self.fn = fn
        self.kind = kind
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<pl.jit{'' if self.kind == 'jit' else '.' + self.kind} {self.__name__}>"


class _Jit:
    def _deco(self, kind: str, fn: Callable | None) -> Any:
        if fn is None:
            return lambda f: JITFunction(f, kind)
        return JITFunction(fn, kind)

    def __call__(self, fn: Callable | None = None, **_kw: Any) -> Any:
        return self._deco("jit", fn)

    def inline(self, fn: Callable | None = None, **_kw: Any) -> Any:
        return self._deco("inline", fn)

    def incore(self, fn: Callable | None = None, **_kw: Any) -> Any:
        return self._deco("incore", fn)

    def opaque(self, fn: Callable | None = None, **_kw: Any) -> Any:
        return self._deco("opaque", fn)


jit = _Jit()


def static_assert(condition: Any, msg: str = "") -> None:
    if not condition:
        raise AssertionError(f"pl.static_assert failed at {_site()}: {msg}")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:  # names the op-group modules export (lowering.tile.surface)
        return getattr(_tpl, name)
    except AttributeError:
        raise _unsupported(name) from None
