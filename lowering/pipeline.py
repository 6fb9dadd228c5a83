"""trace → match → run → judge.

``isolated`` mode feeds every kernel the reference values of its region's inputs. ``chained``
mode feeds each region the values the upstream regions actually produced (kernel outputs where
a kernel ran), so error propagation shows. Either way each region is judged **locally**: against
the reference stage evaluated on the values its kernel consumed, within the stage's bound
(``lowering.bounds``) — one upstream ulp never fails a downstream region. Along a chain the
drift from the pure reference run is reported beside the verdict (max ulp, cosine, rel-L2),
not gated.

:func:`judge_observed` does the same for outputs produced elsewhere (``diff-files``,
``run-kernel``): every stage output that was stored or mapped is judged on the observed values
upstream of it; an intermediate nobody stored enters its consumers as the interval of values it
may have had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np

import dsref
from dsref.model import STAGES
from dsref.run import infer_batch_seq
from lowering import bounds as bd
from lowering.diff import OutputDiff, judge
from lowering.registry import Kernel, Unsupported, kernel_for
from lowering.report import FAIL, PASS, REFERENCE, RegionReport, Report, kernel_error
from lowering.tile import KernelRun, run_kernel
from lowering.tolerances import DEFAULT_TOLERANCE, check_tolerance
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


def stage_bounds(model: str, cfg: Any, stage: str, inputs: Mapping[str, Any],
                 acc: bd.Accum) -> dict[str, Any]:
    """``bounds.stage_bounds``, with semantics it does not model given as a reason string per
    output (those outputs are then judged by the pypto-lib ratio preset, and say so)."""
    try:
        return bd.stage_bounds(model, stage, cfg, inputs, acc)
    except bd.Unmodelled as e:
        return {n: str(e) for n in STAGES[stage].outputs}


def local_reference(stage: str, cfg: Any, region: Region, inputs: Mapping[str, np.ndarray]
                    ) -> dict[str, np.ndarray]:
    """The reference stage on ``inputs``: the region's own reference outputs when ``inputs``
    are its reference inputs, else dsref's stage run on them."""
    if all(inputs.get(n) is v for n, v in region.inputs.items()):
        return dict(region.outputs)
    outs = dsref.run_stage(stage, cfg, *(inputs[n] for n in STAGES[stage].inputs))
    return dict(zip(STAGES[stage].outputs, outs, strict=True))


def run_region(model: str, cfg: Any, region: Region, inputs: Mapping[str, np.ndarray], *,
               platform: str = "a2a3", backend: Any = "numpy", seed: int = 0,
               permute_parallel: bool = False, kernel_cfg: Any = None,
               tolerance: str = DEFAULT_TOLERANCE, local: Mapping[str, np.ndarray] | None = None,
               pure: Mapping[str, np.ndarray] | None = None,
               ) -> tuple[RegionReport, dict[str, np.ndarray]]:
    """Run the kernel of ``region`` on ``inputs`` and judge it (:func:`judge_run`). The kernel's
    tiling follows ``kernel_cfg`` (default ``cfg``): a kernel built for one semantics can be
    held against another's reference. Returns the region report and the kernel's outputs (or
    the reference's)."""
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
    except Exception as e:  # raised in kernel code: a FAIL naming file:line, not a crash
        return RegionReport(name=region.name, status=FAIL, kernel=k.file,
                            findings=[kernel_error(e, k.stage)],
                            seconds=time.perf_counter() - t0), dict(region.outputs)
    rep = judge_run(model, cfg, region, inputs, run, tiling, tolerance=tolerance, local=local,
                    pure=pure, kernel=k.file)
    rep.seconds = time.perf_counter() - t0
    return rep, {n: run.outputs[n] for n in region.outputs}


def judge_run(model: str, cfg: Any, region: Region, inputs: Mapping[str, np.ndarray],
              run: KernelRun, tiling: Any, *, tolerance: str = DEFAULT_TOLERANCE,
              local: Mapping[str, np.ndarray] | None = None,
              pure: Mapping[str, np.ndarray] | None = None, kernel: str | None = None,
              ) -> RegionReport:
    """The region verdict on a kernel run: each output judged against ``local`` (the reference
    stage on ``inputs``; computed when not given) within the stage's bound, with the
    accumulation ``tiling`` declares; FAIL when an output is outside or an emulator check
    failed. ``pure``: the pure reference outputs, for the drift figures."""
    local = dict(local) if local is not None else local_reference(region.name, cfg, region, inputs)
    acc = bd.accum_for(region.name, tiling)
    bounds = stage_bounds(model, cfg, region.name, inputs, acc)
    diffs = [judge(n, run.outputs[n], want, bounds[n], tolerance=check_tolerance(tolerance),
                   pure=None if pure is None else pure.get(n), accumulation=acc.describe())
             for n, want in local.items()]
    ok = run.ok and all(d.ok for d in diffs)
    return RegionReport(
        name=region.name, status=PASS if ok else FAIL, kernel=kernel,
        tiling=dataclasses.asdict(tiling) if dataclasses.is_dataclass(tiling) else None,
        outputs=diffs, findings=list(run.findings), budget=run.budget.as_dicts(),
        values={n: (run.outputs[n], want) for n, want in local.items()},
    )


def _bind(eqn: Any, invals: list) -> list:
    out = eqn.primitive.bind(*invals, **eqn.params)
    return list(out) if eqn.primitive.multiple_results else [out]


