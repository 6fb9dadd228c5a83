"""Exploring the semantics on data: how much a variant moves each output, in bf16 ulps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dsref.config import Config, with_variants
from dsref.model import get_model
from dsref.run import run


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place of the storage format (bf16/fp16/fp32; integers:
    |Δ|), −0.0 == +0.0. Both arrays share a dtype."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu":
        return np.abs(a.astype(np.int64) - b.astype(np.int64))
    width = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    sign = 1 << (8 * a.dtype.itemsize - 1)
    x = np.ascontiguousarray(a).view(width).astype(np.int64)
    y = np.ascontiguousarray(b).view(width).astype(np.int64)
    x = np.where(x < 0, -(x + sign), x)
    y = np.where(y < 0, -(y + sign), y)
    return np.abs(x - y)


@dataclass(frozen=True)
class Movement:
    """How one output moved between two semantics."""

    output: str
    dtype: str
    elements: int
    moved: int  # elements whose bits differ
    max_ulp: int
    histogram: dict[int, int]  # ulp distance → count, for moved elements

    @property
    def fraction(self) -> float:
        return self.moved / self.elements if self.elements else 0.0


def variant_effect(model: str, cfg: Config, inputs: Mapping[str, np.ndarray],
                   **variant: Any) -> list[Movement]:
    """Run ``model`` under ``cfg`` and under ``cfg`` with ``variant`` applied; per output, how
    many elements moved and by how many ulps."""
    base = run(model, cfg, inputs)
    other = run(model, with_variants(cfg, **variant), inputs)
    out = []
    for name in get_model(model).output_specs(cfg, 1):
        a, b = base[name], other[name]
        if a.dtype != b.dtype:
            a, b = a.astype(np.float32), b.astype(np.float32)
        d = ulps(a, b)
        moved = d[d > 0]
        values, counts = np.unique(moved, return_counts=True)
        out.append(Movement(output=name, dtype=a.dtype.name, elements=int(d.size),
                            moved=int(moved.size), max_ulp=int(d.max()) if d.size else 0,
                            histogram={int(v): int(c) for v, c in zip(values, counts, strict=True)}))
    return out


def movement_table(rows: list[Movement]) -> str:
    """A Markdown table of :func:`variant_effect` rows."""
    lines = ["| output | dtype | moved | of | % | max ulp | ulp histogram |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        hist = ", ".join(f"{k}: {v}" for k, v in list(r.histogram.items())[:6])
        lines.append(f"| {r.output} | {r.dtype} | {r.moved} | {r.elements} | {100 * r.fraction:.2f} "
                     f"| {r.max_ulp} | {hist} |")
    return "\n".join(lines)
