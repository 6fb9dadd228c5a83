"""Run a tile kernel on the emulator and collect its outputs and check findings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lowering.tile import core
from lowering.tile.budget import LIMITS, BudgetReport
from lowering.tile.dtypes import DType, as_dtype
from lowering.tile.findings import Finding, HasFindings
from lowering.tile.lanes import LaneEscape


@dataclass
class KernelRun(HasFindings):
    """Result of ``run_kernel``.

    outputs: every output and in/out tensor by name, as numpy arrays (bf16 as
    ml_dtypes.bfloat16). findings: all check results. budget: per scope × memory space ×
    platform × reuse model (see ``lowering.tile.budget``). ok: no finding of severity 'fail'.
    """

    kernel: str
    platform: str
    outputs: dict[str, np.ndarray]
    findings: list[Finding] = field(default_factory=list)
    budget: BudgetReport = field(default_factory=BudgetReport)
    #: each pl.parallel loop (file:line) that ran: "lanes" (its iterations side by side) or
    #: "one at a time: <why>" (lowering.tile.lanes)
    lane_loops: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def summary(self) -> str:
        head = f"{self.kernel} on {self.platform}: {'ok' if self.ok else 'FAIL'}"
        return "\n".join([head, *(str(f) for f in self.findings)])


def _owned_mask(shape: tuple[int, ...], owned: Any) -> np.ndarray:
    """The owned part of an in/out tensor as a mask over its leading axes: rows of axis 0
    (indices, a slice or a bool mask), or a tuple of index arrays, one per leading axis
    (``dispatch_buf[(b + layer) % EP, b]``: a mask over its first two axes)."""
    if isinstance(owned, tuple):
        mask = np.zeros(shape[:len(owned)], bool)
        mask[tuple(np.asarray(i, np.int64) for i in owned)] = True
        return mask
    mask = np.zeros(shape[0], bool)
    if isinstance(owned, slice):
        mask[owned] = True
    elif isinstance(owned, np.ndarray) and owned.dtype == bool:
        mask[:] = owned
    else:
        idx = np.fromiter((int(r) for r in owned), np.int64) if not isinstance(
            owned, np.ndarray) else owned.astype(np.int64)
        mask[idx] = True
    return mask


def run_kernel(
    kernel_fn: Callable[..., Any],
    *,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, tuple[tuple[int, ...], DType | str | Any]],
    inouts: dict[str, tuple[np.ndarray, Iterable[int] | slice | np.ndarray]] | None = None,
    kwargs: dict[str, Any] | None = None,
    platform: str = "a2a3",
    backend: Any = "numpy",
    name: str | None = None,
    seed: int = 0,
    permute_parallel: bool = False,
    zero_outputs: bool = False,
    budget_model: str = "shape",
    input_store: str = "fail",
    lanes: bool = True,
) -> KernelRun:
    """Run ``kernel_fn(**tensors, **kwargs)`` on the tile emulator.

    inputs: name -> array (dtype taken from the array; read-only to the kernel).
    outputs: name -> (shape, dtype); they start as NaN (floats) or the dtype's minimum (ints),
    and every element must be written (coverage).
    inouts: name -> (initial array, owned rows): caches; the owned rows (axis 0) must be
    written, every other row must stay bit-identical and unwritten. Owned rows ``None``: no
    contract (a pypto-lib harness in/out, judged by its golden alone).
    permute_parallel: run pl.parallel/pl.spmd iterations in a seeded random order.
    zero_outputs: outputs start as zeros, as pypto-lib's harness allocates them (split-K
    atomic adds rely on it); an element never written is then a coverage *warning*, and the
    comparison with the golden decides.
    budget_model: the reuse model whose overflow fails ('shape' or 'peak'); an overflow of
    the shape model alone is then a warning. pypto-lib files at HEAD are judged on 'peak', the
    floor any allocator reaches: the shape model is an estimate of an older allocator, and a
    file that compiles cannot need more than its peak.
    input_store: the severity of a store into a tensor passed as an input ('fail' for our own
    kernels; pypto-lib files run as 'warning': what the device's dependency tracking makes of
    such a write is not modelled, and the comparison with the golden judges the values).
    lanes: run each pl.parallel loop's iterations side by side where its body allows
    (``lowering.tile.lanes``: the same values and findings, a fraction of the time); False:
    one iteration at a time.
    """
    kname = name or getattr(kernel_fn, "__name__", "kernel")
    deny = lane_denials(kernel_fn)
    copies: dict[str, Any] = {}  # the inputs' backend copies, kept for a run started again
    while True:  # again, without lanes for a loop whose body left them (lowering.tile.lanes)
        rt = core.Run(backend, platform, kname, seed, permute_parallel)
        rt.lanes = rt.lanes and lanes_on(lanes, permute_parallel)
        rt.lane_deny = deny
        rt.input_store = input_store
        try:
            return _run(rt, kernel_fn, inputs, outputs, inouts, kwargs, zero_outputs,
                        budget_model, copies)
        except LaneEscape as e:
            deny_lanes(deny, e)


def lanes_on(lanes: bool, permute_parallel: bool) -> bool:
    """Whether a run may use lanes: asked (``lanes``), no shuffled order asked for, and not
    turned off by ``LOWERING_LANES=0``."""
    return lanes and not permute_parallel and os.environ.get("LOWERING_LANES", "1") != "0"


def deny_lanes(deny: dict[tuple[str, int], str], e: LaneEscape) -> None:
    """Record in ``deny`` the loops the escape ``e`` takes out of lanes (its loop, or every
    loop that ran in lanes when it happened after them); a loop already denied again means
    the escape is not the lanes' doing."""
    new = {e.site} - deny.keys() if e.site is not None else e.sites - deny.keys()
    if not new:
        raise RuntimeError(f"emulator: lanes of a pl.parallel loop: {e.why}") from e
    deny.update(dict.fromkeys(new, e.why))


