"""On-chip buffer budgets of a model's kernels: per scope and memory space, against the
platform limits, and how they grow with the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dsref
from lowering import pipeline
from lowering.report import Report
from lowering.tile import LIMITS


@dataclass(frozen=True)
class BudgetRow:
    region: str
    scope: str
    space: str
    shape: int  # bytes, shape-reuse model
    peak: int  # bytes, peak-live model
    limit: int

    @property
    def over(self) -> bool:
        return self.shape > self.limit


def budget_rows(report: Report, platform: str) -> list[BudgetRow]:
    """Every (region, scope, space) of a diff report, for ``platform``."""
    return [BudgetRow(region=r.name, scope=row["scope"], space=row["space"],
                      shape=row[f"shape_{platform}"], peak=row[f"peak_{platform}"],
                      limit=LIMITS[platform][row["space"]])
            for r in report.regions for row in r.budget]


def measure(model: str, cfg: Any, *, batch: int, seq: int = 1, seed: int = 0,
            platform: str = "a2a3") -> list[BudgetRow]:
    """Run every kernel of ``model`` once (isolated) and return its budget rows."""
    ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=seed)
    return budget_rows(pipeline.diff(model, cfg, ins, platform=platform), platform)


def growth(model: str, cfg: Any, batches: list[int], *, seq: int = 1, platform: str = "a2a3",
           space: str = "Vec") -> dict[str, list[int]]:
    """Shape-model bytes of ``space`` per scope, for each batch size in ``batches``."""
    out: dict[str, list[int]] = {}
    for i, b in enumerate(batches):
        for row in measure(model, cfg, batch=b, seq=seq, platform=platform):
            if row.space == space:
                out.setdefault(row.scope, [0] * len(batches))[i] = row.shape
    return out


def plot_rows(ax: Any, rows: list[BudgetRow], title: str) -> None:
    """Horizontal bars: each scope × space as a percentage of its limit (shape and peak)."""
    import numpy as np

    labels = [f"{r.scope} · {r.space}" for r in rows]
    y = np.arange(len(rows))
    shape = [100 * r.shape / r.limit for r in rows]
    peak = [100 * r.peak / r.limit for r in rows]
    ax.barh(y + 0.2, shape, height=0.4, color=["#e63946" if r.over else "#457b9d" for r in rows],
            label="shape reuse")
    ax.barh(y - 0.2, peak, height=0.4, color="#a8dadc", label="peak live")
    ax.axvline(100, color="black", lw=1, ls="--")
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("% of the per-core limit")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
