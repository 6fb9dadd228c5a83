"""``lowering run-kernel``: run an unmodified pypto-lib ``pl`` kernel file on the tile emulator
and diff it against dsref.

    lowering run-kernel FILE --entry NAME [--model M --config C --batch B --seq S --seed N]
                         [--data DIR] [--map KERNEL_TENSOR=DSREF_NAME ...]
                         [--scalar NAME=VALUE ...] [--platform a2a3|a5] [--emulate]
                         [--json FILE] [--quiet]

Steps: install the emulated ``pypto.language`` (only if the real one is absent, or with
``--emulate``); import FILE with its directory first on ``sys.path`` (sibling ``config``
modules); build the entry (a ``build_*`` factory returning a ``@pl.program`` class, the class
itself, a method ``Class.method``, or a ``@pl.jit`` function); bind its parameters by name to
dsref tensors (``--map`` renames); check every annotation against the bound array; run with
all emulator checks; diff every output, and every ``--map``-ped kernel-internal GM tensor,
against dsref. The report has one row group per dsref stage plus one for the kernel's checks.
Afterwards ``sys.modules`` holds neither ``pypto.language`` nor the kernel's modules.

Exit status: 0 all pass, 1 a check or a diff failed, 2 bad usage, bad input, a type-check
mismatch or an unsupported ``pl`` API.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
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
from dsref.config import MODEL_VARIANTS
from dsref.model import STAGES
from lowering import pypto_compat
from lowering.diff import judge
from lowering.pipeline import judge_observed
from lowering.pypto_compat import Direction, DynVar, JITFunction, ScalarType, TensorType
from lowering.report import (
    FAIL,
    PASS,
    RegionReport,
    Report,
    exit_code,
    render,
    table_wanted,
    write_json,
)
from lowering.tile import core
from lowering.tile import run_kernel as _run_tile_kernel
from lowering.tile.dtypes import DType, as_dtype
from lowering.tolerances import DEFAULT_TOLERANCE, TOLERANCES

#: tiny preset per model, used when --config is not given
DEFAULT_CONFIGS = {"v32.decode_front": "v32-tiny", "v4.qkv_proj_rope": "v4-tiny"}


class KernelFileError(ValueError):
    """The kernel file, its entry or its bound tensors are unusable (exit 2). Multi-line
    messages carry one problem per line."""


# -- loading -----------------------------------------------------------------------------------


def _sibling_modules(directory: Path) -> set[str]:
    names = {p.stem for p in directory.glob("*.py")}
    names |= {p.parent.name for p in directory.glob("*/__init__.py")}
    return names


@contextlib.contextmanager
def loaded_module(path: str | os.PathLike, *, emulate: bool = False) -> Iterator[ModuleType]:
    """Import the kernel file ``path`` under the emulated ``pypto.language``.

    Its directory goes first on ``sys.path``; modules of the same names as the directory's
    files (``config``) are set aside while the file runs, and every module imported from that
    directory is removed afterwards, so repeated runs of different files do not leak.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise KernelFileError(f"{path}: no such kernel file")
    directory = path.parent
    siblings = _sibling_modules(directory)
    stashed = {n: sys.modules.pop(n) for n in list(sys.modules)
               if n.split(".")[0] in siblings}
    before = set(sys.modules)
    sys.path.insert(0, str(directory))
    modname = f"_pl_kernel_{path.stem}_{abs(hash(str(path)))}"
    try:
        with pypto_compat.installed(force=emulate):
            spec = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            try:
                spec.loader.exec_module(module)
            except KernelFileError:
                raise
            except Exception as e:
                raise _kernel_error(e, directory, f"importing {path.name}") from e
            yield module
    except pypto_compat.RealPyptoInstalled as e:
        raise KernelFileError(str(e)) from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))
        for n in set(sys.modules) - before:
            m = sys.modules.get(n)
            f = getattr(m, "__file__", None) or ""
            if n == modname or n.split(".")[0] in siblings or f.startswith(str(directory)):
                sys.modules.pop(n, None)
        sys.modules.pop(modname, None)
        sys.modules.update(stashed)


