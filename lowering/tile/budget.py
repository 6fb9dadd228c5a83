"""On-chip memory budgets per in-core scope, memory space and platform.

Memory-space model (decided when the scope entry ends, from how each buffer was used):
- a tile produced by a vector op, ``pl.full`` or ``pl.create_tensor`` in a scope: **Vec**;
- a tile loaded from GM (subscript / ``pl.slice``), or a value crossing in from another
  scope: **Vec** if any vector op reads it (or nothing does); a load read only by the cube
  does not occupy Vec;
- a matmul lhs additionally occupies **Mat** + **Left**, an rhs **Mat** + **Right** (GM ->
  L1 -> L0A/L0B). L1 holds the whole operand for its lifetime; L0A/L0B only during each
  matmul that reads it, at most the L0 capacity (pypto's AutoTileMatmulL0 cuts an L1 operand
  into L0 panels that fit, extracts each right before its MAD, and MemoryReuse lets the
  panels of successive matmuls share the L0 slot);
- a ``matmul`` result is an **Acc** tile; ``matmul_acc`` accumulates in place (same buffer);
  ``pl.reshape`` and ``pl.assemble`` into a tile reuse their input's buffer;
- a tile the kernel places (``pl.load(target_memory=...)``, ``pl.create_tile``,
  ``pl.create_l1``, ``pl.move``; ``Buf.origin`` '<kind>@<space>') lives in that space: Left /
  Right only there; Mat plus Left / Right when the cube reads it (the implied move) and Vec
  when a vector op does; Vec as a Vec tile above;
- ``row_sum``/``row_max``/``row_min`` need a scratch Vec tile ``[R, max(C,128)]`` fp32 live
  during the op (none when the kernel passes ``tmp_tile``).

Scopes: each ``pl.at`` in-core execution, each ``pl.spmd`` block (named by ``name_hint``),
each ``@pl.jit.incore`` call, and one run-wide entry for tiles made outside all of them
(``core.OUTSIDE``); a scope run many times reports its worst entry.

Lifetime: a buffer is live from the op that creates it to the last op, in the same scope
entry, that reads it (the compiler's last-use rule; Python reference counting would keep a
loop-carried variable alive into the next iteration). Each op k has a read instant 2k and a
write instant 2k+1: inputs are live until 2k, outputs from 2k+1, so an op may write its
result over an operand it is the last reader of (vector ops run in place); a reduction's
scratch is live over [2k, 2k+1]. Tiles loaded from GM inside a ``pl.pipeline(stage=F)``
loop of the scope count F times (ping-pong copies).

Calibration: on the pypto-lib PR #332 V4 qkv_proj_rope kernel (FLASH dims, T = 128) this
model gives attn_norm 165.0 KiB, q_head_rms_rope 220.5 / 110.2 KiB and kv_rms 205.1 /
102.9 KiB without / with RMS_T_TILES = 2 (shape model) against the ≈162, 217 / 109 and
202 / 101 KiB published lifetime-model estimates.

A tile nothing reads (e.g. a ``pl.create_tensor`` placeholder rebound before use) takes no
space: the compiler removes it.

Bytes: Vec ``rows × roundup(cols·size, 32)`` rounded up to 128 (rows = product of all but the
last dim); cube tiles ``roundup(rows, 16) × roundup(cols·size, 32)``, a2a3 int32
accumulators ``roundup(rows, 32)`` rows.

Reuse models (both reported): **shape** — a buffer is reused only by a later tile of identical
shape, dtype and space whose lifetime does not overlap (per key: the maximum number of
simultaneously live tiles × bytes, summed over keys); **peak** — the maximum over time of the
bytes of simultaneously live tiles. Left / Right report the peak under both models (an L0
slot takes cube inputs of any shape). A scope run many times (inside loops) reports its worst
entry.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KIB = 1024
PLATFORMS = ("a2a3", "a5")
SPACES = ("Vec", "Mat", "Left", "Right", "Acc")
LIMITS = {
    "a2a3": {"Vec": 184 * KIB, "Mat": 512 * KIB, "Left": 64 * KIB, "Right": 64 * KIB,
             "Acc": 128 * KIB},
    "a5": {"Vec": 240 * KIB, "Mat": 512 * KIB, "Left": 64 * KIB, "Right": 64 * KIB,
           "Acc": 256 * KIB},
}


def _up(x: int, m: int) -> int:
    return -(-x // m) * m


@functools.lru_cache(maxsize=4096)
def tile_bytes(space: str, shape: tuple[int, ...], itemsize: int, is_int: bool,
               platform: str) -> int:
    """Bytes one tile of ``shape`` occupies in ``space`` (see module docstring)."""
    cols = shape[-1] if shape else 1
    rows = 1
    for d in shape[:-1]:
        rows *= d
    row_bytes = _up(cols * itemsize, 32)
    if space == "Vec":
        return _up(rows * row_bytes, 128)
    row_align = 32 if (space == "Acc" and is_int and platform == "a2a3") else 16
    return _up(rows, row_align) * row_bytes


def buf_spaces(buf: Any) -> list[str]:
    kind, _, placed = buf.origin.partition("@")  # '<kind>@<space>': placed by the kernel
    if placed in ("Left", "Right"):
        return [placed]
    spaces = []
    if kind == "acc" or placed == "Acc":
        spaces.append("Acc")
        if buf.left or buf.right:
            spaces.append("Mat")
    elif placed == "Mat":  # a vector op reads it through a Vec copy
        spaces.extend(["Mat", "Vec"] if buf.vec else ["Mat"])
    else:
        if kind in ("op", "scratch") or placed == "Vec" or buf.vec or not (buf.left or
                                                                           buf.right):
            spaces.append("Vec")
        if buf.left or buf.right:
            spaces.append("Mat")
    if buf.left:
        spaces.append("Left")
    if buf.right:
        spaces.append("Right")
    return spaces


def _describe(buf: Any, nbytes: int, count: int = 1) -> str:
    shp = ",".join(map(str, buf.shape))
    mult = f" ×{count}" if count > 1 else ""
    pipe = f" (pipeline ×{buf.mult})" if buf.mult > 1 else ""
    site = f"{os.path.basename(buf.site[0])}:{buf.site[1]}"
    return f"{buf.dtype.name}[{shp}] {nbytes} B{mult}{pipe} from {site}"


def _sweep(start: np.ndarray, last: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Events ``(start, +delta)`` and ``(last, −delta)`` in time order, starts before ends at
    equal times (then by delta, then buffer): the running total after each event and the
    event order."""
    n = start.size
    t = np.concatenate([start, last])
    kind = np.repeat(np.array([0, 1]), n)
    d = np.concatenate([delta, -delta])
    order = np.lexsort((np.tile(np.arange(n), 2), d, kind, t))
    return np.cumsum(d[order]), order


