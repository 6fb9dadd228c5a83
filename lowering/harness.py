"""Run a pypto-lib kernel file the way ``python FILE -p a2a3sim`` would, on the tile emulator.

A pypto-lib kernel file ends in a ``__main__`` that builds tensor specs, names a golden
function and tolerances, and calls ``golden.run_jit(fn=..., specs=..., golden_fn=...,
rtol=..., atol=..., compare_fn=...)`` (or ``golden.run(program, ...)`` for ``@pl.program``
files), once per mode. This module runs that ``__main__`` unchanged with only the device
runner replaced: every ``run_jit`` / ``run`` call becomes a *case* that

1. makes the inputs from the specs exactly as the harness does (``TensorSpec.create_tensor``),
   with torch, numpy and ``random`` seeded from ``seed``;
2. runs the kernel on the tile emulator with every check (budget, race, coverage, dead write,
   layout); outputs start as zeros, as the harness allocates them;
3. runs the file's golden function with torch on the CPU, and
4. compares with the file's own ``validate_golden`` / ``compare_fn`` comparators.

Inside a pypto-lib checkout (a parent directory holding ``golden/__init__.py``) the checkout's
own ``golden`` package is used and only its runner is replaced; outside one, the compatible
:mod:`lowering.pypto_compat.golden`. A file without a ``__main__`` is run from its single
kernel, ``build_tensor_specs()`` and ``golden_*`` function.

Verdicts: PASS, FAIL (a comparator or a check failed, or kernel code raised: file:line
named), CANNOT RUN (an emulator gap or an unusable file: the construct and file:line named).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import inspect
import io
import math
import os
import random
import re
import resource
import runpy
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import dsref
from dsref.inputs import meminfo
from lowering import binding, pypto_compat
from lowering.diff import OutputDiff, compare
from lowering.pipeline import judge_observed
from lowering.report import FAIL, PASS, RegionReport, Report
from lowering.tile import run_kernel as _run_tile_kernel
from lowering.tile.distributed import run_host
from lowering.tile.findings import Finding, KernelDefect
from lowering.tolerances import PRESETS

CANNOT_RUN = "CANNOT RUN"
VERDICT_EXIT = {PASS: 0, FAIL: 1, CANNOT_RUN: 2}
#: simulator platforms of pypto-lib map onto the hardware whose budgets they model
PLATFORM_OF = {"a2a3": "a2a3", "a2a3sim": "a2a3", "a5": "a5", "a5sim": "a5"}
#: how a ``--progress`` phase line starts on stderr: ``[  12.3 s] what`` (lowering.sweep)
PHASE_MARK = "["


class CannotRun(Exception):
    """The file cannot be judged: an emulator gap or an unusable file (exit 2). The message
    is one line naming the construct and where."""


@dataclass
class OutputCheck:
    """One output of a case: the file's comparator verdict plus our metrics."""

    name: str
    ok: bool
    comparator: str
    detail: str
    diff: OutputDiff | None


@dataclass
class Case:
    """One ``run_jit`` / ``run`` call of the file."""

    label: str
    status: str = PASS
    outputs: list[OutputCheck] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    budget: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    setup_s: float = 0.0  # the file's own code before this call (imports, specs, weights)
    inputs_s: float = 0.0  # the specs' tensors made (their init_value functions)
    emulator_s: float = 0.0
    golden_s: float = 0.0
    compare_s: float = 0.0  # the file's comparators and our metrics
    #: ``--reference dsref``: what the kernel's tensors were bound to, and how (or why not)
    dsref: str = ""
    notes: list[str] = field(default_factory=list)
    #: the emulator's parallel loops (file:line): "lanes", or "one at a time: why"
    lane_loops: dict[str, str] = field(default_factory=dict)
    #: (kernel output, golden output) per output name, numpy; not serialised
    values: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "status": self.status, "error": self.error,
            "setup_s": round(self.setup_s, 4), "inputs_s": round(self.inputs_s, 4),
            "emulator_s": round(self.emulator_s, 4), "golden_s": round(self.golden_s, 4),
            "compare_s": round(self.compare_s, 4),
            **({"dsref": self.dsref, "notes": list(self.notes)} if self.dsref else {}),
            "outputs": [{"name": o.name, "ok": o.ok, "comparator": o.comparator,
                         "detail": o.detail, "digest": _digest(self.values.get(o.name)),
                         "metrics": o.diff.to_dict() if o.diff else None}
                        for o in self.outputs],
            "findings": [{"check": f.check, "severity": f.severity, "message": f.message}
                         for f in self.findings],
            "lane_loops": dict(self.lane_loops),
        }


