"""Annotations and the ``@pl.jit`` decorator family, run eagerly.

Annotations record what pypto's parser would type-check: ``pl.Tensor[[B, D], pl.BF16]`` /
``pl.Tile[...]`` (a ``pl.dynamic`` dim binds to the argument's size, one size per name per
call: an inline function called with two sizes is specialized twice, as pypto's jit does),
``pl.Out[...]`` / ``pl.InOut[...]`` (direction), ``pl.Scalar[pl.INT32]`` (a number;
``pl.Scalar[pl.TASK_ID]``: a task id or None), ``pl.Array[n, dtype]``. Calling a decorated
function checks its arguments against them — a wrong shape, dtype or kind raises
:class:`core.DslError` naming the parameter; a dynamic-dim clash raises
:class:`core.DynamicDimMismatch` naming both tensors — then runs the Python body.

Decorators (``lowering.tile.rewrite`` is applied to each: ``with pl.spmd`` forms):
``@pl.jit`` / ``@pl.jit(auto_scope=False)`` (orchestration entry), ``@pl.jit.host`` (the HOST
orchestrator: on one device, its body runs as written), ``@pl.jit.inline`` /
``@pl.jit.inline(auto_scope=False)`` (spliced into the caller: runs in the caller's scope),
``@pl.jit.incore`` / ``(level=...)`` (an in-core kernel: a call opens an in-core scope named
after the function unless one is open), ``@pl.jit.opaque`` (a separate function: runs as
written). ``@pl.jit.extern`` (a C++ kernel) raises when called. ``auto_scope`` is recorded
for ``pl.scope`` checks; ``level`` of incore / ``auto_scope`` of incore/opaque are rejected
as pypto does.

Host dispatch: pypto runs a ``@pl.jit`` kernel called with host (torch) tensors on the device,
and ``kernel.compile(...)`` returns a compiled program dispatched the same way. Outside an
emulator run such a call goes to :data:`host_dispatch` (``lowering.harness`` installs it while
it runs a file: one judged run of the kernel on those tensors, outputs written back); with no
dispatcher it raises naming the call.
"""

from __future__ import annotations

import inspect
import numbers
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from lowering.tile import core
from lowering.tile.control import Array, TaskId, new_task
from lowering.tile.core import DslError, DynVar, caller_site, fmt_site
from lowering.tile.dtypes import DType, Level
from lowering.tile.rewrite import rewrite

# -- annotations -----------------------------------------------------------------------------------


