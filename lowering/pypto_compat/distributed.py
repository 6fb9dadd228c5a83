"""The emulated ``pypto.language.distributed`` (``pld``), installed with the emulated
``pypto.language`` for a run (:func:`lowering.pypto_compat.installed`).

The ops and the runtime are :mod:`lowering.tile.distributed` (a host program's ranks run as
threads of the tile emulator); this module is the surface a pypto-lib file sees:
``pld.DistributedTensor[[shape], dtype]`` annotations (checked like ``pl.Tensor``), the enums
``pld.NotifyOp`` / ``WaitCmp`` / ``AtomicType`` / ``ReduceOp``, ``pld.CommCtx``, the
``pld.system`` / ``pld.tensor`` / ``pld.tile`` namespaces and the short forms
(``pld.alloc_window_buffer``, ``pld.window``, ``pld.world_size``, ``pld.remote_load``,
``pld.remote_store``, ...). Any other name raises
:class:`~lowering.pypto_compat.language.UnsupportedAPI` naming ``pld.<name>`` and the line.
"""

from __future__ import annotations

from typing import Any

from lowering.pypto_compat import language as _pl
from lowering.pypto_compat.language import UnsupportedAPI, _site
from lowering.tile.distributed import (  # noqa: F401  (pld names)
    AtomicType,
    CommCtx,
    NotifyOp,
    ReduceOp,
    WaitCmp,
    alloc_window_buffer,
    get_comm_ctx,
    nranks,
    rank,
    remote_load,
    remote_store,
    system,
    tensor,
    tile,
    window,
    world_size,
)

_TensorMeta = type(_pl.Tensor)


class _DistributedTensorMeta(_TensorMeta):
    """``pld.DistributedTensor[...]``: ``pl.Tensor``'s subscript forms; a trailing
    ``"window_buffer=<name>"`` marker (pypto's pass dumps) is dropped."""

    def __getitem__(cls, item: Any) -> Any:
        if isinstance(item, tuple) and item and isinstance(item[-1], str) \
                and item[-1].startswith("window_buffer="):
            item = item[:-1]
        return super().__getitem__(item)


class DistributedTensor(metaclass=_DistributedTensorMeta):
    """``pld.DistributedTensor[[1, SIZE], pl.FP32]``: a window-bound tensor parameter."""


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise UnsupportedAPI(f"pld.{name} (pypto.language.distributed) is not emulated (used at "
                         f"{_site(2)})")


__all__ = ["AtomicType", "CommCtx", "DistributedTensor", "NotifyOp", "ReduceOp", "WaitCmp",
           "alloc_window_buffer", "get_comm_ctx", "nranks", "rank", "remote_load",
           "remote_store", "system", "tensor", "tile", "window", "world_size"]
