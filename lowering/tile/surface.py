"""Names of the ``pl`` surface added by op-group modules (``lowering/tile/ops_*.py``).

A group module defines its op rules (``@ops.rule``) and the ``pl`` functions that call them,
and exports each function under the namespaces where pypto has it::

    @export("sort32", spaces=("pl", "tensor", "tile"))
    def sort32(src, idx): ...

``lowering.tile.pl`` (and through it the emulated ``pypto.language``) resolves a name it does
not define itself here, so each group stays in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

SPACES = ("pl", "tensor", "tile")
EXTRA: dict[str, dict[str, Any]] = {s: {} for s in SPACES}


def export(*names: str, spaces: Iterable[str] = SPACES) -> Callable[[Any], Any]:
    """Register the decorated object as ``pl.<name>`` / ``pl.tensor.<name>`` /
    ``pl.tile.<name>`` for each of ``names`` (default: the object's ``__name__``) in each of
    ``spaces``."""

    def deco(obj: Any) -> Any:
        for space in spaces:
            if space not in EXTRA:
                raise ValueError(f"unknown pl namespace {space!r} (known: {SPACES})")
            for n in names or (obj.__name__,):
                EXTRA[space][n] = obj
        return obj

    return deco


def lookup(space: str, name: str) -> Any:
    """The object exported as ``name`` in ``space``; AttributeError if none."""
    try:
        return EXTRA[space][name]
    except KeyError:
        raise AttributeError(name) from None