class TensorType:
    """``pl.Tensor[[dims], dtype(, layout)]`` / ``pl.Tile[...]`` (``shape``/``dtype`` None
    when not given; ``layout`` recorded only: values are logical here)."""

    kind = "tensor"

    def __init__(self, shape: tuple | None, dtype: DType | None, layout: Any = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self.layout = layout

    def __repr__(self) -> str:
        shp = "?" if self.shape is None else [d.name if isinstance(d, DynVar) else d
                                              for d in self.shape]
        return f"pl.{self.kind.capitalize()}[{shp}, {self.dtype!r}]"


class _TensorMeta(type):
    def __getitem__(cls, item: Any) -> TensorType:
        if not isinstance(item, tuple):
            item = (item,)
        shape, dtype, layout = None, None, None
        for part in item:
            if isinstance(part, DType):
                dtype = part
            elif isinstance(part, list | tuple):
                shape = tuple(part)
            else:
                layout = part
        out = TensorType(shape, dtype, layout)
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
    """``pl.Scalar[pl.INT32]``: a Python number at run time (TASK_ID: a task id)."""


TASK_ID = DType("TASK_ID", 8, "i")


class ArrayType:
    def __init__(self, extent: Any, dtype: Any) -> None:
        self.extent = extent
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"pl.Array[{self.extent}, {self.dtype!r}]"


class _ArrayMeta(type):
    def __getitem__(cls, item: Any) -> ArrayType:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError("pl.Array requires [extent, dtype] notation")
        return ArrayType(*item)


class ArrayAnnotation(metaclass=_ArrayMeta):
    """``pl.Array[16, pl.INT32]`` as an annotation."""


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
    """``pl.Out[pl.Tensor[...]]``: a parameter the kernel writes (an output; under
    ``run-kernel`` a host call's results are written back into it)."""

    _direction = "out"


class InOut(metaclass=_DirMeta):
    """``pl.InOut[pl.Tensor[...]]``: a parameter the kernel reads and writes (a cache)."""

    _direction = "inout"


def _plain(t: Any) -> Any:
    """The checked type of an annotation (bare pl.Tensor / pl.Tile: an unchecked one)."""
    if isinstance(t, Direction):
        t = t.inner
    if t is Tensor or t is Tile:
        return TensorType(None, None)
    return t


def check_value(name: str, fn: str, t: Any, v: Any, rt: core.Run) -> None:
    """Check argument ``v`` of parameter ``name`` of ``fn`` against annotation ``t``."""
    t = _plain(t)
    if isinstance(t, TensorType):
        if not isinstance(v, Tensor_ | Tile_):
            raise DslError(f"parameter {name!r} of {fn}: expected a tensor ({t!r}), got {v!r}")
        if t.dtype is not None and v.dtype != t.dtype:
            raise DslError(f"parameter {name!r} of {fn}: expected dtype {t.dtype.name}, got "
                           f"{v!r}")
        if t.shape is not None:
            if len(t.shape) != len(v.shape):
                raise DslError(f"parameter {name!r} of {fn}: expected {t!r}, got {v!r}")
            for k, (d, g) in enumerate(zip(t.shape, v.shape, strict=True)):
                if isinstance(d, DynVar):
                    rt.bind_dyn(d.name, g, f"dim {k} of {v.name if isinstance(v, Tensor_) else v!r}"
                                f" (parameter {name!r} of {fn})")
                elif isinstance(d, numbers.Integral) and d != g:
                    raise DslError(f"parameter {name!r} of {fn}: expected {t!r}, got {v!r}")
    elif isinstance(t, ScalarType):
        if getattr(t.dtype, "name", "") == "TASK_ID":
            if v is not None and not isinstance(v, TaskId):
                raise DslError(f"parameter {name!r} of {fn}: expected a task id, got {v!r}")
        elif not isinstance(v, numbers.Number | np.generic | DynVar) or isinstance(v, TaskId):
            raise DslError(f"parameter {name!r} of {fn}: expected a scalar ({t!r}), got {v!r}")
    elif isinstance(t, ArrayType):
        if not isinstance(v, Array) or v.extent != t.extent or v.dtype != t.dtype:
            raise DslError(f"parameter {name!r} of {fn}: expected {t!r}, got {v!r}")


Tensor_ = core.Tensor
Tile_ = core.Tile


# -- decorated functions -----------------------------------------------------------------------

#: ``(kernel, args, kwargs) -> result``: runs a kernel called with host tensors outside any
#: emulator run (see the module docstring); None when nothing can.
host_dispatch: Callable[[Any, tuple, dict], Any] | None = None


class JITFunction:
    """A ``@pl.jit``-family function: calling it checks the arguments against the
    annotations and runs the (rewritten) Python body (see the module docstring)."""

    def __init__(self, fn: Callable, kind: str, auto_scope: bool = True, level: Any = None
                 ) -> None:
        self.fn = rewrite(fn)
        self.kind = kind
        self.auto_scope = auto_scope
        self.level = level
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__module__ = fn.__module__
        self._params: list[tuple[str, Any]] | None = None
        self._sig: inspect.Signature | None = None
        self._body: Callable | None = None

    def body(self) -> Callable:
        """The function to run: ``fn``, or where its body names ``self`` without defining it
        (``pl.spmd_submit(self.kernel, ...)`` in a ``@pl.jit`` function — pypto makes the
        function and the kernels it calls one ``@pl.program``, whose methods they become),
        ``fn`` with ``self`` bound to that program (:class:`JitProgram`)."""
        if self._body is None:
            fn = self.fn
            code = getattr(fn, "__code__", None)
            if code is not None and "self" in code.co_names and "self" not in fn.__globals__:
                scope = dict(fn.__globals__)
                scope["self"] = JitProgram(self.__name__, fn.__globals__)
                new = types.FunctionType(code, scope, fn.__name__, fn.__defaults__,
                                         fn.__closure__)
                new.__kwdefaults__ = fn.__kwdefaults__
                new.__dict__.update(getattr(fn, "__dict__", {}))
                fn = new
            self._body = fn
        return self._body

    def _param_names(self) -> list[str]:
        """The kernel's parameter names but ``self``, in order (pypto's ``JITFunction
        ._param_names``: mtp ``decode_fwd_mtp.py`` orders its specs by it)."""
        return [p for p in inspect.signature(self.__wrapped__).parameters if p != "self"]

    def _annotations(self) -> list[tuple[str, Any]]:
        if self._params is None:
            try:
                ann = inspect.get_annotations(self.__wrapped__, eval_str=True)
            except Exception:  # noqa: BLE001 - unevaluable string annotations: unchecked
                ann = dict(getattr(self.__wrapped__, "__annotations__", {}))
            self._sig = inspect.signature(self.fn)
            self._params = [(n, ann[n]) for n in self._sig.parameters if n in ann
                            and isinstance(_plain(ann[n]), TensorType | ScalarType | ArrayType)]
        return self._params

    def _check(self, rt: core.Run, args: tuple, kwargs: dict) -> None:
        params = self._annotations()
        if not params:
            return
        try:
            bound = self._sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.__name__}(): {e}") from None
        for name, t in params:
            if name in bound.arguments:
                try:
                    check_value(name, self.__name__, t, bound.arguments[name], rt)
                except DslError as e:  # say where the annotation is: nothing else will
                    code = getattr(self.fn, "__code__", None)
                    if code is None:
                        raise
                    raise DslError(f"{e} (the parameter of {code.co_filename}:"
                                   f"{code.co_firstlineno})") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:  # a HOST program's per-rank dispatch (lowering.tile.distributed)
            from lowering.tile import distributed

            return distributed.launch(self, args, kwargs)
        if self.kind == "extern":
            raise NotImplementedError(f"@pl.jit.extern kernel {self.__name__} (called at "
                                      f"{fmt_site(caller_site())}): an external C++ kernel is "
                                      "not emulated")
        if self.kind == "jit" and core.active() is None and _host_tensors(args, kwargs):
            return self._dispatch(args, kwargs)
        rt = core.current()
        rt.push_dyn()
        try:
            self._check(rt, args, kwargs)
        except BaseException:
            rt.pop_dyn()
            raise
        rt.calls.append(self)
        try:
            if self.kind == "incore" and rt.scope is None:
                with core.AtScope(Level.CORE_GROUP, self.__name__, caller_site(),
                                  new_task(self.__name__)):
                    return self.body()(*args, **kwargs)
            return self.body()(*args, **kwargs)
        finally:
            rt.calls.pop()
            rt.pop_dyn()

    def _dispatch(self, args: tuple, kwargs: dict) -> Any:
        """A host call (pypto: run on the device); ``config=`` is pypto's RunConfig."""
        if host_dispatch is None:
            raise NotImplementedError(
                f"{self.__name__} called with host tensors at {fmt_site(caller_site())}: "
                "running a kernel on a device is emulated only under `lowering run-kernel`")
        return host_dispatch(self, args, _without_config(kwargs))

    def compile(self, *args: Any, **kwargs: Any) -> CompiledProgram:
        """pypto's ``JITFunction.compile``: the program for these arguments' shapes (none:
        from the annotations); calling it dispatches the kernel like a host call."""
        self._annotations()
        kwargs = _without_config(kwargs)
        if args or kwargs:
            try:
                self._sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.__name__}.compile(): {e}") from None
        return CompiledProgram(self)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.__name__}.lower() (at {fmt_site(caller_site())}): "
                                  "pypto's IR is not emulated")

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return _Bound(self, obj)

    def __repr__(self) -> str:
        return f"<pl.jit{'' if self.kind == 'jit' else '.' + self.kind} {self.__name__}>"