def lane_escape(rt: core.Run, exc: BaseException) -> LaneEscape | None:
    """The error ``exc`` of a run as the escape that starts it again without lanes, or None
    where no loop of the run has used lanes. Any error of a run that used lanes is the
    one-at-a-time run's to tell: the loop it happened in (of them all, if after) runs one
    iteration at a time in the next."""
    if not rt.lane_sites:
        return None
    e = exc if isinstance(exc, LaneEscape) else LaneEscape(f"{type(exc).__name__}: {exc}")
    e.site = rt.lane_frame.site if rt.lane_frame is not None else None
    e.sites = set(rt.lane_sites)
    return e


#: per kernel function: the pl.parallel loops (file, line) that run one iteration at a time,
#: with why (what left the lanes in an earlier run)
_LANES_DENIED: dict[Any, dict[tuple[str, int], str]] = {}


def lane_denials(fn: Any) -> dict[tuple[str, int], str]:
    """The loops of kernel ``fn`` that earlier runs in this process found must run one
    iteration at a time (filled by :func:`deny_lanes`)."""
    code = getattr(getattr(fn, "__wrapped__", fn), "__code__", None)  # a @pl.jit: its function
    key = (code.co_filename, code.co_firstlineno) if code is not None else id(fn)
    return _LANES_DENIED.setdefault(key, {})


def _run(rt: core.Run, kernel_fn: Callable[..., Any], inputs: dict[str, np.ndarray],
         outputs: dict, inouts: dict | None, kwargs: dict | None, zero_outputs: bool,
         budget_model: str, copies: dict) -> KernelRun:
    """One run of ``kernel_fn`` on ``rt`` (see :func:`run_kernel`)."""
    prev = core.activate(rt)
    try:
        tensors: dict[str, core.Tensor] = {}
        for n, arr in inputs.items():
            a = np.asarray(arr)
            dt = as_dtype(a.dtype)
            data = copies.get(n)
            if data is None:
                data = copies[n] = rt.bk.from_numpy(a, dt.name)
            tensors[n] = rt.add_base(core.BaseTensor(n, data, dt, "input"))
        for n, (shape, dtype) in outputs.items():
            dt = as_dtype(dtype)
            data = rt.bk.full(tuple(shape), dt.name, 0 if zero_outputs else rt.fill_value(dt))
            tensors[n] = rt.add_base(core.BaseTensor(n, data, dt, "output"))
        for n, (arr, owned) in (inouts or {}).items():
            a = np.asarray(arr)
            dt = as_dtype(a.dtype)
            base = core.BaseTensor(n, rt.bk.from_numpy(a, dt.name), dt, "inout")
            base.orig = a  # from_numpy copied it: the kernel never touches the caller's array
            base.owned = None if owned is None else _owned_mask(a.shape, owned)
            tensors[n] = rt.add_base(base)
        with core.fewer_collections():
            try:
                kernel_fn(**tensors, **(kwargs or {}))
                if rt.lane_frame is not None:  # its loop was left mid-way (a break)
                    raise LaneEscape("the loop was left before its end")
            except Exception as exc:
                e = lane_escape(rt, exc)
                if e is None:
                    raise
                if rt.inputs_written:  # the next run needs the inputs afresh
                    copies.clear()
                if e is exc:
                    raise
                raise e from exc
        rt.finish()  # budget of tiles made outside every in-core scope
        outs = {n: rt.bk.to_numpy(t.base.data) for n, t in tensors.items()
                if t.base.kind in ("output", "inout")}
        _final_checks(rt, tensors, outs, "warning" if zero_outputs else "fail", budget_model)
    finally:
        core.activate(prev)
    return KernelRun(rt.kernel, rt.platform, outs, rt.findings, rt.budget, lane_loops(rt))