def measure(bufs: list[Any], platform: str) -> dict[str, tuple[int, int, list[str], list[str]]]:
    """space -> (shape-model bytes, peak bytes, top shape-model keys, largest tiles at peak)."""
    per_space: dict[str, list] = {}
    kinds: dict[tuple, list[tuple[str, int]]] = {}  # what places a buffer -> (space, bytes)
    for b in bufs:
        if b.last == b.start and b.origin != "scratch":
            continue  # never read: dead code the compiler drops
        kind = (b.shape, b.dtype.name, b.mult, b.origin, bool(b.left), bool(b.right),
                bool(b.vec))
        placed = kinds.get(kind)
        if placed is None:
            placed = kinds[kind] = [
                (sp, tile_bytes(sp, b.shape, b.dtype.itemsize, b.dtype.is_int, platform)
                 * b.mult) for sp in buf_spaces(b)]
        for sp, nb in placed:
            if sp in ("Left", "Right") and b.cuses and not b.origin.endswith(sp):
                # AutoTileMatmulL0 slices an L1 operand into L0 panels that fit, extracted
                # right before each matmul and free after it (MemoryReuse aliases the panels
                # of successive matmuls: L0B peak = max(QK, PV), not the sum); a tile the
                # kernel places in Left / Right itself is not cut: whole, whole lifetime
                cut = min(nb, LIMITS[platform][sp])
                per_space.setdefault(sp, []).extend((b, cut, t, t + 1) for t in b.cuses)
            else:
                per_space.setdefault(sp, []).append((b, nb, b.start, b.last))
    out = {}
    for sp, items in per_space.items():
        n = len(items)
        start = np.fromiter((t[2] for t in items), np.int64, n)
        last = np.fromiter((t[3] for t in items), np.int64, n)
        nbytes = np.fromiter((t[1] for t in items), np.int64, n)
        # peak: the first start event at which the live bytes are largest; live there = the
        # buffers whose start event is at or before it and whose end event is after it
        total, order = _sweep(start, last, nbytes)
        at_start = np.where(order < n, total, -1)
        p = int(np.argmax(at_start))
        peak = int(at_start[p])
        pos = np.empty(2 * n, np.int64)
        pos[order] = np.arange(2 * n)
        peak_live = np.nonzero((pos[:n] <= p) & (pos[n:] > p))[0]
        # shape: per key, the most tiles live at once
        groups: dict[tuple, list[int]] = {}
        for k, t in enumerate(items):
            groups.setdefault((t[0].shape, t[0].dtype.name, t[0].mult), []).append(k)
        shape_total = 0
        keys = []
        for members in groups.values():
            idx = np.asarray(members)
            m = int(_sweep(start[idx], last[idx], np.ones(idx.size, np.int64))[0].max())
            b, nb = items[members[0]][:2]
            shape_total += m * nb
            keys.append((m * nb, b, nb, m))
        if sp in ("Left", "Right"):
            # L0A / L0B slots are shared by cube inputs of any shape (pypto issue #1595):
            # the per-shape sum would count each matmul's panel separately
            shape_total = peak
        keys.sort(key=lambda t: -t[0])
        top_keys = [_describe(b, nb, m) for _, b, nb, m in keys[:5]]
        top_peak = sorted((items[k] for k in peak_live.tolist()), key=lambda t: -t[1])[:5]
        out[sp] = (shape_total, peak, top_keys, [_describe(t[0], t[1]) for t in top_peak])
    return out


