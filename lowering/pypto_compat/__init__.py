"""A ``pypto.language`` compatibility layer over the tile language, installed only for a run.

``with installed():`` puts :mod:`lowering.pypto_compat.language` into ``sys.modules`` as
``pypto.language`` (and a bare ``pypto`` package around it, with the import-only stubs of
:mod:`lowering.pypto_compat.stubs` for ``pypto.ir`` / ``runtime`` / ``backend`` /
``language.distributed``) and restores ``sys.modules``
exactly on exit, so the emulated module never outlives the run and never shadows a real
PyPTO install (``force=True``, the ``--emulate`` flag, installs it even then).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

from lowering.pypto_compat import language, stubs
from lowering.pypto_compat.language import (
    Direction,
    DynVar,
    JITFunction,
    ScalarType,
    TensorType,
    UnsupportedAPI,
)

_NAMES = ("pypto", "pypto.language", "pypto.ir", "pypto.ir.distributed_compiled_program",
          "pypto.ir.compiled_program", "pypto.ir.printer", "pypto.ir.pass_manager",
          "pypto.runtime", "pypto.backend", "pypto.language.distributed")
_MISSING = object()


def real_pypto_available() -> bool:
    """Whether the real ``pypto.language`` (hw-native-sys/pypto) imports. The PyPI package
    named ``pypto`` is a different framework without ``.language``, so the check imports
    ``pypto.language`` itself rather than ``pypto``."""
    if any(sys.modules.get(n) is language for n in _NAMES):
        return False  # our own module is installed right now
    try:
        if importlib.util.find_spec("pypto") is None:
            return False
        importlib.import_module("pypto.language")
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


class RealPyptoInstalled(RuntimeError):
    """The real pypto.language is importable and emulation was not forced."""


@contextlib.contextmanager
def installed(force: bool = False) -> Iterator[types.ModuleType]:
    """Install the emulated ``pypto.language`` for the body of the ``with``; yields it.

    Raises :class:`RealPyptoInstalled` when the real module is importable and ``force`` is
    false. ``sys.modules['pypto']`` / ``['pypto.language']`` are restored exactly afterwards.
    """
    if not force and real_pypto_available():
        raise RealPyptoInstalled(
            "the real pypto.language is installed; pass --emulate to run the file on the "
            "tile emulator instead")
    saved = {n: sys.modules.get(n, _MISSING) for n in _NAMES}
    pkg = types.ModuleType("pypto", "Emulated pypto package (lowering.pypto_compat).")
    pkg.__path__ = []  # a package, so `import pypto.language` resolves through sys.modules
    pkg.language = language
    sys.modules["pypto"] = pkg
    sys.modules["pypto.language"] = language
    for name, mod in stubs.modules().items():  # the rest of pypto, enough to import
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        if parent == "pypto":
            setattr(pkg, leaf, mod)
    language.distributed = sys.modules["pypto.language.distributed"]
    try:
        yield language
    finally:
        with contextlib.suppress(AttributeError):
            del language.distributed
        for n, m in saved.items():
            if m is _MISSING:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


__all__ = ["Direction", "DynVar", "JITFunction", "RealPyptoInstalled", "ScalarType",
           "TensorType", "UnsupportedAPI", "installed", "language", "real_pypto_available"]
