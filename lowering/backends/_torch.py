"""Guarded ``torch`` import and device parsing for the torch backend.

``torch_npu`` registers itself through torch's device-backend autoload: once installed, a
plain ``import torch`` imports it too, and without a usable CANN toolkit that import fails
with a long traceback from deep inside ``torch_npu``. For cpu / cuda devices autoload is
switched off before torch is first imported (``TORCH_DEVICE_BACKEND_AUTOLOAD=0``, unless the
user set it), and ``npu`` imports ``torch_npu`` explicitly. Every failure becomes one line.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

_NPU_HINTS = ("torch_npu", "cann", "libascend", "ascend", "libhccl", "acl")


class TorchUnavailable(ImportError):
    """torch (or torch_npu) cannot be imported; the message is one line."""


class DeviceUnavailable(ValueError):
    """The requested device does not exist on this host; the message is one line."""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _looks_like_npu(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(h in text for h in _NPU_HINTS)


def import_torch(*, npu: bool = False) -> Any:
    """``torch`` (and ``torch_npu`` imported when ``npu``), or :class:`TorchUnavailable`."""
    if not npu and "torch" not in sys.modules:
        os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    try:
        import torch
    except Exception as e:  # ImportError, OSError, RuntimeError from a broken torch_npu
        if _looks_like_npu(e):
            raise TorchUnavailable(
                "importing torch failed because torch_npu is installed but CANN is not usable "
                f"(device-backend autoload); source CANN's set_env.sh or set "
                f"TORCH_DEVICE_BACKEND_AUTOLOAD=0: {type(e).__name__}: {_first_line(e)}"
            ) from None
        raise TorchUnavailable(
            f"the torch backend needs torch (pip install torch): {type(e).__name__}: "
            f"{_first_line(e)}"
        ) from None
    if npu:
        try:
            import torch_npu  # noqa: F401  (registers the 'npu' device)
        except Exception as e:
            why = "is not installed" if isinstance(e, ModuleNotFoundError) else (
                "failed to import (is CANN installed and set_env.sh sourced?)")
            raise TorchUnavailable(
                f"--device npu needs torch_npu, which {why}: {type(e).__name__}: {_first_line(e)}"
            ) from None
    return torch


_DEVICE = re.compile(r"^(cpu|cuda|npu)(?::(\d+))?$")


def parse_device(spec: str | None) -> tuple[str, int | None]:
    """'cpu' | 'cuda' | 'cuda:1' | 'npu' | 'npu:0' → (type, index or None)."""
    m = _DEVICE.match((spec or "cpu").strip().lower())
    if m is None:
        raise DeviceUnavailable(f"--device {spec!r}: expected cpu, cuda[:N] or npu[:N]")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def open_device(spec: str | None) -> tuple[Any, Any]:
    """(torch, torch.device) for ``spec``, checked to exist: :class:`DeviceUnavailable`."""
    kind, index = parse_device(spec)
    torch = import_torch(npu=kind == "npu")
    if kind == "cpu":
        if index not in (None, 0):
            raise DeviceUnavailable(f"--device {spec}: there is only one cpu device")
        return torch, torch.device("cpu")
    mod = getattr(torch, kind, None)
    avail = bool(mod is not None and mod.is_available())
    count = int(mod.device_count()) if avail else 0
    if not avail or count == 0:
        raise DeviceUnavailable(f"--device {spec}: no {kind} device is available on this host "
                                f"(torch {torch.__version__})")
    if index is not None and index >= count:
        raise DeviceUnavailable(f"--device {spec}: only {count} {kind} device(s) "
                                f"({kind}:0..{kind}:{count - 1})")
    return torch, torch.device(kind, 0 if index is None else index)