class JitProgram:
    """``self`` in a ``@pl.jit`` body: the program pypto builds from the function and the
    kernels it calls, whose methods are the ``@pl.jit``-family functions of its module
    (``self.shared_routed`` is the module's ``shared_routed``)."""

    def __init__(self, owner: str, namespace: dict) -> None:
        self._owner = owner
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        value = self._namespace.get(name)
        if isinstance(value, JITFunction):
            return value
        raise AttributeError(f"self.{name} in @pl.jit {self._owner}: its module has no "
                             f"@pl.jit-family function {name!r} to be the program's method")


def _without_config(kwargs: dict) -> dict:
    """A call's keywords less ``config=`` (pypto's RunConfig, consumed by the JIT)."""
    return {k: v for k, v in kwargs.items() if k != "config"}


def _host_tensors(args: tuple, kwargs: dict) -> bool:
    """Whether a call passes torch tensors (a host call pypto runs on the device)."""
    return any(type(v).__module__.startswith("torch")
               for v in (*args, *kwargs.values()))


class CompiledProgram:
    """What ``JITFunction.compile`` returns: callable like the kernel (host dispatch), with an
    empty ``output_dir`` where pypto keeps the generated sources (there are none here)."""

    def __init__(self, jf: JITFunction) -> None:
        import tempfile

        self.function = jf
        self._dir = tempfile.TemporaryDirectory(prefix=f"pl_{jf.__name__}_")
        self.output_dir = self._dir.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function._dispatch(args, kwargs)

    def __repr__(self) -> str:
        return f"<compiled {self.function!r} (emulated)>"