def _digest(pair: tuple[np.ndarray, np.ndarray] | None) -> str | None:
    """The kernel's output bits, in brief (sha256 of its bytes, dtype and shape): one seed
    gives one digest, whatever machine or emulator mode ran it."""
    if pair is None:
        return None
    a = np.ascontiguousarray(pair[0])
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class FileResult:
    """The verdict on one kernel file: ``verdict`` PASS / FAIL / CANNOT RUN, ``reason`` its
    first cause in one line."""

    path: str
    verdict: str
    reason: str = ""
    cases: list[Case] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int | None = None  # what the file's __main__ exited with (SystemExit)
    platform: str = "a2a3"
    seed: int = 0
    #: files of the checkout whose lines called pl ops in this run, with how many ops each
    op_files: dict[str, int] = field(default_factory=dict)
    reference: str = "golden"  # "dsref": the calls were judged against dsref too

    @property
    def exit(self) -> int:
        return VERDICT_EXIT[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "verdict": self.verdict, "reason": self.reason,
                "seconds": round(self.seconds, 3), "platform": self.platform,
                "seed": self.seed, "reference": self.reference,
                "op_files": dict(self.op_files),
                "cases": [c.to_dict() for c in self.cases]}

    @property
    def against(self) -> str:
        """What the calls were judged against."""
        return "dsref and its own golden" if self.reference == "dsref" else "its own golden"

    def to_report(self) -> Report:
        """The cases as a :class:`Report` (one region per case) for the usual table."""
        regions = []
        for c in self.cases:
            regions.append(RegionReport(
                name=c.label, status=PASS if c.status == PASS else FAIL, kernel=self.path,
                outputs=[o.diff for o in c.outputs if o.diff is not None],
                findings=list(c.findings), budget=c.budget, seconds=c.emulator_s))
        notes = [f"{c.label}: {c.error}" for c in self.cases if c.error]
        if self.verdict != PASS and not self.cases:
            notes.append(self.reason)
        return Report(model=os.path.basename(self.path), config=self.against,
                      mode="run-kernel", backend="numpy", platform=self.platform, batch=0,
                      seq=0, seed=self.seed, regions=regions, notes=notes)


# -- locating the file's world -------------------------------------------------------------------


def find_checkout(path: Path) -> Path | None:
    """The pypto-lib checkout holding ``path``: the nearest parent with ``golden/__init__.py``."""
    for d in path.resolve().parents:
        if (d / "golden" / "__init__.py").is_file():
            return d
    return None