@dataclass
class SpaceUsage:
    """Worst use of one memory space by one scope, per platform and reuse model."""

    scope: str
    space: str
    shape: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    where: dict[str, tuple] = field(default_factory=dict)  # platform -> loop indices (shape max)
    top: dict[str, list[str]] = field(default_factory=dict)  # platform -> largest shape keys
    peak_top: dict[str, list[str]] = field(default_factory=dict)  # platform -> live at peak

    def limit(self, platform: str) -> int:
        return LIMITS[platform][self.space]

    def over(self, platform: str, model: str = "shape") -> bool:
        used = self.shape if model == "shape" else self.peak
        return used.get(platform, 0) > self.limit(platform)


def _signature(bufs: list) -> tuple:
    """What :func:`measure` depends on, with times relative to the entry's first buffer: two
    entries with equal signatures measure the same. One tuple per buffer, built without a
    generator per buffer (an entry of a long ``pl.range`` holds one buffer per op), and with
    the dtype's name: hashing and comparing the DType dataclass are Python calls, 4x the time."""
    t0 = min([b.start for b in bufs])
    return tuple([(b.shape, b.dtype.name, b.origin, b.vec, b.left, b.right, b.mult, b.site,
                   b.start - t0, b.last - t0, tuple([t - t0 for t in b.cuses]) if b.cuses else ())
                  for b in bufs])


class BudgetReport:
    """Per scope × memory space: bytes under both reuse models for both platforms."""

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str], SpaceUsage] = {}
        self.scopes: list[str] = []
        self._seen: dict[tuple, dict] = {}  # entry signature -> platform -> measure()

    def add_entry(self, entry: Any) -> None:
        if entry.name not in self.scopes:
            self.scopes.append(entry.name)
        if not entry.bufs:
            return
        # the blocks of one pl.spmd (the iterations of a loop around a scope) usually make the
        # same buffers at the same relative times: measure each distinct entry once
        sig = (entry.name, _signature(entry.bufs))
        measured = self._seen.get(sig)
        if measured is None:
            if len(self._seen) > 256:
                self._seen.clear()
            measured = self._seen[sig] = {p: measure(entry.bufs, p) for p in PLATFORMS}
        for plat in PLATFORMS:
            for sp, (shape_b, peak_b, top_keys, top_peak) in measured[plat].items():
                u = self.usage.get((entry.name, sp))
                if u is None:
                    u = self.usage[(entry.name, sp)] = SpaceUsage(entry.name, sp)
                if shape_b > u.shape.get(plat, -1):
                    u.shape[plat] = shape_b
                    u.where[plat] = entry.indices
                    u.top[plat] = top_keys
                if peak_b > u.peak.get(plat, -1):
                    u.peak[plat] = peak_b
                    u.peak_top[plat] = top_peak

    def rows(self) -> list[SpaceUsage]:
        """Usages ordered by scope (first execution order), then space."""
        order = {s: i for i, s in enumerate(self.scopes)}
        return sorted(self.usage.values(),
                      key=lambda u: (order.get(u.scope, 1 << 30), SPACES.index(u.space)))

    def get(self, scope: str, space: str) -> SpaceUsage | None:
        return self.usage.get((scope, space))

    def over(self, platform: str, model: str = "shape") -> list[SpaceUsage]:
        return [u for u in self.rows() if u.over(platform, model)]

    def as_dicts(self) -> list[dict[str, Any]]:
        out = []
        for u in self.rows():
            row: dict[str, Any] = {"scope": u.scope, "space": u.space}
            for plat in PLATFORMS:
                row[f"shape_{plat}"] = u.shape.get(plat, 0)
                row[f"peak_{plat}"] = u.peak.get(plat, 0)
                row[f"limit_{plat}"] = LIMITS[plat][u.space]
            out.append(row)
        return out

    def table(self) -> str:
        """A plain-text table (KiB), one row per scope × space."""
        head = f"{'scope':<28} {'space':<5} " + " ".join(
            f"{p + ' shape':>11} {p + ' peak':>10} {p + ' limit':>11}" for p in PLATFORMS)
        lines = [head]
        for u in self.rows():
            cells = []
            for p in PLATFORMS:
                flag = "!" if u.over(p) else " "
                cells.append(f"{u.shape.get(p, 0) / KIB:>10.1f}{flag} "
                             f"{u.peak.get(p, 0) / KIB:>10.1f} {LIMITS[p][u.space] / KIB:>11.0f}")
            lines.append(f"{u.scope:<28} {u.space:<5} " + " ".join(cells))
        return "\n".join(lines)