def _kernel_error(e: BaseException, directory: Path, doing: str) -> KernelFileError:
    """An exception raised by kernel code, located at the innermost frame in the kernel's
    directory (unsupported-API errors already name their line)."""
    if isinstance(e, pypto_compat.UnsupportedAPI):
        return KernelFileError(str(e))
    where = ""
    for fs in reversed(traceback.extract_tb(e.__traceback__)):
        if fs.filename.startswith(str(directory)):
            where = f" at {fs.filename}:{fs.lineno}"
            break
    if isinstance(e, SyntaxError) and e.filename:
        where = f" at {e.filename}:{e.lineno}"
    return KernelFileError(f"{doing}{where}: {type(e).__name__}: {e}")


# -- the entry -----------------------------------------------------------------------------------


@dataclass
class Param:
    """One kernel parameter: ``direction`` 'in' | 'out' | 'inout' (from pl.Out / pl.InOut;
    'in' otherwise), ``type`` the annotation's TensorType / ScalarType or None."""

    name: str
    direction: str
    type: Any
    default: Any = inspect.Parameter.empty

    @property
    def scalar(self) -> bool:
        return isinstance(self.type, ScalarType) or self.type in (int, float, bool)


@dataclass
class Entry:
    fn: Callable[..., Any]
    params: list[Param]
    label: str


def _annotations(fn: Callable) -> dict[str, Any]:
    try:
        return inspect.get_annotations(fn, eval_str=True)
    except Exception:  # noqa: BLE001 - unevaluable string annotations: unchecked
        return dict(getattr(fn, "__annotations__", {}))


def params_of(fn: Callable) -> list[Param]:
    target = fn.fn if isinstance(fn, JITFunction) else fn
    ann = _annotations(inspect.unwrap(getattr(target, "__func__", target)))
    out = []
    for p in inspect.signature(target).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        t = ann.get(p.name)
        direction = "in"
        if isinstance(t, Direction):
            direction, t = t.direction, t.inner
        if isinstance(t, type) and t.__name__ in ("Tensor", "Tile") and hasattr(t, "__mro__"):
            t = TensorType(None, None)  # bare pl.Tensor
        out.append(Param(p.name, direction, t, p.default))
    return out


def _functions(cls: type) -> dict[str, Callable]:
    return {n: f for n, f in vars(cls).items() if getattr(f, "__pl_kind__", None) == "function"}


def _pick_method(cls: type, method: str | None, label: str) -> tuple[str, Callable]:
    fns = _functions(cls)
    if not fns:
        raise KernelFileError(f"{label}: the @pl.program class has no @pl.function method")
    if method is not None:
        if method not in fns:
            raise KernelFileError(f"{label}: no @pl.function {method!r} (has {sorted(fns)})")
        return method, fns[method]
    if len(fns) == 1:
        return next(iter(fns.items()))
    top = [n for n, f in fns.items() if getattr(getattr(f, "__pl_type__", None), "name", "")
           in ("Orchestration", "Opaque")]
    if len(top) == 1:
        return top[0], fns[top[0]]
    raise KernelFileError(f"{label}: several @pl.function methods {sorted(fns)}; pick one "
                          f"with --entry {label}.METHOD")


