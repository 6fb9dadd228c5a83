"""The rest of the ``pypto`` package as pypto-lib files import it, for an emulated run.

pypto-lib kernel files import more than ``pypto.language``: ``pypto.ir``'s
``DistributedConfig`` (into ``compile_cfg``), ``pypto.runtime``'s ``RunConfig``,
``pypto.backend``'s ``BackendType`` / ``set_backend_type``, and
``pypto.language.distributed`` (``pld``, emulated: :mod:`lowering.pypto_compat.distributed`).
The other modules let such a file *import*; what they stand for is not emulated, so:

- configuration records (``DistributedConfig``, ``RunConfig``) keep their keyword arguments
  (the harness runs a ``compile_cfg`` distributed program on ``len(device_ids)`` ranks);
- ``set_backend_type`` is accepted: it picks the compiler's target, which the emulator does
  not have;
- ``pypto.runtime.TensorSpec`` / ``ScalarSpec`` are spec records like pypto's own, classes
  apart from ``golden``'s (pypto-lib's ``golden.run`` makes no input for them; the harness
  reports such a spec as the file's defect);
- every other name raises :class:`~lowering.pypto_compat.language.UnsupportedAPI` when it is
  *used* (called, subscripted, or read as an attribute), naming it and the file's line: a
  CANNOT RUN with its construct named, never a silent run.
"""

from __future__ import annotations

import enum
import types
from typing import Any

from lowering.pypto_compat.language import UnsupportedAPI, _site


class Record:
    """A configuration object: its keyword arguments, kept as attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        kv = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({kv})"


class DistributedConfig(Record):
    """``pypto.ir.distributed_compiled_program.DistributedConfig``: a multi-device program."""


class RunConfig(Record):
    """``pypto.runtime.RunConfig``: compile and run settings."""


class BackendType(enum.Enum):
    Ascend910B = "Ascend910B"
    Ascend950 = "Ascend950"
    SuperscalarNPU = "SuperscalarNPU"
    DEFAULT = "DEFAULT"


def set_backend_type(_backend: Any) -> None:
    """The compiler's target: nothing to do on the emulator."""


class _Unsupported:
    """A name whose use is not emulated: calling, subscripting or reading it raises."""

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def _raise(self) -> None:
        what = " (pypto.language.distributed: multi-device)" if self._qualname.startswith("pld") \
            else ""
        raise UnsupportedAPI(f"{self._qualname}{what} is not emulated (used at {_site(3)})")

    def __call__(self, *_a: Any, **_k: Any) -> Any:
        self._raise()

    def __getitem__(self, _item: Any) -> Any:
        self._raise()

    def __getattr__(self, item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unsupported(f"{self._qualname}.{item}")


def _module(name: str, doc: str, known: dict[str, Any], what: str,
            lazy: dict[str, Any] | None = None) -> types.ModuleType:
    """A stub module: ``known`` names, ``lazy`` names (made on first use by a no-argument
    function: they need torch), and :class:`_Unsupported` for every other name."""
    m = types.ModuleType(name, doc)
    m.__dict__.update(known)

    def getattr_(item: str) -> Any:
        if item.startswith("__"):
            raise AttributeError(item)
        if lazy and item in lazy:
            return lazy[item]()
        return _Unsupported(f"{what}.{item}")

    m.__getattr__ = getattr_  # type: ignore[attr-defined]
    return m


def _from_golden(name: str) -> Any:
    """A no-argument function returning ``lowering.pypto_compat.golden.<name>`` (which
    imports torch, so only when a file uses it)."""

    def get() -> type:
        from lowering.pypto_compat import golden

        return getattr(golden, name)

    return get


def _distributed() -> types.ModuleType:
    from lowering.pypto_compat import distributed

    return distributed


def modules() -> dict[str, types.ModuleType]:
    """The stub modules by their import name (``pypto.language`` itself is not among them)."""
    ir = _module("pypto.ir", "Stub of pypto.ir.", {}, "pypto.ir")
    dcp = _module("pypto.ir.distributed_compiled_program", "Stub.",
                  {"DistributedConfig": DistributedConfig},
                  "pypto.ir.distributed_compiled_program")
    ir.distributed_compiled_program = dcp
    out = {
        "pypto.ir": ir,
        "pypto.ir.distributed_compiled_program": dcp,
        "pypto.runtime": _module("pypto.runtime", "Stub.", {"RunConfig": RunConfig},
                                 "pypto.runtime", lazy={"TensorSpec": _from_golden("RuntimeTensorSpec"),
                                                        "ScalarSpec": _from_golden("RuntimeScalarSpec")}),
        "pypto.backend": _module("pypto.backend", "Stub.",
                                 {"BackendType": BackendType,
                                  "set_backend_type": set_backend_type}, "pypto.backend"),
        "pypto.language.distributed": _distributed(),  # emulated: lowering.tile.distributed
    }
    for sub in ("compiled_program", "printer", "pass_manager"):
        m = _module(f"pypto.ir.{sub}", "Stub.", {}, f"pypto.ir.{sub}")
        setattr(ir, sub, m)
        out[f"pypto.ir.{sub}"] = m
    return out
