"""trace → match → run → diff.

``isolated`` mode feeds every kernel the reference values of its region's inputs, so each
region's error is its own. ``chained`` mode feeds each region the values the upstream
regions actually produced (kernel outputs where a kernel ran), so error propagation shows;
the report names the first FAIL region. Either way each output is compared with the
reference value of the untouched reference run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

import dsref
from dsref.run import infer_batch_seq
from lowering import tolerances
from lowering.diff import compare
from lowering.registry import Kernel, Unsupported, kernel_for
from lowering.report import FAIL, PASS, REFERENCE, RegionReport, Report, kernel_error
from lowering.tile import KernelRun, run_kernel
from lowering.trace import Region, evaluate, flat_inputs, stage_of, trace

MODES = ("isolated", "chained")


def region_shapes(region: Region, inputs: Mapping[str, np.ndarray] | None = None) -> dict:
    """Shapes of a region's tensors by name (``inputs`` default: the reference inputs) — what
    ``make_tiling`` derives a tiling from."""
    return {n: np.shape(a) for n, a in {**(region.inputs if inputs is None else inputs),
                                        **region.outputs}.items()}


def run_kernel_on(k: Kernel, cfg: Any, region: Region, inputs: Mapping[str, np.ndarray],
                  tiling: Any, *, fn: Callable | None = None, platform: str = "a2a3",
                  backend: Any = "numpy", seed: int = 0,
                  permute_parallel: bool = False) -> KernelRun:
    """Run ``fn`` (default: the kernel's own function, e.g. a broken copy with the same
    signature) on a region's tensors: outputs sized like the reference's, in/out tensors with
    the rows the kernel owns."""
    owned = k.owned_rows(cfg, inputs)
    inouts = {n: (np.asarray(inputs[n]), owned[n]) for n in owned}
    ins = {n: np.asarray(a) for n, a in inputs.items() if n not in inouts}
    outs = {n: (a.shape, a.dtype) for n, a in region.outputs.items() if n not in inouts}
    return run_kernel(fn or k.fn, inputs=ins, outputs=outs, inouts=inouts,
                      kwargs={"tiling": tiling}, platform=platform, backend=backend,
                      name=region.name, seed=seed, permute_parallel=permute_parallel)


def run_region(model: str, cfg: Any, region: Region, inputs: Mapping[str, np.ndarray], *,
               platform: str = "a2a3", backend: Any = "numpy", seed: int = 0,
               permute_parallel: bool = False, mode: str = "isolated", kernel_cfg: Any = None,
               ) -> tuple[RegionReport, dict[str, np.ndarray]]:
    """Run the kernel of ``region`` on ``inputs`` and diff against the region's reference
    outputs (``mode`` picks the presets: see ``tolerances.preset_for``). The kernel's tiling
    follows ``kernel_cfg`` (default ``cfg``): a kernel built for one semantics can be held
    against another's reference. Returns the region report and the kernel's outputs (or the
    reference's)."""
    k = kernel_for(model, region.name)
    if k is None:
        return RegionReport(name=region.name, status=REFERENCE), dict(region.outputs)
    t0 = time.perf_counter()
    try:
        tiling = k.tiling(cfg if kernel_cfg is None else kernel_cfg, region_shapes(region, inputs))
    except Unsupported as e:
        note = f"kernel {k.stage} does not implement {e}"
        return RegionReport(name=region.name, status=REFERENCE, kernel=k.file, note=note), dict(
            region.outputs)
    try:
        run = run_kernel_on(k, cfg, region, inputs, tiling, platform=platform, backend=backend,
                            seed=seed, permute_parallel=permute_parallel)
    except Exception as e:  # noqa: BLE001 - an error in kernel code is the region's FAIL
        return RegionReport(name=region.name, status=FAIL, kernel=k.file,
                            findings=[kernel_error(e, region.name)],
                            seconds=time.perf_counter() - t0), dict(region.outputs)
    diffs = [compare(n, run.outputs[n], want, tolerances.preset_for(n, want.dtype, mode))
             for n, want in region.outputs.items()]
    ok = run.ok and all(d.ok for d in diffs)
    rep = RegionReport(
        name=region.name, status=PASS if ok else FAIL, kernel=k.file,
        tiling=dataclasses.asdict(tiling) if dataclasses.is_dataclass(tiling) else None,
        outputs=diffs, findings=list(run.findings), budget=run.budget.as_dicts(),
        seconds=time.perf_counter() - t0,
        values={n: (run.outputs[n], want) for n, want in region.outputs.items()},
    )
    return rep, {n: run.outputs[n] for n in region.outputs}


def diff(model: str, cfg: Any, inputs: Mapping[str, np.ndarray], *, mode: str = "isolated",
         backend: Any = "numpy", platform: str = "a2a3", seed: int | None = None,
         permute_parallel: bool = False, kernel_cfg: Any = None,
         on_region: Callable[[str], None] | None = None) -> Report:
    """Diff every region of ``model`` (kernels on the tile emulator) against dsref at ``cfg``;
    ``kernel_cfg`` (same model) sets the semantics the kernels follow, default ``cfg``;
    ``on_region(name)`` is called as each region starts (progress display)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    tr = trace(model, cfg, inputs)
    by_index = {r.index: r for r in tr.regions}
    reports: list[RegionReport] = []

    def hook(i, eqn, invals):
        region = by_index.get(i)
        if region is None or stage_of(eqn, model) is None:
            return None
        if on_region is not None:
            on_region(f"{model.split('.')[0]} {region.name}")
        ins = region.inputs if mode == "isolated" else {
            n: np.asarray(v) for n, v in zip(region.inputs, invals, strict=True)}
        rep, outs = run_region(model, cfg, region, ins, platform=platform, backend=backend,
                               seed=seed or 0, permute_parallel=permute_parallel, mode=mode,
                               kernel_cfg=kernel_cfg)
        reports.append(rep)
        if mode == "isolated":
            return [jnp.asarray(region.outputs[n]) for n in region.outputs]
        if rep.status == REFERENCE:
            return None  # chained, no kernel: the reference on the upstream values
        return [jnp.asarray(outs[n]) for n in region.outputs]

    evaluate(tr.jaxpr, {"__flat__": flat_inputs(inputs)}, hook)
    batch, seq = infer_batch_seq(dsref.get_model(model), inputs)
    return Report(model=model, config=cfg.name, mode=mode, backend=str(backend), platform=platform,
                  batch=batch, seq=seq, seed=seed, regions=reports, unrecognised=tr.unrecognised,
                  variants=dsref.variant_values(cfg))