def build_entry(module: ModuleType, name: str) -> Entry:
    """``name``: a ``build_*`` factory (called without arguments) returning a ``@pl.program``
    class, such a class, ``Class.method`` / ``factory.method``, or a ``@pl.jit`` (or plain)
    function."""
    head, _, method = name.partition(".")
    obj = getattr(module, head, None)
    if obj is None:
        found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and (
            isinstance(v, JITFunction | type) and getattr(v, "__pl_program__", False)
            or isinstance(v, JITFunction) or (callable(v) and n.startswith("build_"))))
        raise KernelFileError(f"--entry {head}: not defined in the kernel file (entries there: "
                              f"{', '.join(found) or 'none'})")
    label = head
    if not isinstance(obj, type | JITFunction) and callable(obj) and head.startswith("build_"):
        try:
            obj = obj()
        except Exception as e:
            raise _kernel_error(e, Path(inspect.getfile(module)).parent, f"calling {head}()") from e
    if isinstance(obj, type):
        if not getattr(obj, "__pl_program__", False):
            raise KernelFileError(f"--entry {name}: {obj.__name__} is not a @pl.program class")
        mname, _ = _pick_method(obj, method or None, head)
        instance = obj()
        fn = getattr(instance, mname)
        label = f"{obj.__name__}.{mname}"
        return Entry(fn, params_of(fn), label)
    if method:
        raise KernelFileError(f"--entry {name}: {head} is a function, not a program")
    if not callable(obj):
        raise KernelFileError(f"--entry {name}: not a function or a program class")
    return Entry(obj, params_of(obj), getattr(obj, "__name__", head))


# -- binding -------------------------------------------------------------------------------------


@dataclass
class Reference:
    """What dsref provides for one run: model inputs and outputs, the stage outputs (traced
    lazily, only for ``--map`` targets that are not model outputs) and the config."""

    model: str
    cfg: Any
    batch: int
    seq: int
    seed: int | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    _stages: dict[str, np.ndarray] | None = None

    def stage_values(self) -> dict[str, np.ndarray]:
        if self._stages is None:
            from lowering.trace import trace

            self._stages = {}
            for r in trace(self.model, self.cfg, self.inputs).regions:
                for n, v in r.outputs.items():
                    self._stages.setdefault(n, v)
                    self._stages[f"{r.name}.{n}"] = v
        return self._stages

    def value(self, name: str) -> np.ndarray | None:
        if name in self.outputs:
            return self.outputs[name]
        if name in self.inputs:
            return self.inputs[name]
        return self.stage_values().get(name)

    def stage_of(self, name: str) -> str:
        """The dsref stage producing ``name`` (an output or ``stage.output``)."""
        if "." in name:
            return name.split(".")[0]
        for s in dsref.get_model(self.model).stages:
            if name in STAGES[s].outputs:
                return s
        return "inputs"


def owned_rows(ref: Reference, name: str) -> Any:
    """The elements of an in/out tensor a decode step owns (``Model.owned_index``: V3.2's cache
    rows ``b·MAX_SEQ + seq_lens[b] − 1``, ``dispatch_buf[(b + layer_id) % EP, b]``); any other
    in/out tensor is owned whole."""
    return dsref.get_model(ref.model).owned_index(ref.cfg, name, ref.inputs)


def _type_errors(p: Param, arr: np.ndarray, source: str, dyn: dict[str, tuple[int, str]]
                 ) -> list[str]:
    t = p.type
    if not isinstance(t, TensorType):
        return []
    errs = []
    got = list(arr.shape)
    if t.shape is not None:
        dims = list(t.shape)
        bad = len(dims) != len(got)
        for d, g in zip(dims, got, strict=False):
            if isinstance(d, DynVar):
                seen = dyn.setdefault(d.name, (g, p.name))
                if seen[0] != g:
                    errs.append(f"kernel parameter {p.name!r}: dynamic dim {d.name} = {g} "
                                f"here but {seen[0]} in {seen[1]!r}")
            elif isinstance(d, int) and d != g:
                bad = True
        if bad:
            want = [d.name if isinstance(d, DynVar) else d for d in dims]
            errs.append(f"kernel parameter {p.name!r}: expected shape {want}, got {got} "
                        f"from {source}")
    if t.dtype is not None:
        try:
            dt = as_dtype(arr.dtype)
        except TypeError:
            dt = None
        if dt != t.dtype:
            errs.append(f"kernel parameter {p.name!r}: expected dtype {t.dtype.name}, got "
                        f"{dt.name if dt else arr.dtype.name} from {source}")
    return errs