def has_main(source: str) -> bool:
    """Whether the module has an ``if __name__ == "__main__":`` block."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = {getattr(n, "id", None) for n in ast.walk(node.test)}
            consts = {getattr(n, "value", None) for n in ast.walk(node.test)}
            if "__name__" in names and "__main__" in consts:
                return True
    return False


def _site_in(e: BaseException, roots: tuple[str, ...]) -> str:
    """file:line of the innermost traceback frame inside ``roots`` (the kernel's checkout)."""
    for fs in reversed(traceback.extract_tb(e.__traceback__)):
        if fs.filename.startswith(roots):
            return f"{fs.filename}:{fs.lineno}"
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    return "?"


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _describe(e: BaseException, roots: tuple[str, ...]) -> str:
    """One line: the exception and, unless its message already says where, file:line."""
    line = _oom_line(e) if out_of_memory(e) else _one_line(e)
    site = _site_in(e, roots)
    return line if "(used at " in line or site == "?" else f"{line} (at {site})"


# -- memory --------------------------------------------------------------------------------------


def machine_memory() -> int:
    """Bytes this process can ever hold: physical memory plus swap, or less where an
    ``RLIMIT_DATA`` says so."""
    m = meminfo()
    total = m.get("MemTotal", 0) + m.get("SwapTotal", 0) or \
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft = resource.getrlimit(resource.RLIMIT_DATA)[0]
    return total if soft == resource.RLIM_INFINITY else min(total, soft)


def cap_memory() -> None:
    """Hold this process to :func:`machine_memory`: an allocation past it raises (torch's
    ``RuntimeError``, numpy's ``MemoryError``: CANNOT RUN, out of memory, file:line) instead of
    the machine thrashing until the kernel's OOM killer ends the run with no word."""
    # machine_memory() is at most the soft limit, itself at most the hard one
    resource.setrlimit(resource.RLIMIT_DATA,
                       (machine_memory(), resource.getrlimit(resource.RLIMIT_DATA)[1]))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def out_of_memory(e: BaseException) -> bool:
    """``e`` says an allocation failed (numpy's MemoryError, torch's allocator error)."""
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def _oom_line(e: BaseException) -> str:
    # torch: "you tried to allocate 8589934592 bytes"; numpy: "Unable to allocate 8.00 GiB"
    asked = re.search(r"allocate (?:(\d+) bytes|([\d.]+ [KMGTPE]iB))", str(e))
    what = "" if asked is None else f" asking for {_gib(int(asked[1])) if asked[1] else asked[2]}"
    return f"out of memory{what} ({_gib(machine_memory())} on this machine)"


def _check_fits(specs: list) -> None:
    """CANNOT RUN before making one tensor when the specs alone outgrow the machine."""
    sizes = sorted(((_spec_bytes(s), s.name) for s in specs), key=lambda t: (-t[0], t[1]))
    need, have = sum(n for n, _ in sizes), machine_memory()
    if need > have:
        top = ", ".join(f"{name} {_gib(n)}" for n, name in sizes[:3])
        more = ", ..." if len(sizes) > 3 else ""
        raise CannotRun(f"its {len(sizes)} tensors take {_gib(need)} ({top}{more}), "
                        f"more than this machine's {_gib(have)} of memory")


def _spec_bytes(spec: Any) -> int:
    return math.prod(int(d) for d in spec.shape) * spec.dtype.itemsize  # a torch dtype


#: exceptions that say the emulator (or its surroundings) lacks something, wherever raised
_GAPS = (pypto_compat.UnsupportedAPI, NotImplementedError, CannotRun, AttributeError, TypeError,
         NameError, ImportError, KeyError)


def _defined_in(cls: type, roots: tuple[str, ...]) -> bool:
    try:
        return bool(roots) and inspect.getfile(cls).startswith(roots)
    except (TypeError, OSError):
        return False


def _is_gap(e: BaseException, roots: tuple[str, ...] = ()) -> bool:
    """An emulator gap (CANNOT RUN) rather than a defect of the kernel (FAIL). A defect is
    what the emulator reports as one (:class:`KernelDefect`: an access out of bounds) or an
    exception the file's own code raises on purpose (ValueError, AssertionError, ...), not
    one that says a name or a form is missing."""
    if isinstance(e, KernelDefect):
        return False
    if out_of_memory(e):
        return True
    if isinstance(e, AttributeError) and _defined_in(type(getattr(e, "obj", None)), roots):
        return False  # the file's own object lacks the attribute: its own code is broken
    if isinstance(e, _GAPS):
        return True
    tb = traceback.extract_tb(e.__traceback__)
    return not (tb and roots and tb[-1].filename.startswith(roots))


# -- torch ⇄ numpy -------------------------------------------------------------------------------


def _torch() -> Any:
    from dsref.io import import_torch

    try:
        return import_torch()
    except Exception as e:  # noqa: BLE001 - ExtraMissing or a broken torch: one line either way
        raise CannotRun(f"pypto-lib files need torch for their specs and goldens: {e}") from None


# -- the replaced runner ---------------------------------------------------------------------------


@dataclass
class DsrefJudge:
    """``run-kernel --reference dsref`` on a file that makes its own inputs: each kernel call's
    tensors bound to a dsref model or stage range (:mod:`lowering.binding`), its outputs judged
    against the reference stage by stage on the kernel's own upstream values (exact or within
    the computed bound, under ``tolerance``); tensors dsref does not have are judged by the
    file's golden alone and named as not modelled."""

    semantics: str | None = None
    variants: Mapping[str, Any] = field(default_factory=dict)
    tolerance: str = "bound"
    bound: int = 0  # calls bound to a dsref model

    def judge(self, case: Case, tensors: list[binding.KernelTensor]) -> None:
        try:
            b = binding.bind(tensors, variants=self.variants, semantics=self.semantics)
            dsref.validate(b.model, b.cfg, b.inputs)
        except ValueError as e:  # NoBinding, or dsref's InputError on the file's values
            case.dsref = "not modelled"
            case.notes.append(f"dsref: {e}")
            return
        self.bound += 1
        count = f"T={b.batch}" if b.seq == 1 else f"B={b.batch} S={b.seq}"
        case.dsref = f"{b.model} at {b.cfg.name}, {count}"
        case.notes += [f"dsref: {n}" for n in b.notes]
        case.notes += b.unbound_notes("judged by the file's golden alone")
        moved = False
        for j in judge_observed(b.model, b.cfg, b.inputs, b.observed, labels=b.labels,
                                tolerance=self.tolerance):
            for d in j.outputs:
                case.outputs.append(OutputCheck(f"dsref {d.name}", d.ok, f"dsref {j.stage}",
                                                d.message, d))
                moved |= d.differ_ratio > 0
                if not d.ok:
                    case.status = FAIL
        if moved:  # a bound can hide another semantics: say which one the bits follow
            case.notes.append(_closest_semantics(b))


def _closest_semantics(b: binding.Binding) -> str:
    """One line: the share of each bound output's elements that are bit-identical to dsref
    under every named semantics of the model, best first — a kernel within the bound of one
    semantics may follow another bit for bit (a hidden intermediate widens the bound)."""
    names = [n for n in b.observed]
    rows, unfit = [], []
    for sem in dsref.semantics_names(b.cfg.model):
        try:  # a semantics whose inputs differ (fp32 RoPE tables) cannot take these
            outs = dsref.run(b.model, dsref.with_semantics(b.cfg, sem), b.inputs)
        except ValueError:
            unfit.append(sem)
            continue
        same = [1.0 - compare(n, b.observed[n], outs[n], PRESETS["exact"]).differ_ratio
                for n in names]
        rows.append((sum(same) / len(same), sem, same))
    rows.sort(key=lambda r: -r[0])
    labels = "/".join(b.kernel_of.get(n, n) for n in names)
    return ("bit-identical share (" + labels + ") under each semantics: " + "; ".join(
        f"{sem} {'/'.join(f'{100 * x:.2f}' for x in same)} %" for _, sem, same in rows)
        + (f"; not on these inputs: {', '.join(unfit)}" if unfit else ""))


class Harness:
    """Stands in for ``golden.run_jit`` / ``golden.run``: each call is one :class:`Case`."""

    def __init__(self, golden: ModuleType, *, path: Path, roots: tuple[str, ...], seed: int,
                 platform: str, permute_parallel: bool = False, progress: bool = False,
                 dsref: DsrefJudge | None = None) -> None:
        self.golden = golden
        self.dsref = dsref
        self.path = path
        self.roots = roots
        self.seed = seed
        self.platform = platform
        self.permute_parallel = permute_parallel
        self.cases: list[Case] = []
        self.progress = progress
        self.t0 = self._mark = time.perf_counter()  # _mark: the end of the last phase timed

    def phase(self, what: str) -> float:
        """Start the phase ``what``: with ``progress``, one line ``[  12.3 s] what`` on
        stderr (``lowering sweep`` reads the last one when a file times out). Returns the
        seconds since the previous phase began and restarts that clock."""
        now = time.perf_counter()
        if self.progress:
            print(f"{PHASE_MARK}{now - self.t0:8.1f} s] {what}", file=sys.stderr, flush=True)
        spent, self._mark = now - self._mark, now
        return spent

    # the two entry points the files call -----------------------------------------------------
    def run_jit(self, fn: Any, specs: list, golden_fn: Callable | None = None,
                golden_data: str | None = None, compile_cfg: Any = None,
                runtime_cfg: Mapping[str, Any] | None = None, rtol: float = 1e-5,
                atol: float = 1e-5, compare_fn: Mapping[str, Callable] | None = None,
                compile_only: bool = False, runtime_dir: str | None = None,
                save_data: bool = False, **unknown: Any) -> Any:
        return self._call(fn, "run_jit", specs, golden_fn, golden_data, rtol, atol,
                          compare_fn, compile_only, {**unknown, **_distributed(compile_cfg)})

    def run(self, program: Any, specs: list, golden_fn: Callable | None = None,
            golden_data: str | None = None, compile_cfg: Any = None,
            runtime_cfg: Mapping[str, Any] | None = None, rtol: float = 1e-5,
            atol: float = 1e-5, compare_fn: Mapping[str, Callable] | None = None,
            compile_only: bool = False, runtime_dir: str | None = None,
            save_data: bool = False, **unknown: Any) -> Any:
        return self._call(program, "run", specs, golden_fn, golden_data, rtol, atol,
                          compare_fn, compile_only, {**unknown, **_distributed(compile_cfg)})

    # ------------------------------------------------------------------------------------------
    def _call(self, fn: Any, how: str, specs: list, golden_fn: Callable | None,
              golden_data: str | None, rtol: float, atol: float,
              compare_fn: Mapping[str, Callable] | None, compile_only: bool,
              unknown: Mapping[str, Any]) -> Any:
        case = self._new_case(fn, "making the inputs")
        try:
            unknown = dict(unknown)
            world = _world_size(unknown.pop("distributed_config", None), fn, how)
            if unknown:
                raise CannotRun(f"golden.{how}() keyword(s) {sorted(unknown)} are not modelled")
            if compile_only:
                raise CannotRun(f"golden.{how}(compile_only=True): the file only compiles")
            self._judge(case, fn, specs, golden_fn, golden_data, rtol, atol, dict(compare_fn or {}),
                        world)
        except Exception as e:  # noqa: BLE001 - every failure becomes this case's verdict
            self._stopped(case, e)
        passed = case.status == PASS
        return self.golden.RunResult(passed=passed, error=None if passed else case.error or
                                     "emulator verdict FAIL")

    def _new_case(self, fn: Any, phase: str) -> Case:
        """A case for this call of ``fn``, its first ``phase`` started."""
        case = Case(f"{getattr(fn, '__name__', type(fn).__name__)} #{len(self.cases) + 1}")
        case.setup_s = self.phase(f"{case.label}: {phase}")
        self.cases.append(case)
        return case

    def _stopped(self, case: Case, e: Exception) -> None:
        """The case's verdict when ``e`` stopped it."""
        self.phase(f"{case.label} stopped: the file's own code")
        where = e.args[0] if isinstance(e, CannotRun) else _describe(e, self.roots)
        case.status = CANNOT_RUN if _is_gap(e, self.roots) else FAIL
        case.error = where if isinstance(e, CannotRun) or out_of_memory(e) else \
            ("kernel defect: " if case.status == FAIL else "emulator cannot run this: ") + where

    def dispatch(self, fn: Any, args: tuple, kwargs: dict) -> None:
        """A kernel the file runs itself on torch tensors — ``kernel(*tensors)`` or a
        ``kernel.compile(...)`` program called (:data:`lowering.tile.jit.host_dispatch`): one
        case, judged by the emulator's checks; its ``pl.Out`` / ``pl.InOut`` tensors get the
        results in place, as from a device, and the file goes on to check them itself. An
        error in the kernel stops the file, as a device error would."""
        torch = _torch()
        from dsref.io import from_torch, to_torch
        from lowering.run_kernel import params_of

        case = self._new_case(fn, "the emulator (the file calls the kernel)")
        try:
            params = params_of(fn)
            try:
                bound = inspect.signature(fn.fn).bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn.__name__}(): {e}") from None
            bound.apply_defaults()
            inputs, inouts, back, rest = {}, {}, {}, {}
            for p in params:
                v = bound.arguments[p.name]
                if not isinstance(v, torch.Tensor):
                    rest[p.name] = v
                elif p.direction == "in":
                    inputs[p.name] = from_torch(torch, v)
                else:
                    inouts[p.name], back[p.name] = (from_torch(torch, v), None), v

            def kernel(**tens: Any) -> None:
                fn(**{p.name: tens[p.name] if p.name in tens else rest[p.name]
                      for p in params})

            run = self._emulate(case, kernel, " done: the file's own code", inputs=inputs,
                                outputs={}, inouts=inouts)
        except Exception as e:
            self._stopped(case, e)
            raise
        if run.failures:
            case.status = FAIL
        for name, t in back.items():
            t.copy_(to_torch(torch, run.outputs[name]))

    def _emulate(self, case: Case, kernel: Callable[..., None], then: str, *, inputs: dict,
                 outputs: dict, inouts: dict, world: int | None = None) -> Any:
        """``kernel`` on the emulator as pypto-lib's harness runs it (outputs start as zeros,
        budgets judged on the peak model, a store into an input a warning; ``world`` ranks
        for an L3 program), the phase ``label + then`` started after it; the case gets the run's
        seconds, findings and budget."""
        kernel.__name__ = case.label
        runner = _run_tile_kernel if world is None else functools.partial(  # one run per rank
            run_host, world=world, schedule_seed=self.seed if self.permute_parallel else None)
        run = runner(kernel, inputs=inputs, outputs=outputs, inouts=inouts,
                     platform=self.platform, name=case.label, seed=self.seed,
                     permute_parallel=self.permute_parallel, zero_outputs=True,
                     budget_model="peak", input_store="warning")
        case.emulator_s = self.phase(case.label + then)
        case.lane_loops = dict(getattr(run, "lane_loops", {}))
        case.findings = list(run.findings)
        case.budget = run.budget.as_dicts()
        return run

    def _check_spec_classes(self, specs: list) -> None:
        """A spec that is neither ``golden.TensorSpec`` nor ``golden.ScalarSpec`` (say a
        ``pypto.runtime.TensorSpec``) gets no input from pypto-lib's ``golden.run``, which
        sorts specs by ``isinstance``: upstream the run cannot work, so it is the file's
        defect, named with where the spec was made."""
        ok = (self.golden.TensorSpec, self.golden.ScalarSpec)
        foreign = [s for s in specs if not isinstance(s, ok)]
        if foreign:
            s = foreign[0]
            kind = f"{type(s).__module__}.{type(s).__qualname__}"
            raise KernelDefect(
                f"spec {getattr(s, 'name', s)!r} is a {kind}, not a golden.TensorSpec / "
                f"ScalarSpec: golden.run makes no input for it ({len(foreign)} of {len(specs)} "
                "specs)"
                + (f" (used at {s.site})" if getattr(s, "site", "") else ""))

    def _judge(self, case: Case, fn: Any, specs: list, golden_fn: Callable | None,
               golden_data: str | None, rtol: float, atol: float,
               compare_fn: dict[str, Callable], world: int | None = None) -> None:
        torch = _torch()
        from dsref.io import from_torch, to_torch

        self._check_spec_classes(specs)
        tspecs = [s for s in specs if isinstance(s, self.golden.TensorSpec)]
        if golden_data is not None:
            raise CannotRun("golden_data= replay is not modelled; run without --golden-data")
        _check_fits(tspecs)
        with _seeded(torch, self.seed):
            tensors = {s.name: s.create_tensor() for s in tspecs}
        case.inputs_s = self.phase(f"{case.label}: the emulator")
        scalars = {s.name: s.to_python() for s in specs
                   if not isinstance(s, self.golden.TensorSpec)}
        # no snapshot of the inputs (pypto-lib's golden.run clones them all): the emulator
        # copies what it is given (Backend.from_numpy), so ``tensors`` stay as made, and a
        # whole-model file's weights are held twice at most, not three times

        entry, params = _entry(fn)
        names = [s.name for s in specs]
        if world is None and len(params) != len(names):
            raise CannotRun(f"{case.label}: the kernel takes {len(params)} parameters "
                            f"({', '.join(params)}) but the file passes {len(names)} specs")
        inputs, outputs, inouts = {}, {}, {}
        for s in tspecs:
            a = from_torch(torch, tensors[s.name])
            if not s.is_output:
                inputs[s.name] = a
            elif s.init_value is None:
                outputs[s.name] = (a.shape, a.dtype)
            else:
                inouts[s.name] = (a, None)
        if world is None:
            by_param = dict(zip(params, names, strict=True))
        else:  # an L3 program takes its specs by name (pypto-lib's _l3_ordered_args)
            if set(params) - set(names):
                raise CannotRun(f"{case.label}: the host program's parameters "
                                f"{sorted(set(params) - set(names))} have no spec")
            by_param = {p: p for p in params}

        def kernel(**tens: Any) -> None:
            entry(*[tens[n] if n in tens else scalars[n] for n in by_param.values()])

        run = self._emulate(case, kernel, ": the file's golden", inputs=inputs, outputs=outputs,
                            inouts=inouts, world=world)

        device = {s.name: to_torch(torch, run.outputs[s.name]) for s in tspecs if s.is_output}
        expected = None
        if golden_fn is not None:
            scratch: dict[str, Any] = dict(scalars)
            for s in tspecs:
                scratch[s.name] = (torch.zeros(s.shape, dtype=s.dtype)
                                   if s.is_output and s.init_value is None
                                   else tensors[s.name].clone())
            with _seeded(torch, self.seed):
                try:
                    golden_fn(scratch)
                except Exception as e:
                    raise CannotRun(f"the file's golden {getattr(golden_fn, '__name__', '?')} "
                                    f"raised {_describe(e, self.roots)}") from e
            expected = {n: scratch[n] for n in device}
        case.golden_s = self.phase(f"{case.label}: comparing")
        if expected is not None:
            given = {s.name: tensors[s.name] for s in tspecs
                      if not s.is_output or s.init_value is not None}
            case.outputs = self._validate(device, expected, given, scalars, rtol, atol,
                                          compare_fn)
        if self.dsref is not None and world is None:  # the arrays the emulator was given
            self.dsref.judge(case, [
                *(binding.KernelTensor(n, "in", a) for n, a in inputs.items()),
                *(binding.KernelTensor(n, "out", result=run.outputs[n]) for n in outputs),
                *(binding.KernelTensor(n, "inout", a, run.outputs[n])
                  for n, (a, _) in inouts.items())])
        case.compare_s = self.phase(f"{case.label} done: the file's own code")
        if run.failures or any(not o.ok for o in case.outputs):
            case.status = FAIL

    def _validate(self, device: dict, expected: dict, inputs: dict, scalars: dict, rtol: float,
                  atol: float, compare_fn: dict[str, Callable]) -> list[OutputCheck]:
        """The file's own verdict per output (its ``validate_golden`` with its comparators),
        with our metrics beside it."""
        torch = _torch()
        from dsref.io import from_torch

        val_inputs = {**inputs, **{k: torch.tensor(v) for k, v in scalars.items()}}
        log = io.StringIO()
        failed: dict[str, str] = {}
        try:
            with contextlib.redirect_stdout(log):
                self.golden.validate_golden(device, expected, rtol=rtol, atol=atol,
                                            compare_fn=compare_fn, inputs=val_inputs)
        except AssertionError as e:
            failed = _split_failures(str(e), list(device))
        checks = []
        for name in device:
            fn = compare_fn.get(name)
            label = (getattr(fn, "__name__", "custom") if fn is not None
                     else f"allclose r={rtol:g} a={atol:g}")
            got, want = from_torch(torch, device[name]), from_torch(torch, expected[name])
            self.cases[-1].values[name] = (got, want)
            diff = compare(name, got, want, PRESETS["exact"])
            diff.preset = label
            diff.ok = name not in failed
            diff.message = failed.get(name, "")
            checks.append(OutputCheck(name, name not in failed, label, failed.get(name, ""), diff))
        return checks


