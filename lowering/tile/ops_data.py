"""Op rules and pl names of the 'data' group (see lowering.tile.surface)."""

from __future__ import annotations