@dataclass
class Binding:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, tuple[tuple[int, ...], DType]]
    inouts: dict[str, tuple[np.ndarray, Any]]
    scalars: dict[str, Any]
    targets: dict[str, str]  # kernel output / inout name -> dsref name
    internal_maps: dict[str, str] = field(default_factory=dict)  # create_tensor name -> dsref


def bind(entry: Entry, ref: Reference, maps: Mapping[str, str],
         scalars: Mapping[str, str]) -> Binding:
    """Bind every parameter of ``entry`` by name (``maps`` renames) and type-check it;
    raise :class:`KernelFileError` listing every problem, one per line."""
    m = dsref.get_model(ref.model)
    b = Binding({}, {}, {}, {}, {})
    errs: list[str] = []
    dyn: dict[str, tuple[int, str]] = {}
    known = {"batch": ref.batch, "seq": ref.seq, "num_tokens": ref.batch * ref.seq,
             "tokens": ref.batch * ref.seq}
    for p in entry.params:
        if p.scalar or (p.name in scalars and p.name not in maps):
            if p.name in scalars:
                b.scalars[p.name] = _number(scalars[p.name])
            elif p.name in known:
                b.scalars[p.name] = known[p.name]
            elif p.default is inspect.Parameter.empty:
                errs.append(f"kernel parameter {p.name!r}: a scalar with no value; pass "
                            f"--scalar {p.name}=VALUE")
            continue
        target = maps.get(p.name, p.name)
        source = f"dsref {target!r}" if target == p.name else f"dsref {target!r} (--map)"
        if target in m.inouts:
            arr = ref.inputs[target]
            b.inouts[p.name] = (arr, owned_rows(ref, target))
            b.targets[p.name] = target
        elif target in ref.inputs and p.direction == "in":
            arr = ref.inputs[target]
            b.inputs[p.name] = arr
        elif target in ref.inputs:
            errs.append(f"kernel parameter {p.name!r} is pl.{'Out' if p.direction == 'out' else 'InOut'}"
                        f" but {source} is a model input")
            continue
        else:
            arr = ref.value(target) if (target in ref.outputs or p.name in maps) else None
            if arr is None:
                if p.default is not inspect.Parameter.empty:
                    continue
                errs.append(f"kernel parameter {p.name!r}: no dsref tensor of that name "
                            f"(inputs: {', '.join(ref.inputs)}; outputs: "
                            f"{', '.join(ref.outputs)}); map it with --map {p.name}=NAME")
                continue
            b.outputs[p.name] = (arr.shape, as_dtype(arr.dtype))
            b.targets[p.name] = target
        errs += _type_errors(p, np.asarray(arr), source, dyn)
    bad_maps = [k for k in maps if k not in {p.name for p in entry.params}]
    b.internal_maps = {k: maps[k] for k in bad_maps}  # resolved against kernel-internal tensors
    if errs:
        raise KernelFileError(f"{entry.label}: " + f"\n{entry.label}: ".join(errs))
    return b


def _number(s: str) -> int | float:
    try:
        return int(s)
    except ValueError:
        return float(s)


# -- running -------------------------------------------------------------------------------------


@dataclass
class KernelResult:
    report: Report
    run: Any  # lowering.tile.KernelRun
    internals: dict[str, list[np.ndarray]]


