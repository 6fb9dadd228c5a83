"""Array backends of the tile emulator.

A backend is an object with the methods of ``NumpyBackend`` (storage: ``native``,
``from_numpy``, ``to_numpy``, ``full``, ``scalar``, ``read``, ``write``, ``item``,
``reshape``, ``copy``; compute: ``binary``, ``unary``, ``row_reduce``, ``col_reduce``,
``matmul``, ``cast``, ``gather_last``, ``concat``, ``transpose``). Dtypes cross this interface
as names (``"FP32"``, ``"BF16"``, ...). The emulator does every array operation on tile and
tensor data through it; only its own bookkeeping (written/unread masks) is plain numpy.

``NumpyBackend`` (numpy + ml_dtypes, cpu) is the default; ``TorchBackend`` runs the same ops on
torch tensors on cpu / cuda / npu with the same numerics (``torch_backend``). docs/backends.md
says where each was last run.
"""

from __future__ import annotations

from typing import Any

from lowering.backends._torch import DeviceUnavailable, TorchUnavailable
from lowering.backends.numpy_backend import NumpyBackend

BACKENDS = ("numpy", "torch")
_BACKENDS: dict[tuple[str, str | None], Any] = {}


def get_backend(name: str | Any = "numpy", device: str | None = None) -> Any:
    """The backend called ``name`` on ``device``, or ``name`` itself if it is a backend object.

    ``name``: 'numpy' (cpu only) or 'torch'; the device may also be written into the name
    ('torch:cuda:1'). ``device``: 'cpu' (default), 'cuda[:N]', 'npu[:N]' (torch only).
    Raises :class:`TorchUnavailable` (an ImportError, one line) when torch / torch_npu cannot
    be imported and :class:`DeviceUnavailable` (a ValueError, one line) when the device is
    absent; both are exit 2 on the command line.
    """
    if not isinstance(name, str):
        return name
    base, _, dev_in_name = name.partition(":")
    dev = device or dev_in_name or None
    if base == "numpy":
        if dev not in (None, "cpu"):
            raise DeviceUnavailable(f"--device {dev}: the numpy backend runs on cpu only")
        dev = None
    elif base == "torch":
        dev = (dev or "cpu").lower()
    else:
        raise ValueError(f"unknown tile backend {name!r} (available: {', '.join(BACKENDS)})")
    key = (base, dev)
    if key not in _BACKENDS:
        if base == "numpy":
            _BACKENDS[key] = NumpyBackend()
        else:
            from lowering.backends.torch_backend import TorchBackend

            _BACKENDS[key] = TorchBackend(dev)
    return _BACKENDS[key]


__all__ = ["BACKENDS", "DeviceUnavailable", "NumpyBackend", "TorchUnavailable", "get_backend"]