def diff(model: str, cfg: Any, inputs: Mapping[str, np.ndarray], *, mode: str = "isolated",
         backend: Any = "numpy", platform: str = "a2a3", seed: int | None = None,
         permute_parallel: bool = False, kernel_cfg: Any = None,
         on_region: Callable[[str], None] | None = None,
         tolerance: str = DEFAULT_TOLERANCE) -> Report:
    """Diff every region of ``model`` (kernels on the tile emulator) against dsref at ``cfg``,
    each region judged locally (see the module docstring) under ``tolerance`` (``bound`` |
    ``pypto-lib``); ``kernel_cfg`` (same model) sets the semantics the kernels follow, default
    ``cfg``; ``on_region(name)`` is called as each region starts (progress display)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    check_tolerance(tolerance)
    tr = trace(model, cfg, inputs)
    by_index = {r.index: r for r in tr.regions}
    reports: list[RegionReport] = []

    def hook(i, eqn, invals):
        region = by_index.get(i)
        if region is None or stage_of(eqn, model) is None:
            return None
        if on_region is not None:
            on_region(f"{model.split('.')[0]} {region.name}")
        if mode == "isolated":
            ins, local, pure = region.inputs, region.outputs, None
        else:
            ins = {n: np.asarray(v) for n, v in zip(region.inputs, invals, strict=True)}
            local = None
            if kernel_for(model, region.name) is not None:  # the reference on what it consumed
                local = dict(zip(region.outputs, (np.asarray(v) for v in _bind(eqn, invals)),
                                 strict=True))
            pure = region.outputs
        rep, outs = run_region(model, cfg, region, ins, platform=platform, backend=backend,
                               seed=seed or 0, permute_parallel=permute_parallel,
                               kernel_cfg=kernel_cfg, tolerance=tolerance, local=local, pure=pure)
        reports.append(rep)
        if mode == "isolated":
            return [jnp.asarray(region.outputs[n]) for n in region.outputs]
        if rep.status == REFERENCE:
            return None  # chained, no kernel: the reference on the upstream values
        return [jnp.asarray(outs[n]) for n in region.outputs]

    evaluate(tr.jaxpr, {"__flat__": flat_inputs(inputs)}, hook)
    batch, seq = infer_batch_seq(dsref.get_model(model), inputs)
    rep = Report(model=model, config=cfg.name, mode=mode, backend=str(backend), platform=platform,
                 batch=batch, seq=seq, seed=seed, regions=reports, unrecognised=tr.unrecognised,
                 variants=dsref.variant_values(cfg), tolerance=tolerance)
    return rep


# ---- observed outputs along the chain (diff-files, run-kernel) ------------------------------------


@dataclass
class Judged:
    """The observed outputs of one stage, each judged locally."""

    stage: str
    outputs: list[OutputDiff] = field(default_factory=list)


def judge_observed(model: str, cfg: Any, inputs: Mapping[str, np.ndarray],
                   observed: Mapping[str, np.ndarray], *, tolerance: str = DEFAULT_TOLERANCE,
                   acc: bd.Accum = bd.ANY, labels: Mapping[str, str] | None = None,
                   ) -> list[Judged]:
    """Judge every observed stage output (by dsref name: a model output, or an intermediate
    such as ``qr_raw``) against the reference stage on the values upstream of it — observed
    values where there are, and, for an intermediate nobody observed, the interval of values it
    may hold (so a stage downstream of an unobserved one is still bounded). ``acc``: how the
    producer accumulated (default ``any``: unknown order). Stages in model order."""
    check_tolerance(tolerance)
    tr = trace(model, cfg, inputs)
    by_index = {r.index: r for r in tr.regions}
    labels = dict(labels or {})
    unknown: dict[str, Any] = {}  # unobserved intermediate -> Iv / RowsIv / reason string
    out: list[Judged] = []

    def hook(i, eqn, invals):
        region = by_index.get(i)
        if region is None or stage_of(eqn, model) is None:
            return None
        st = STAGES[region.name]
        local = dict(zip(st.outputs, (np.asarray(v) for v in _bind(eqn, invals)), strict=True))
        ins = {n: unknown.get(n, np.asarray(v)) for n, v in zip(st.inputs, invals, strict=True)}
        reasons = [v for v in ins.values() if isinstance(v, str)]
        if reasons:
            why = reasons[0] if reasons[0].startswith("upstream ") else f"upstream {reasons[0]}"
            bounds = {n: why for n in st.outputs}
        else:
            bounds = stage_bounds(model, cfg, region.name, ins, acc)
        judged = Judged(region.name)
        flow = []
        for n, ref in local.items():
            got = observed.get(n)
            if got is not None:
                got = np.asarray(got)
                judged.outputs.append(judge(labels.get(n, n), got, ref, bounds[n],
                                            tolerance=tolerance, pure=region.outputs[n],
                                            accumulation=acc.describe()))
                fits = got.shape == ref.shape and got.dtype == ref.dtype
                unknown.pop(n, None)
                flow.append(got if fits else ref)
            else:
                if bounds[n] is not None:
                    unknown[n] = bounds[n]
                flow.append(ref)
        if judged.outputs:
            out.append(judged)
        return [jnp.asarray(v) for v in flow]

    evaluate(tr.jaxpr, {"__flat__": flat_inputs(inputs)}, hook)
    return out