class _Bound:
    """A JITFunction bound to an instance (a method)."""

    def __init__(self, jf: JITFunction, obj: Any) -> None:
        self.jf = jf
        self.obj = obj
        self.__name__ = jf.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.jf(self.obj, *args, **kwargs)


_UNSET = object()


class _Sub:
    """``@pl.jit.<kind>`` / ``@pl.jit.<kind>(...)``."""

    def __init__(self, kind: str, allow_level: bool = False, allow_auto_scope: bool = False
                 ) -> None:
        self.kind = kind
        self.allow_level = allow_level
        self.allow_auto_scope = allow_auto_scope

    def __call__(self, fn: Callable | None = None, *, level: Any = None,
                 auto_scope: Any = _UNSET) -> Any:
        if level is not None and not self.allow_level:
            raise TypeError(f"@pl.jit.{self.kind} does not accept a level= argument")
        if auto_scope is not _UNSET and not self.allow_auto_scope:
            raise TypeError(f"@pl.jit.{self.kind} does not accept an auto_scope= argument")
        a = True if auto_scope is _UNSET else bool(auto_scope)
        if fn is None:
            return lambda f: JITFunction(f, self.kind, a, level)
        return JITFunction(fn, self.kind, a, level)


class _Extern:
    def __call__(self, fn: Callable | None = None, **_kw: Any) -> Any:
        """``@pl.jit.extern(source=..., core_type=...)``: recorded; calling it raises."""
        if fn is None:
            return lambda f: JITFunction(f, "extern")
        return JITFunction(fn, "extern")


class Jit:
    """``pl.jit``: ``@pl.jit``, ``@pl.jit(auto_scope=False)``, ``.host``, ``.inline``,
    ``.incore``, ``.opaque``, ``.extern``."""

    def __init__(self) -> None:
        self.host = _Sub("host", allow_auto_scope=True)
        self.inline = _Sub("inline", allow_auto_scope=True)
        self.incore = _Sub("incore", allow_level=True)
        self.opaque = _Sub("opaque")
        self.extern = _Extern()

    def __call__(self, fn: Callable | None = None, *, auto_scope: bool = True) -> Any:
        if fn is None:
            return lambda f: JITFunction(f, "jit", bool(auto_scope))
        return JITFunction(fn, "jit", bool(auto_scope))


jit = Jit()

__all__ = ["ArrayAnnotation", "ArrayType", "Direction", "InOut", "JITFunction", "Jit", "Out",
           "Scalar", "ScalarType", "TASK_ID", "Tensor", "TensorType", "Tile", "check_value",
           "jit"]