def run_file(path: str | os.PathLike, entry: str, *, model: str | None = None,
             config: str | None = None, batch: int = 4, seq: int = 1, seed: int = 0,
             seq_lens: list[int] | None = None,
             data: str | None = None, maps: Mapping[str, str] | None = None,
             scalars: Mapping[str, str] | None = None, variants: Mapping[str, Any] | None = None,
             platform: str = "a2a3", emulate: bool = False,
             permute_parallel: bool = False, tolerance: str = DEFAULT_TOLERANCE) -> KernelResult:
    """Run ``entry`` of the pypto-lib kernel file ``path`` on the emulator against dsref,
    each output judged under ``tolerance`` (``bound`` | ``pypto-lib``)."""
    maps = dict(maps or {})
    t0 = time.perf_counter()
    with loaded_module(path, emulate=emulate) as module:
        ent = build_entry(module, entry)
        ref = _reference(ent, model, config, batch, seq, seed, data, variants or {}, seq_lens)
        bnd = bind(ent, ref, maps, dict(scalars or {}))
        internals: dict[str, list[np.ndarray]] = {}

        def kernel(**tensors: Any) -> None:
            ent.fn(**tensors, **bnd.scalars)
            rt = core.current()
            for base in rt.bases.values():
                if base.kind == "internal":
                    internals.setdefault(base.name, []).append(rt.bk.to_numpy(base.data))

        kernel.__name__ = ent.label
        try:
            run = _run_tile_kernel(kernel, inputs=bnd.inputs, outputs=bnd.outputs,
                                   inouts=bnd.inouts, platform=platform, name=ent.label,
                                   seed=seed, permute_parallel=permute_parallel)
        except KernelFileError:
            raise
        except Exception as e:
            raise _kernel_error(e, Path(path).resolve().parent, f"running {ent.label}") from e
    report = _report(ent, ref, bnd, run, internals, Path(path), platform,
                     time.perf_counter() - t0, tolerance)
    return KernelResult(report, run, internals)


def _reference(ent: Entry, model: str | None, config: str | None, batch: int, seq: int,
               seed: int, data: str | None, variants: Mapping[str, Any],
               seq_lens: list[int] | None = None) -> Reference:
    if data is not None:
        g = dsref.load_golden(data)
        model = model or g.meta.get("model")
        config = config or g.meta.get("config")
        vs = {**g.meta.get("variants", {}), **variants}
        if model is None or config is None:
            raise KernelFileError(f"--data {data}: meta.json names no model/config; pass "
                                  "--model and --config")
        cfg = dsref.config(config, **{k: v for k, v in vs.items()
                                      if k in MODEL_VARIANTS[dsref.get_model(model).family]})
        return Reference(model, cfg, int(g.meta.get("batch", batch)), int(g.meta.get("seq", seq)),
                         g.meta.get("seed"), dict(g.inputs), dict(g.outputs))
    if model is None:
        model = _infer_model(ent)
    cfg = dsref.config(config or DEFAULT_CONFIGS[dsref.get_model(model).family], **dict(variants))
    if not isinstance(cfg, dsref.get_model(model).config_type):
        raise KernelFileError(f"--config {cfg.name} is not a config of {model}")
    try:
        ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=seed, seq_lens=seq_lens)
    except dsref.InputError as e:
        raise KernelFileError(f"--seq-lens: {e}") from None
    outs = dsref.run(model, cfg, ins)
    return Reference(model, cfg, batch, seq, seed, ins, outs)


def _infer_model(ent: Entry) -> str:
    """The dsref model (or the prefix of one, ``MODEL[:STAGE]``) whose tensors the entry's
    parameters name most of, the one with the fewest tensors the entry does not name among
    equals: a V3.2 scope-1 kernel is ``v32.decode_front[:decode_cache_write]``."""
    names = {p.name for p in ent.params}
    candidates = [dsref.range_name(m, stop=s) for m in dsref.model_names()
                  for s in dsref.get_model(m).stages]
    best = max(candidates, key=lambda m: _overlap(m, names))
    if _overlap(best, names)[0] == 0:
        raise KernelFileError(f"{ent.label}: cannot tell the dsref model from its parameters "
                              f"{sorted(names)}; pass --model")
    return best


def _overlap(model: str, names: set[str]) -> tuple[int, int]:
    """(how many of ``names`` are tensors of ``model``, minus how many of its tensors are not)."""
    m = dsref.get_model(model)
    tensors = set(m.input_names) | set(m.output_names)
    return len(names & tensors), -len(tensors - names)


