"""Array backends of the tile emulator.

A backend is an object with the methods of ``NumpyBackend`` (storage: ``native``,
``from_numpy``, ``to_numpy``, ``full``, ``scalar``, ``read``, ``write``, ``item``,
``reshape``, ``copy``; compute: ``binary``, ``unary``, ``row_reduce``, ``col_reduce``,
``matmul``, ``cast``, ``gather_last``, ``concat``, ``transpose``). Dtypes cross this interface
as names (``"FP32"``, ``"BF16"``, ...). The emulator does every array operation on tile and
tensor data through it; only its own bookkeeping (written/unread masks) is plain numpy.
"""

from __future__ import annotations

from typing import Any

from lowering.backends.numpy_backend import NumpyBackend

_BACKENDS: dict[str, Any] = {}


def get_backend(name: str | Any = "numpy") -> Any:
    """The backend called ``name`` ('numpy'), or ``name`` itself if it is a backend object."""
    if not isinstance(name, str):
        return name
    if name not in _BACKENDS:
        if name == "numpy":
            _BACKENDS[name] = NumpyBackend()
        else:
            raise ValueError(f"unknown tile backend {name!r} (available: 'numpy')")
    return _BACKENDS[name]


__all__ = ["NumpyBackend", "get_backend"]