def _distributed(compile_cfg: Any) -> dict[str, Any]:
    """The one compile setting that changes what runs: a multi-device program."""
    cfg = compile_cfg if isinstance(compile_cfg, Mapping) else {}
    d = cfg.get("distributed_config")
    return {} if d is None else {"distributed_config": d}


#: DistributedConfig fields (pypto.ir.distributed_compiled_program) and their modelled values
_DIST_FIELDS = {"device_ids": None, "num_sub_workers": 0, "runtime": "tensormap_and_ringbuffer",
                "aicpu_thread_num": None}


def _world_size(cfg: Any, fn: Any, how: str) -> int | None:
    """The rank count of a ``compile_cfg`` distributed program (None: a one-device run);
    CannotRun for a setting the emulator does not model, naming it."""
    if cfg is None:
        return None
    where = f"golden.{how}(compile_cfg=dict(distributed_config=...))"
    if getattr(fn, "kind", None) != "host":
        raise CannotRun(f"{where} with {getattr(fn, '__name__', fn)!r}, not a @pl.jit.host "
                        "program: not modelled")
    kw = dict(getattr(cfg, "kwargs", {}))
    if getattr(cfg, "args", ()) or set(kw) - set(_DIST_FIELDS):
        raise CannotRun(f"{where}: DistributedConfig{getattr(cfg, 'args', ())} / "
                        f"{sorted(set(kw) - set(_DIST_FIELDS))} not modelled")
    for k, v in _DIST_FIELDS.items():
        if v is not None and kw.get(k, v) != v:
            raise CannotRun(f"{where}: DistributedConfig({k}={kw[k]!r}) is not modelled")
    ids = list(kw.get("device_ids", [0]))
    if not ids or len(set(ids)) != len(ids):
        raise CannotRun(f"{where}: device_ids {ids} must be distinct and non-empty")
    return len(ids)