def _report(ent: Entry, ref: Reference, bnd: Binding, run: Any,
            internals: dict[str, list[np.ndarray]], path: Path, platform: str,
            seconds: float, tolerance: str = DEFAULT_TOLERANCE) -> Report:
    """One region for the kernel's checks, then one per dsref stage with an observed output:
    every kernel output and ``--map``-ped GM tensor judged locally — against the reference
    stage on the kernel's own upstream values (``pipeline.judge_observed``; the kernel's
    summation order is unknown to dsref, so the bounds assume fp32 in any order)."""
    observed: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    extra: dict[str, list] = {}  # targets that are not stage outputs (model inputs): bitwise
    for kname, target in bnd.targets.items():
        name = _plain(target)
        observed[name], labels[name] = run.outputs[kname], _label(kname, target)
    unknown = []
    for kname, target in bnd.internal_maps.items():
        want = ref.value(target)
        if want is None:
            names = ", ".join(k for k in ref.stage_values() if "." not in k)
            raise KernelFileError(f"--map {kname}={target}: dsref has no tensor {target!r} "
                                  f"(stage outputs: {names})")
        got = internals.get(kname)
        if got is None:
            unknown.append(kname)
            continue
        g = got[-1]
        if g.size == want.size and g.shape != want.shape:
            g = g.reshape(want.shape)
        name = _plain(target)
        if ref.stage_of(target) == "inputs":
            extra.setdefault("inputs", []).append(judge(_label(kname, target), g, want, None,
                                                        tolerance=tolerance))
            continue
        observed[name], labels[name] = g, _label(kname, target)
    if unknown:
        raise KernelFileError(f"--map {', '.join(unknown)}: neither a parameter of "
                              f"{ent.label} nor a GM tensor it creates with pl.create_tensor "
                              f"(created: {', '.join(sorted(internals)) or 'none'})")
    diffs: dict[str, list] = {j.stage: j.outputs for j in judge_observed(
        ref.model, ref.cfg, ref.inputs, observed, tolerance=tolerance, labels=labels)}
    diffs.update(extra)
    order = [*dsref.get_model(ref.model).stages, "inputs"]
    regions = [RegionReport(
        name=ent.label, status=PASS if run.ok else FAIL, kernel=str(path),
        findings=list(run.findings), budget=run.budget.as_dicts(), seconds=seconds)]
    for st in sorted(diffs, key=lambda s: order.index(s) if s in order else len(order)):
        ok = all(d.ok for d in diffs[st])
        regions.append(RegionReport(name=st, status=PASS if ok else FAIL, kernel=str(path),
                                    outputs=diffs[st]))
    rep = Report(model=ref.model, config=ref.cfg.name, mode="run-kernel", backend="numpy",
                 platform=platform, batch=ref.batch, seq=ref.seq, seed=ref.seed,
                 regions=regions, variants=dsref.variant_values(ref.cfg), tolerance=tolerance)
    return rep


def _plain(target: str) -> str:
    """``stage.name`` → ``name`` (stage outputs are unique within a model)."""
    return target.split(".")[-1]


def _label(kname: str, target: str) -> str:
    return kname if kname == target else f"{kname}→{target}"


# -- command line --------------------------------------------------------------------------------


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k or not v:
            raise KernelFileError(f"{flag} {it!r}: expected NAME=VALUE")
        out[k] = v
    return out


