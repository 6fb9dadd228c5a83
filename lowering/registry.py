"""Stage name → hand-tiled kernel module (``lowering/kernels/<v32|v4>/<stage>.py``).

A kernel module defines, in this order: a docstring with the formula, shapes and rounding
points; a frozen ``Tiling`` dataclass; ``make_tiling(cfg, shapes) -> Tiling`` (derives the
tiling from the config and the region's tensor shapes, checking divisibility); the kernel
function, named after the stage, taking the region's tensors by name (stage inputs, then
outputs; in/out tensors once) and ``*, tiling``; and, for in/out tensors, ``owned_rows(cfg,
inputs) -> {name: rows}``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import dsref

PACKAGES = {"v32.decode_front": "lowering.kernels.v32", "v4.qkv_proj_rope": "lowering.kernels.v4"}


class Unsupported(Exception):
    """Raised by ``make_tiling`` when the config asks for semantics the kernel does not
    implement (a variant): the region then runs the reference and says why."""


@dataclass(frozen=True)
class Kernel:
    stage: str
    module: ModuleType

    @property
    def fn(self):
        return getattr(self.module, self.stage)

    @property
    def file(self) -> str:
        return self.module.__file__ or self.module.__name__

    def tiling(self, cfg: Any, shapes: dict[str, tuple[int, ...]]) -> Any:
        return self.module.make_tiling(cfg, shapes)

    def owned_rows(self, cfg: Any, inputs: dict) -> dict:
        fn = getattr(self.module, "owned_rows", None)
        return fn(cfg, inputs) if fn else {}


def kernel_for(model: str, stage: str) -> Kernel | None:
    """The kernel of ``stage`` in ``model``, or None when the stage has no kernel yet."""
    name = f"{PACKAGES[dsref.get_model(model).family]}.{stage}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise
    return Kernel(stage, module)


def kernels(model: str) -> dict[str, Kernel | None]:
    return {s: kernel_for(model, s) for s in dsref.get_model(model).stages}