def _split_failures(message: str, names: list[str]) -> dict[str, str]:
    """validate_golden's AssertionError text, per output name: ``  'NAME' FAIL ...`` blocks."""
    out: dict[str, str] = {}
    current = None
    for line in message.splitlines()[1:]:
        head = line.strip()
        for n in names:
            if head.startswith(f"'{n}' FAIL"):
                current = n
                out[n] = ""
                break
        else:
            if current is not None and head and len(out[current]) < 400:
                out[current] = (out[current] + "; " + head).strip("; ")
    if not out:  # an unexpected format: blame every output, keep the text
        out = {n: message.splitlines()[0] for n in names}
    return out


def _entry(fn: Any) -> tuple[Callable[..., Any], list[str]]:
    """The callable and its parameter names: a ``@pl.jit`` function, or a ``@pl.program``
    class (its orchestration function)."""
    from lowering.run_kernel import _pick_method, params_of

    if isinstance(fn, type):
        if not getattr(fn, "__pl_program__", False):
            raise CannotRun(f"{fn.__name__} is not a @pl.program class")
        name, _ = _pick_method(fn, None, fn.__name__)
        bound = getattr(fn(), name)
        return bound, [p.name for p in params_of(bound)]
    if not callable(fn):
        raise CannotRun(f"golden.run_jit(fn={fn!r}): not a kernel function")
    return fn, [p.name for p in params_of(fn)]