#: the flags of dsref making the inputs and binding them by name (a file with no __main__)
_MADE_BY_DSREF = ("entry", "model", "config", "data", "map", "scalar", "seq_lens")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The ``--flags`` among ``names`` given on the command line."""
    return [f"--{n}" for n in names if getattr(args, n)]


def _dsref_flags(args: argparse.Namespace) -> list[str]:
    """The flags that say ``--reference dsref`` when ``--reference`` is not given."""
    return _given(args, (*_MADE_BY_DSREF, "variant", "semantics", "tolerance"))


def _cli_variants(args: argparse.Namespace) -> dict[str, Any]:
    """``--semantics`` / ``--variant`` as a variants dict for the run's model (``--model``,
    else ``--data``'s meta.json, else inferred from the entry's parameters)."""
    from lowering.cli import cli_variants

    model = args.model
    if model is None and args.semantics is not None:
        if args.data is not None:
            model = dsref.load_golden(args.data).meta.get("model")
        else:
            with loaded_module(args.file, emulate=args.emulate) as module:
                model = _infer_model(build_entry(
                    module, args.entry or _default_entry(args.file, args.emulate)))
    return cli_variants(args, model)


def cmd_run_kernel(args: argparse.Namespace) -> int:
    # no --reference: dsref when a dsref-only flag says so, else the file's own golden
    if (args.reference or ("dsref" if _dsref_flags(args) else "golden")) == "golden":
        return _cmd_golden(args)
    if not _made_by_dsref(args) and _has_own_main(args.file):
        return _cmd_golden(args, against_dsref=True)  # its own inputs, judged against dsref
    if args.progress:
        print("lowering: error: --progress belongs to --reference golden", file=sys.stderr)
        return 2
    try:
        res = run_file(args.file, args.entry or _default_entry(args.file, args.emulate),
                       model=args.model, config=args.config,
                       batch=4 if args.batch is None else args.batch,
                       seq=1 if args.seq is None else args.seq, seed=args.seed,
                       seq_lens=args.seq_lens, data=args.data,
                       maps=_pairs(args.map, "--map"), scalars=_pairs(args.scalar, "--scalar"),
                       variants=_cli_variants(args), platform=args.platform,
                       emulate=args.emulate, permute_parallel=args.permute_parallel,
                       tolerance=args.tolerance or DEFAULT_TOLERANCE)
    except KernelFileError as e:
        for line in str(e).splitlines():
            print(f"lowering: error: {line}", file=sys.stderr)
        return 2
    if table_wanted(args):
        render([res.report], wide=args.wide)
    if args.json:
        write_json(args.json, res.report.to_dict())
    return exit_code([res.report])


def _made_by_dsref(args: argparse.Namespace) -> list[str]:
    """The flags that ask for dsref to make the inputs and bind them by name (the first way in
    to ``--reference dsref``: a kernel file with no ``__main__`` of its own)."""
    return _given(args, (*_MADE_BY_DSREF, "batch", "seq"))


def _has_own_main(path: str) -> bool:
    from lowering.harness import has_main

    try:
        return has_main(Path(path).read_text())
    except (OSError, SyntaxError):
        return False


def _cmd_golden(args: argparse.Namespace, against_dsref: bool = False) -> int:
    """``run-kernel FILE``: the file's own __main__, specs, golden and comparators
    (``against_dsref``: and each call judged against dsref, its tensors bound without flags)."""
    from lowering import harness

    dsref_only = [] if against_dsref else _dsref_flags(args)
    if dsref_only:
        print(f"lowering: error: {', '.join(dsref_only)} belong to --reference dsref",
              file=sys.stderr)
        return 2
    try:
        env = _pairs(args.env, "--env")
    except KernelFileError as e:
        print(f"lowering: error: {e}", file=sys.stderr)
        return 2
    harness.cap_memory()  # past the machine's memory: a clean CANNOT RUN, not an OOM kill
    judge = None
    if against_dsref:
        judge = harness.DsrefJudge(args.semantics, dsref.parse_variants(args.variant),
                                   args.tolerance or DEFAULT_TOLERANCE)
    res = harness.run_file(args.file, mode=args.mode, seed=args.seed, platform=args.platform,
                           env=env, permute_parallel=args.permute_parallel,
                           progress=args.progress, dsref=judge)
    if args.json:
        write_json(args.json, res.to_dict())
    if res.verdict == harness.CANNOT_RUN:
        print(f"lowering: cannot run {args.file}: {res.reason}", file=sys.stderr)
        return 2
    if table_wanted(args):
        harness.render(res)
    return res.exit


def _default_entry(path: str, emulate: bool) -> str:
    """The kernel of a file run against dsref without --entry: its single ``build_*`` factory,
    ``@pl.program`` class or ``@pl.jit`` kernel."""
    with loaded_module(path, emulate=emulate) as module:
        found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and (
            (isinstance(v, type) and getattr(v, "__pl_program__", False))
            or (isinstance(v, JITFunction) and v.kind == "jit")
            or (callable(v) and n.startswith("build_") and n.endswith("_program"))))
    if len(found) != 1:
        raise KernelFileError(f"{path}: {len(found)} candidate kernels "
                              f"({', '.join(found) or 'none'}); pick one with --entry")
    return found[0]


def add_subparser(sub: Any) -> None:
    """Register ``run-kernel`` on the ``lowering`` command line."""
    from lowering.report import COLUMN_HELP

    r = sub.add_parser("run-kernel", help="run a pypto-lib pl kernel file on the emulator "
                                          "against its own golden (or dsref)",
                       epilog="with --reference dsref, the " + COLUMN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", help="the kernel file (import pypto.language as pl)")
    r.add_argument("--reference", choices=("golden", "dsref"),
                   help="golden (default unless a dsref flag is given): run the file's __main__ "
                        "with its specs, golden function and comparators; dsref: bind the kernel "
                        "to a dsref model")
    r.add_argument("--mode", help="the file's --mode (default: what its __main__ runs, "
                                  "usually every mode in turn)")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the file (e.g. DEEPSEEK_V4_VARIANT=pro)")
    r.add_argument("--entry",
                   help="(dsref) build_* factory, @pl.program class (optionally .METHOD) or "
                        "@pl.jit function; default: the file's single kernel")
    r.add_argument("--model", choices=dsref.model_names(),
                   help="dsref model (default: inferred from the parameter names)")
    r.add_argument("--config", help="dsref config (default: the model's tiny preset)")
    r.add_argument("--batch", type=int, default=None,
                   help="(dsref-made inputs) batch entries (default 4)")
    r.add_argument("--seq", type=int, default=None,
                   help="(dsref-made inputs) tokens per entry (default 1)")
    from lowering.cli import semantics_flags, seq_lens_arg

    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--seq-lens", type=seq_lens_arg, metavar="L,L,...",
                   help="(dsref-made V3.2 inputs) each entry's context length, one per entry, "
                        "instead of drawn ones")
    semantics_flags(r)
    r.add_argument("--tolerance", choices=TOLERANCES, default=None,
                   help="(dsref) bound (default): exact-or-bounded per element; pypto-lib: "
                        "upstream's ratio_allclose presets (docs/verdicts.md)")
    r.add_argument("--data", metavar="DIR", help="a dsref golden directory instead of "
                                                 "make_inputs + run")
    r.add_argument("--map", action="append", default=[], metavar="KERNEL_TENSOR=DSREF_NAME",
                   help="bind a parameter to another dsref tensor, or diff a pl.create_tensor "
                        "GM tensor against a dsref stage output (NAME or STAGE.NAME)")
    r.add_argument("--scalar", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a pl.Scalar parameter")
    r.add_argument("--platform", choices=("a2a3", "a5"), default="a2a3")
    r.add_argument("--emulate", action="store_true",
                   help="use the emulated pypto.language even if the real one is installed")
    r.add_argument("--permute-parallel", action="store_true",
                   help="run pl.parallel iterations in a seeded random order")
    r.add_argument("--json", metavar="FILE")
    r.add_argument("--quiet", action="store_true", help="no table")
    r.add_argument("--wide", action="store_true",
                   help="(dsref) every column, 200 columns in a pipe")
    r.add_argument("--progress", action="store_true",
                   help="print each phase as it starts, with the seconds since the start, on "
                        "stderr: the file's own code, making the inputs, the emulator, the "
                        "golden, comparing (--reference golden)")
    r.set_defaults(fn=cmd_run_kernel)
