"""Op rules and pl names of the 'index' group (see lowering.tile.surface)."""

from __future__ import annotations