def lane_loops(rt: core.Run) -> dict[str, str]:
    """``KernelRun.lane_loops`` of a run: each pl.parallel loop that ran, and how."""
    loops = {core.fmt_site(s): "lanes" for s in sorted(rt.lane_sites)}
    loops.update((core.fmt_site(s), f"one at a time: {why}") for s, why in rt.lane_refused.items())
    return loops


def _rows(mask: np.ndarray) -> str:
    """The rows a mask over leading axes marks: ``rows 3..5, 9`` (axis 0) or ``[2, 0], [3, 1]``."""
    if mask.ndim == 1:
        return f"rows {core.ranges(np.nonzero(mask)[0])}"
    at = np.argwhere(mask)
    return ", ".join(str(list(map(int, ix))) for ix in at[:8]) + (" ..." if len(at) > 8 else "")


def _rows_differ(a: np.ndarray, b: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """Per element of the leading axes ``lead`` (rows of axis 0, as a rule): do the raw bytes
    of ``a`` and ``b`` differ? (8-byte words where the rows allow: a V3.2 cache is 67 MB.)"""
    rows = int(np.prod(lead))
    a = np.ascontiguousarray(a).reshape(rows, -1).view(np.uint8)
    b = np.ascontiguousarray(b).reshape(rows, -1).view(np.uint8)
    if a.shape[1] % 8 == 0:
        a, b = a.view(np.uint64), b.view(np.uint64)
    return (a != b).any(axis=1).reshape(lead)


def _final_checks(rt: core.Run, tensors: dict[str, core.Tensor], outs: dict[str, np.ndarray],
                  unwritten: str = "fail", budget_model: str = "shape") -> None:
    """Coverage of outputs and in/outs (``outs``: their final values), dead writes, budgets.
    ``unwritten``: the severity of output elements never written."""
    for n, t in tensors.items():
        base = t.base
        if base.kind == "output":
            missing = ~base.written
            if missing.any():
                rt.report("coverage", unwritten,
                          f"output {n!r} {list(base.shape)} has unwritten elements: "
                          f"{core.describe_mask(missing)}", tensor=n, indices=(), scope=None)
        elif base.kind == "inout" and base.owned is not None:
            owned = base.owned
            stray = ~owned & base.written.reshape(owned.size, -1).any(axis=1).reshape(owned.shape)
            if stray.any():
                rt.report("coverage", "fail",
                          f"in/out {n!r}: rows outside the owned rows were written: "
                          f"{_rows(stray)}", tensor=n, indices=(), scope=None)
            changed = ~owned & _rows_differ(outs[n], base.orig, owned.shape)
            if changed.any():
                rt.report("coverage", "fail",
                          f"in/out {n!r}: rows outside the owned rows changed: {_rows(changed)}",
                          tensor=n, indices=(), scope=None)
            missing = ~base.written[owned]
            if missing.any():
                short = np.zeros_like(owned)
                short[owned] = missing.reshape(missing.shape[0], -1).any(axis=1)
                rt.report("coverage", "fail",
                          f"in/out {n!r}: owned rows not fully written: {_rows(short)}",
                          tensor=n, indices=(), scope=None)
    for base in rt.bases.values():
        if base.kind == "internal" and base.unread.any():
            rt.report("dead_write", "warning",
                      f"kernel-internal tensor {base.name!r} {list(base.shape)} has writes "
                      f"never read: {core.describe_mask(base.unread)}",
                      tensor=base.name, indices=(), scope=None)
    for u in rt.budget.over(rt.platform):
        used = u.shape[rt.platform]
        lim = LIMITS[rt.platform][u.space]
        severity = "fail" if budget_model == "shape" or u.over(rt.platform, "peak") else "warning"
        rt.report("budget", severity,
                  f"{u.space} needs {used} B ({used / 1024:.1f} KiB, shape model; peak model "
                  f"{u.peak.get(rt.platform, 0)} B) > {lim} B ({lim // 1024} KiB) on "
                  f"{rt.platform}; largest buffers: {'; '.join(u.top.get(rt.platform, []))}",
                  indices=u.where.get(rt.platform, ()), scope=u.scope)