@contextlib.contextmanager
def _seeded(torch: Any, seed: int) -> Iterator[None]:
    """torch, numpy and random seeded to ``seed``; their previous states restored after."""
    states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


# -- running a file --------------------------------------------------------------------------------


@contextlib.contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``env`` inside the ``with``; those keys as before after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _file_world(path: Path, checkout: Path | None, argv: list[str],
                env: Mapping[str, str]) -> Iterator[ModuleType]:
    """sys.argv, sys.path, os.environ and sys.modules as the file's own run would see them;
    all restored afterwards. Yields the ``golden`` module the file will import."""
    dirs = [str(path.parent)] + ([str(checkout)] if checkout else [])
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    threads = {"PYPTO_GOLDEN_NUM_THREADS": os.environ.get(
        "PYPTO_GOLDEN_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)))))}
    before = set(sys.modules)
    stashed = {n: sys.modules.pop(n) for n in list(sys.modules)
               if n.split(".")[0] == "golden"}
    sys.argv = [str(path), *argv]
    sys.path[:0] = dirs
    try:
        with environ({**threads, **env}), pypto_compat.installed(force=True):
            if checkout is not None:
                golden = importlib.import_module("golden")
            else:
                from lowering.pypto_compat import golden as ours

                golden = ours
                sys.modules["golden"] = ours
            yield golden
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        for n in set(sys.modules) - before:
            f = getattr(sys.modules.get(n), "__file__", None) or ""
            if n.split(".")[0] == "golden" or any(f.startswith(d) for d in dirs):
                sys.modules.pop(n, None)
        sys.modules.update(stashed)


@contextlib.contextmanager
def _patched(golden: ModuleType, harness: Harness) -> Iterator[None]:
    from lowering.tile import jit

    targets = [golden, getattr(golden, "runner", None)]
    saved = [(m, n, getattr(m, n)) for m in targets if m is not None
             for n in ("run_jit", "run") if hasattr(m, n)]
    if not saved:  # a golden module without runners: give it ours
        golden.run_jit, golden.run = harness.run_jit, harness.run
    saved.append((jit, "host_dispatch", jit.host_dispatch))
    for m, n, _ in saved:
        setattr(m, n, harness.dispatch if m is jit else getattr(harness, n))
    try:
        yield
    finally:
        for m, n, v in saved:
            setattr(m, n, v)


def run_file(path: str | os.PathLike, *, mode: str | None = None, seed: int = 0,
             platform: str = "a2a3", env: Mapping[str, str] | None = None,
             permute_parallel: bool = False, progress: bool = False,
             dsref: DsrefJudge | None = None) -> FileResult:
    """Run the kernel file ``path`` as ``python FILE [--mode MODE]`` would, with the device
    runner replaced by the emulator (see the module docstring). ``progress``: each phase on
    stderr as it starts (:meth:`Harness.phase`). ``dsref``: each call also judged against
    dsref (``run-kernel --reference dsref``); a file none of whose calls maps onto a dsref
    model is CANNOT RUN. ``FileResult.op_files`` names the files of the checkout (or the
    file's folder) whose lines called pl ops."""
    from lowering.tile import core

    core.op_files.clear()
    res = _run_file(path, mode, seed, platform, env, permute_parallel, progress, dsref)
    res.reference = "dsref" if dsref is not None else "golden"
    if dsref is not None and res.cases and not dsref.bound and res.verdict != FAIL:
        why = next((n for c in res.cases for n in c.notes if n.startswith("dsref: ")), "")
        res.verdict = CANNOT_RUN
        res.reason = (f"--reference dsref: no kernel call of the file maps onto a dsref model "
                      f"({why.removeprefix('dsref: ')})")
    p = Path(path).resolve()
    root = str(find_checkout(p) or p.parent)
    res.op_files = {f: n for f, n in sorted(core.op_files.items()) if f.startswith(root)}
    return res


def _run_file(path: str | os.PathLike, mode: str | None, seed: int, platform: str,
              env: Mapping[str, str] | None, permute_parallel: bool,
              progress: bool, dsref: DsrefJudge | None = None) -> FileResult:
    p = Path(path).resolve()
    t0 = time.perf_counter()
    res = FileResult(str(path), PASS, platform=platform, seed=seed)
    try:
        source = p.read_text()
    except OSError as e:
        return _cannot(res, f"{path}: {e.strerror or e}", t0)
    checkout = find_checkout(p)
    roots = (str(checkout or p.parent),)
    argv = ["--mode", mode] if mode else []
    h: Harness | None = None
    failure: tuple[str, str] | None = None
    try:
        with _file_world(p, checkout, argv, dict(env or {})) as golden:
            h = Harness(golden, path=p, roots=roots, seed=seed,
                        platform=PLATFORM_OF.get(platform, platform),
                        permute_parallel=permute_parallel, progress=progress, dsref=dsref)
            h.phase(f"{p.name}: the file's own code (imports, specs, weights)")
            try:
                # seeded before the file's own code runs: weights it draws while building its
                # specs (no seed of its own) are the same bits every run of this seed
                with _patched(golden, h), _seeded(_torch(), seed):
                    if has_main(source):
                        res.exit_code = _run_main(p, roots)
                    else:
                        _run_without_main(p, h)
            except CannotRun:
                raise
            except Exception as e:  # noqa: BLE001 - importing or running the file failed;
                # judged here, while the file's modules are still importable
                failure = (CANNOT_RUN if _is_gap(e, roots) else FAIL, _describe(e, roots))
    except CannotRun as e:
        return _cannot(res, str(e), t0)
    if failure is not None:
        res.cases = h.cases if h is not None else []
        res.verdict, res.reason = failure
        first = next((c for c in res.cases if c.status == FAIL), None)
        if first is not None:  # a failed run the file went on from: the cause, not the echo
            res.verdict = FAIL
            res.reason = f"{first.label}: {first.error or _first_cause(first)}"
        res.seconds = time.perf_counter() - t0
        return res
    res.cases = h.cases
    res.seconds = time.perf_counter() - t0
    if not h.cases:
        return _cannot(res, "its __main__ never called golden.run_jit / golden.run"
                       + (f" (it exited with {res.exit_code})" if res.exit_code else ""), t0)
    statuses = [c.status for c in h.cases]
    first = next((c for c in h.cases if c.status != PASS), None)
    res.verdict = FAIL if FAIL in statuses else CANNOT_RUN if CANNOT_RUN in statuses else PASS
    if first is not None:
        res.reason = f"{first.label}: {first.error or _first_cause(first)}"
    return res


def _cannot(res: FileResult, why: str, t0: float) -> FileResult:
    res.verdict, res.reason = CANNOT_RUN, why
    res.seconds = time.perf_counter() - t0
    return res


def _first_cause(c: Case) -> str:
    if c.findings and any(f.severity == "fail" for f in c.findings):
        f = next(f for f in c.findings if f.severity == "fail")
        return f"[{f.check}] {f.message}"
    bad = next((o for o in c.outputs if not o.ok), None)
    return f"output {bad.name!r} fails {bad.comparator}: {bad.detail}" if bad else "FAIL"


def _run_main(p: Path, roots: tuple[str, ...]) -> int | None:
    """Execute the file as ``__main__``; its SystemExit code (None when it returned)."""
    try:
        runpy.run_path(str(p), run_name="__main__")
    except SystemExit as e:
        code = e.code
        if isinstance(code, str):
            raise CannotRun(f"the file exited: {code}") from None
        return code
    return None


def _run_without_main(p: Path, h: Harness) -> None:
    """A file with no ``__main__``: its single kernel, ``build_tensor_specs()`` and golden."""
    ns = runpy.run_path(str(p), run_name=f"_pl_kernel_{p.stem}")
    kernels = [v for k, v in ns.items() if isinstance(v, pypto_compat.JITFunction)
               and v.kind == "jit" and getattr(v.fn, "__module__", None) == ns.get("__name__")]
    specs_fn = ns.get("build_tensor_specs")
    goldens = [v for k, v in ns.items() if k.startswith("golden_") and callable(v)
               and getattr(v, "__module__", None) == ns.get("__name__")]
    if len(kernels) != 1 or specs_fn is None or len(goldens) != 1:
        raise CannotRun(f"{p.name} has no __main__, and not one @pl.jit kernel "
                        f"({len(kernels)}), build_tensor_specs ({'yes' if specs_fn else 'no'}) "
                        f"and one golden_* function ({len(goldens)}) to run instead; `lowering "
                        f"sweep` judges it through the files that run its kernels")
    h.run_jit(fn=kernels[0], specs=specs_fn(), golden_fn=goldens[0])


def render(res: FileResult, console: Any = None) -> None:
    """The verdict on one file as a table that fits 100 columns: a row per case and output,
    then each failing output's detail, each finding, and the verdict line."""
    from rich.markup import escape as esc
    from rich.table import Table

    from lowering.report import make_console

    console = console or make_console()
    t = Table(title=f"{esc(res.path)}  ({res.against}, platform {res.platform}, "
                    f"seed {res.seed})",
              title_justify="left", box=None, pad_edge=False)
    for col, just in (("case", "left"), ("status", "left"), ("output", "left"),
                      ("comparator", "left"), ("max abs", "right"), ("max ulp", "right"),
                      ("differ %", "right"), ("s emu/gold", "right")):
        t.add_column(col, justify=just, overflow="fold", max_width=28)
    style = {PASS: "green", FAIL: "bold red", CANNOT_RUN: "yellow"}
    for c in res.cases:
        rows = c.outputs or [None]
        for i, o in enumerate(rows):
            head = [esc(c.label), f"[{style[c.status]}]{c.status}[/]"] if i == 0 else ["", ""]
            if o is None or o.diff is None:
                cells = [esc(o.name) if o else "—", esc(o.comparator) if o else "", "", "", ""]
            else:
                d = o.diff
                cells = [esc(o.name) + ("" if o.ok else " [red]✗[/]"), esc(o.comparator),
                         f"{d.max_abs:.3g}", str(d.max_ulp), f"{100 * d.differ_ratio:.2f}"]
            secs = f"{c.emulator_s:.2f}/{c.golden_s:.2f}" if i == 0 else ""
            t.add_row(*head, *cells, secs)
    console.print(t)
    for c in res.cases:
        for o in c.outputs:
            if not o.ok:
                console.print(f"  [red]{esc(c.label)} {esc(o.name)}[/]: {esc(o.detail)}",
                              highlight=False)
        for f in c.findings:
            color = "red" if f.severity == "fail" else "yellow"
            console.print(f"  [{color}]{f.severity.upper()} {esc(f'[{f.check}]')}[/] "
                          f"{esc(f.message)}", highlight=False)
        if c.error:
            console.print(f"  [red]{esc(c.label)}[/]: {esc(c.error)}", highlight=False)
        if c.dsref:
            console.print(f"  {esc(c.label)} against dsref: {esc(c.dsref)}", highlight=False)
        for n in c.notes:
            console.print(f"    {esc(n)}", highlight=False)
    if not res.cases and res.reason:
        console.print(f"  {esc(res.reason)}", highlight=False)
    color = {PASS: "green", FAIL: "red", CANNOT_RUN: "yellow"}[res.verdict]
    console.print(f"[{color}]{res.verdict}[/] {esc(res.path)}", highlight=False)
