"""Plots of a diff (the ``plot`` extra, matplotlib): error per region, and a heatmap of bf16-ulp
error per head × token.

``write_plots(reports, path)`` writes one PNG (or PDF/SVG by extension) with, per report, a
bar chart of every output's max ulp and differing fraction per region, and a heatmap of the
share of elements off by at least one bf16 ulp per (token, head) of the model's headed output
(V3.2 ``q_pe_out``, V4 ``q``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dsref
from dsref.explore import ulps
from lowering.report import REFERENCE, Report

HEADED = {"v32.decode_front": ("q_rope", "q_pe_out"), "v4.qkv_proj_rope": ("q_head_rms_rope", "q")}


class PlotExtraMissing(ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotExtraMissing(
            "plots need matplotlib: pip install 'dsref[plot]' (or: pip install matplotlib)"
        ) from e
    return plt


def head_token_ulps(report: Report) -> np.ndarray | None:
    """bf16 ulp error of the model's headed output as ``[token, head, element]``, or None
    when the region has no kernel output."""
    stage, out = HEADED[report.model]
    r = next((r for r in report.regions if r.name == stage), None)
    if r is None or out not in r.values:
        return None
    got, want = (np.asarray(a) for a in r.values[out])
    heads = dsref.config(report.config).heads
    return ulps(got, want).reshape(got.shape[0], heads, -1)


def plot_regions(ax: Any, report: Report) -> None:
    """Bars: max ulp per region output (log scale), annotated with the differing %."""
    labels, ulps, differ, colors = [], [], [], []
    for r in report.regions:
        if r.status == REFERENCE:
            labels.append(f"{r.name}\n(reference)")
            ulps.append(0)
            differ.append(0.0)
            colors.append("#bbbbbb")
            continue
        for o in r.outputs:
            label = f"{r.name}\n{o.name}" if len(r.outputs) > 1 else r.name
            labels.append(label if o.dtype == "bfloat16" else f"{label} ({o.dtype})")
            ulps.append(max(o.max_ulp, 0))
            differ.append(o.differ_ratio)
            colors.append("#2a9d8f" if o.ok else "#e63946")
    x = np.arange(len(labels))
    ax.bar(x, np.asarray(ulps) + 1, color=colors)  # +1: zero error still shows on a log axis
    ax.set_yscale("log")
    ax.set_ylabel("max ulp + 1 (log; of each output's own format)")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    for xi, u, d in zip(x, ulps, differ, strict=True):
        ax.annotate(f"{100 * d:.2f}%", (xi, u + 1), ha="center", va="bottom", fontsize=6)
    ax.set_title(f"{report.model} [{report.config}, {report.mode}]: {report.verdict}\n"
                 "bar = max ulp per output, label = % elements differing", fontsize=9)


def plot_heatmap(ax: Any, fig: Any, report: Report) -> None:
    ulps = head_token_ulps(report)
    stage, out = HEADED[report.model]
    if ulps is None:
        ax.text(0.5, 0.5, f"{stage}: no kernel output", ha="center", va="center")
        ax.set_axis_off()
        return
    # the share of elements off, not the max ulp: a value crossing zero is thousands of ulps
    # away from its neighbour across zero and would drown every other cell
    grid = 100 * (ulps > 0).mean(axis=-1)
    im = ax.imshow(grid.T, aspect="auto", cmap="magma", interpolation="nearest",
                   vmin=0, vmax=max(1.0, float(grid.max())))
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, label="% of the head's elements off (≥ 1 ulp)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token" if report.model.startswith("v4") else "batch entry")
    ax.set_ylabel("head")
    ax.set_title(f"{stage}.{out}: elements off per head × token (worst {int(ulps.max())} ulp)",
                 fontsize=9)


def write_plots(reports: list[Report], path: str) -> str:
    """Write the per-region error chart and the ulp heatmaps of ``reports`` to ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(reports), 2, figsize=(14, 4.8 * len(reports)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for row, rep in zip(axes, reports, strict=True):
        plot_regions(row[0], rep)
        plot_heatmap(row[1], fig, rep)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
