"""``lowering fingerprint``: which numerics did this kernel implement?

For every region (dsref stage) whose outputs a run exposes, the fraction of output elements
that are bit-identical (up to the sign of zero; NaN equals NaN) to the stage evaluated under
each named semantics (``dsref.SEMANTICS``) and each single variant (one non-default value on
top of ``ds32``), best match first::

    q_lora_rmsnorm  pypto-lib-pr134 = pypto-lib-head = q_norm_input=fp32 100.000% · ds32 98.3%

Teacher-forced: each candidate's stage runs on the values the kernel actually consumed — the
model inputs, and every upstream value the run exposes (another region's kernel output, a
stored ``out/`` tensor, a ``--map``-ped GM tensor) in place of the candidate's own; an
intermediate nobody exposed is the candidate's own value. A consumed value of another dtype
than the candidate's stage takes (PR #134's fp32 qr where ds32 has bf16) is converted as that
candidate would store it (rounded to bf16 with its ``cast``, or widened exactly); an output of
another dtype than the candidate's matches nothing. In/out caches are compared on the rows the
step owns.

Three sources of outputs:

- ``MODEL --config C --batch B ...``: the hand-tiled kernels, chained (each kernel on its
  upstream kernels' outputs), built for ``--semantics`` / ``--variant``;
- ``--data DIR``: the outputs stored in a golden / snapshot directory;
- ``FILE``: a ``run-kernel --reference dsref`` run of a pypto-lib kernel file (its outputs and
  ``--map``-ped tensors).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import dsref
from dsref.config import MODEL_VARIANTS, STAGE_VARIANTS, VARIANTS
from dsref.model import STAGES
from dsref.progress import wrap

BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class Match:
    """One candidate semantics on one region: ``equal`` of ``total`` elements bit-identical."""

    label: str  # a semantics name, or "key=value" for a single variant
    kind: str  # "semantics" | "variant"
    equal: int
    total: int
    note: str = ""  # e.g. "dtype float32 != bfloat16"

    @property
    def fraction(self) -> float:
        return self.equal / self.total if self.total else 0.0


@dataclass
class RegionPrint:
    """A region's matches, best first (ties: semantics before variants, in candidate order)."""

    region: str
    outputs: list[str]
    matches: list[Match]
    note: str = ""  # e.g. why a region has no observed outputs

    @property
    def best(self) -> list[Match]:
        """Every candidate tied for the best fraction."""
        if not self.matches:
            return []
        top = self.matches[0].equal
        return [m for m in self.matches if m.equal == top]

    def line(self) -> str:
        return f"{self.region}: {_groups(self.matches)}" if self.matches else \
            f"{self.region}: {self.note}"

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "outputs": self.outputs, "note": self.note,
                "matches": [{"label": m.label, "kind": m.kind, "equal": m.equal,
                             "total": m.total, "fraction": m.fraction, "note": m.note}
                            for m in self.matches]}


@dataclass
class Fingerprint:
    model: str
    config: str
    source: str  # "kernels (semantics X)", "data DIR", "file FILE"
    regions: list[RegionPrint]
    notes: list[str] = field(default_factory=list)

    def overall(self) -> list[Match]:
        """Candidates by equal elements summed over every region, best first."""
        tot: dict[tuple[str, str], list[int]] = {}
        for r in self.regions:
            for m in r.matches:
                acc = tot.setdefault((m.label, m.kind), [0, 0])
                acc[0] += m.equal
                acc[1] += m.total
        order = {k: i for i, k in enumerate(tot)}
        out = [Match(lbl, kind, e, t) for (lbl, kind), (e, t) in tot.items()]
        return sorted(out, key=lambda m: (-m.equal, m.kind != "semantics", order[(m.label, m.kind)]))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config, "source": self.source,
                "notes": self.notes, "regions": [r.to_dict() for r in self.regions],
                "overall": [{"label": m.label, "kind": m.kind, "fraction": m.fraction}
                            for m in self.overall()]}

    def to_text(self) -> str:
        # wrapped like the rest: a long data path goes onto its own line
        lines = [wrap(f"fingerprint {self.model}  config={self.config}  source={self.source}",
                      "  ")]
        width = max((len(r.region) for r in self.regions), default=0)
        for r in self.regions:  # wrapped at 100 columns, under the region's column
            body = _groups(r.matches) if r.matches else r.note
            lines.append(wrap(f"  {r.region:<{width}}  {body}", " " * (width + 4)))
        best = self.overall()
        if best:
            top = [m for m in best if m.equal == best[0].equal]
            lines.append(f"  overall: {' = '.join(m.label for m in top)} "
                         f"{_pct(top[0].fraction)} of the observed elements")
        lines += [wrap(f"  note: {n}", "        ") for n in self.notes]
        return "\n".join(lines)


MAX_TIED = 6  # candidates named per tie group in the text rendering


def _pct(f: float) -> str:
    return f"{100 * f:.3f}%"


def _groups(matches: list[Match]) -> str:
    """``a = b 100.000% · c 98.300%``: candidates with equal counts joined by ``=``."""
    parts, i = [], 0
    while i < len(matches):
        j = i
        while j < len(matches) and matches[j].equal == matches[i].equal \
                and matches[j].total == matches[i].total:
            j += 1
        group = matches[i:j]
        note = f" ({group[0].note})" if group[0].note and all(m.note for m in group) else ""
        names = [m.label for m in group]
        if len(names) > MAX_TIED:  # the JSON has them all
            names = [*names[:MAX_TIED - 1], f"… (+{len(names) - MAX_TIED + 1})"]
        parts.append(f"{' = '.join(names)} {_pct(group[0].fraction)}{note}")
        i = j
    return " · ".join(parts)


# ---- candidates ----------------------------------------------------------------------------------


# not a semantics anyone implements: XLA's own fp32 dot order (a speed option of dsref)
NOT_CANDIDATES = {"accumulate"}


def candidates(cfg: Any) -> list[tuple[str, str, Any]]:
    """``(label, kind, config)``: every named semantics applying to ``cfg``'s model, then every
    single non-default variant value on top of ``ds32`` (``cfg``'s dims throughout), except
    ``accumulate=fp32`` (XLA's unspecified fp32 dot order is no implementation's semantics)."""
    out = [(name, "semantics", dsref.with_semantics(cfg, name))
           for name in dsref.semantics_names(cfg.model)]
    base = dsref.with_semantics(cfg, "ds32")
    for key in MODEL_VARIANTS[cfg.model]:
        if key in NOT_CANDIDATES:
            continue
        for value in VARIANTS[key][1:]:
            try:
                out.append((f"{key}={_fmt(value)}", "variant", dsref.with_variants(base, **{key: value})))
            except ValueError:  # a variant this config's dims cannot take (kv_nope_fp8)
                continue
    return out


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# ---- the teacher-forced comparison -------------------------------------------------------------


class _Cache:
    """Stage results and dtype conversions shared by the candidates: a stage depends only on
    its ``STAGE_VARIANTS`` (and its inputs), so candidates that agree there share one run."""

    def __init__(self) -> None:
        self.stage: dict[tuple, tuple[np.ndarray, ...]] = {}
        self.conv: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # key -> (source, result)
        self.seen: dict[tuple, np.ndarray] = {}  # content -> the first array with it

    def same(self, a: np.ndarray) -> np.ndarray:
        """The first array seen with ``a``'s dtype, shape and bytes (so that candidates whose
        upstream values agree share the downstream stage runs)."""
        a = np.ascontiguousarray(a)
        key = (a.dtype.str, a.shape, hashlib.blake2b(a.view(np.uint8), digest_size=16).digest())
        return self.seen.setdefault(key, a)

    def convert(self, a: np.ndarray, dtype: np.dtype, cast: str) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype == dtype:
            return a
        key = (id(a), dtype.str if dtype != BF16 else "bf16", cast)
        hit = self.conv.get(key)
        if hit is None or hit[0] is not a:
            if dtype == BF16 and a.dtype.kind == "f":
                out = dsref.numerics.to_bf16(a, cast) if a.dtype != BF16 else a
            else:
                out = a.astype(dtype)
            hit = self.conv[key] = (a, out)
        return hit[1]

    def run(self, stage: str, cfg: Any, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        canon = dsref.with_variants(dsref.with_semantics(cfg, "ds32"),
                                    **{k: getattr(cfg, k) for k in STAGE_VARIANTS[stage]})
        key = (stage, canon, tuple(id(a) for a in args))
        hit = self.stage.get(key)
        if hit is None:
            outs = tuple(self.same(o) for o in dsref.run_stage(stage, canon, *args))
            hit = self.stage[key] = (*outs, args)  # args kept alive: their ids stay unique
        return hit[:-1]


def _equal(got: np.ndarray, want: np.ndarray) -> int:
    """Elements equal as values (−0.0 == +0.0), NaN equal to NaN; integers exactly."""
    if got.dtype.kind in "iub":
        return int(np.count_nonzero(got == want))
    g, w = got.astype(np.float64), want.astype(np.float64)
    return int(np.count_nonzero((g == w) | (np.isnan(g) & np.isnan(w))))


def _rows(model: str, cfg: Any, name: str, inputs: Mapping[str, np.ndarray]) -> Any:
    """The elements of an in/out output a step owns (V3.2's cache rows), else everything."""
    return dsref.get_model(model).owned_index(cfg, name, inputs)


def fingerprint(model: str, cfg: Any, inputs: Mapping[str, np.ndarray],
                observed: Mapping[str, np.ndarray], *, source: str = "",
                notes: list[str] | None = None, labels: Any = None) -> Fingerprint:
    """Match ``observed`` stage outputs (by dsref name, or ``stage.name``) against every
    candidate semantics (``labels``: only those), teacher-forced on ``inputs`` and the
    observed values (see the module docstring)."""
    from dsref.run import infer_batch_seq
    from dsref.spec import _stage_structs

    m = dsref.get_model(model)
    batch, seq = infer_batch_seq(m, inputs)
    cache = _Cache()
    inputs = {k: cache.same(v) for k, v in inputs.items()}
    observed = {k: cache.same(v) for k, v in observed.items()}
    counts: dict[str, list[Match]] = {}
    for label, kind, cand in candidates(cfg):
        if labels is not None and label not in labels:
            continue
        env: dict[str, np.ndarray] = dict(inputs)
        for stage in m.stages:
            st = STAGES[stage]
            structs, out_structs = _stage_structs(stage, cand, batch, seq)
            args = [cache.convert(env[a], np.dtype(structs[a].dtype), cand.cast) for a in st.inputs]
            outs = cache.run(stage, cand, args)
            total = equal = 0
            note = ""
            for name, want in zip(st.outputs, outs, strict=True):
                got = observed.get(name, observed.get(f"{stage}.{name}"))
                if got is None:
                    env[name] = want
                    continue
                got = np.asarray(got)
                env[name] = got
                rows = _rows(model, cand, name, inputs)
                g, w = got[rows], want[rows]
                total += w.size
                if g.dtype != w.dtype or g.shape != w.shape:
                    note = f"{name}: {g.dtype.name}{list(g.shape)} is not {w.dtype.name}{list(w.shape)}"
                    continue
                equal += _equal(g, w)
            if total:
                counts.setdefault(stage, []).append(Match(label, kind, equal, total, note))
    regions = []
    for stage in m.stages:
        if stage not in counts:
            continue
        ms = counts[stage]
        order = {id(x): i for i, x in enumerate(ms)}
        ms = sorted(ms, key=lambda x: (-x.equal, x.kind != "semantics", order[id(x)]))
        outs = [n for n in STAGES[stage].outputs
                if n in observed or f"{stage}.{n}" in observed]
        regions.append(RegionPrint(stage, outs, ms))
    return Fingerprint(model, cfg.name, source, regions, list(notes or []))


# ---- the three sources ------------------------------------------------------------------------------


def of_kernels(model: str, cfg: Any, inputs: Mapping[str, np.ndarray], *, labels: Any = None,
               **diff_kw: Any) -> Fingerprint:
    """The hand-tiled kernels at ``cfg`` (their semantics), run chained (``labels``: only
    those candidates)."""
    from lowering import pipeline
    from lowering.report import REFERENCE

    rep = pipeline.diff(model, cfg, inputs, mode="chained", **diff_kw)
    observed, notes = {}, []
    for r in rep.regions:
        if r.status == REFERENCE:
            notes.append(f"{r.name}: ran the reference ({r.note or 'no kernel'}); not fingerprinted")
        elif not r.values:
            notes.append(f"{r.name}: no kernel outputs ({'; '.join(f.message for f in r.failures)})")
        for n, (got, _want) in r.values.items():
            observed[n] = np.asarray(got)
    sem = dsref.semantics_of(cfg) or "custom: " + ", ".join(
        f"{k}={_fmt(v)}" for k, v in dsref.variant_values(cfg).items())
    return fingerprint(model, cfg, inputs, observed, source=f"kernels (built for {sem})",
                       notes=notes, labels=labels)


def of_data(data: str, model: str | None = None, *, config: str | None = None,
            variants: Mapping[str, Any] | None = None, labels: Any = None) -> Fingerprint:
    """The outputs stored in a golden / snapshot directory (``diff-files``' layouts)."""
    from lowering import files

    golden = dsref.load_golden(data)
    meta = golden.meta
    model = model or meta.get("model")
    if model is None:
        raise files.DataError(f"{data}: no meta.json naming the model: pass MODEL")
    notes: list[str] = []
    ins = files._normalise(model, golden.inputs, notes)
    outs = dict(golden.outputs)
    cfg, _, _ = files._choose_config(model, meta, config, dict(variants or {}), ins, outs)
    return fingerprint(model, cfg, ins, outs, source=f"data {data}", notes=notes, labels=labels)


def of_file(path: str, entry: str | None = None, *, labels: Any = None, **run_kw: Any
            ) -> Fingerprint:
    """A ``run-kernel --reference dsref`` run of a kernel file: its outputs and the
    ``--map``-ped kernel-internal tensors, by the dsref names they are bound to."""
    from lowering import run_kernel as rk

    emulate = run_kw.get("emulate", False)
    res = rk.run_file(path, entry or rk._default_entry(path, emulate), **run_kw)
    rep = res.report
    model = rep.model
    cfg = dsref.config(rep.config, **rep.variants)
    maps = dict(run_kw.get("maps") or {})
    observed = {}
    for kname, arr in res.run.outputs.items():
        target = maps.get(kname, kname)
        if _is_stage_output(model, target):
            observed[target] = np.asarray(arr)
    for kname, arrs in res.internals.items():
        target = maps.get(kname)
        if target is not None and arrs and _is_stage_output(model, target):
            observed[target] = np.asarray(arrs[-1])
    ref_shape = _stage_shapes(model, cfg, rep.batch, rep.seq)
    for n, a in list(observed.items()):
        want = ref_shape.get(n.split(".")[-1])
        if want is not None and a.shape != want and a.size == int(np.prod(want)):
            observed[n] = a.reshape(want)
    data = run_kw.get("data")
    if data is not None:
        inputs = dict(dsref.load_golden(data).inputs)
    else:
        inputs = dsref.make_inputs(model, cfg, batch=rep.batch, seq=rep.seq, seed=rep.seed or 0)
    notes = [] if rep.verdict == "PASS" else [f"the run's verdict: {rep.verdict}"]
    return fingerprint(model, cfg, inputs, observed, source=f"file {path}", notes=notes,
                       labels=labels)


def _is_stage_output(model: str, name: str) -> bool:
    stage, _, out = name.rpartition(".")
    stages = dsref.get_model(model).stages
    if stage:
        return stage in stages and out in STAGES[stage].outputs
    return any(name in STAGES[s].outputs for s in stages)


def _stage_shapes(model: str, cfg: Any, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
    from dsref.spec import _stage_structs

    out = {}
    for s in dsref.get_model(model).stages:
        out.update({n: tuple(v.shape) for n, v in _stage_structs(s, cfg, batch, seq)[1].items()})
    return out


# ---- command line -------------------------------------------------------------------------------


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from lowering.cli import UsageError, cli_variants

    target = args.target
    if target is not None and target in dsref.model_names():
        if args.data is not None:
            fp = of_data(args.data, target, config=args.config, variants=cli_variants(args, target))
        else:
            if args.config is None:
                raise UsageError("--config is required with a MODEL")
            cfg = dsref.config(args.config, semantics=args.semantics,
                               **dsref.parse_variants(args.variant))
            if cfg.model != target:
                raise UsageError(f"--config {args.config} is not a config of {target}")
            ins = dsref.make_inputs(target, cfg, batch=args.batch, seq=args.seq, seed=args.seed)
            fp = of_kernels(target, cfg, ins)
    elif target is not None:
        if not Path(target).is_file():
            raise UsageError(f"{target}: neither a model ({', '.join(dsref.model_names())}) nor "
                             "a kernel file")
        from lowering.run_kernel import _cli_variants, _pairs

        args.file = target
        fp = of_file(target, args.entry, model=args.model, config=args.config, batch=args.batch,
                     seq=args.seq, seed=args.seed, data=args.data,
                     maps=_pairs(args.map, "--map"), scalars=_pairs(args.scalar, "--scalar"),
                     variants=_cli_variants(args), emulate=args.emulate)
    elif args.data is not None:
        model = _meta_model(args.data)
        fp = of_data(args.data, config=args.config, variants=cli_variants(args, model))
    else:
        raise UsageError("fingerprint: pass MODEL (with --config), --data DIR, or a kernel FILE")
    if args.json != "-":
        print(fp.to_text())
    if args.json:
        from lowering.report import write_json

        write_json(args.json, fp.to_dict())
    return 0


def _meta_model(data: str) -> str | None:
    try:
        return json.loads((Path(data) / "meta.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def add_subparser(sub: Any) -> None:
    """``lowering fingerprint (MODEL --config C ... | --data DIR | FILE ...)``."""
    from lowering.cli import semantics_flags

    p = sub.add_parser(
        "fingerprint", help="which named semantics / variants each region's outputs match "
        "(bitwise fraction, best first): of the hand-tiled kernels (MODEL), a data directory "
        "(--data DIR) or a pypto-lib kernel file (FILE)")
    p.add_argument("target", nargs="?", metavar="MODEL|FILE",
                   help=f"a model ({', '.join(dsref.model_names())}) or a kernel file")
    p.add_argument("--config", help="MODEL: required; FILE: as run-kernel; --data: as diff-files")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    semantics_flags(p)
    p.add_argument("--data", metavar="DIR", help="a golden / snapshot directory")
    p.add_argument("--model", choices=dsref.model_names(), help="(FILE) the dsref model")
    p.add_argument("--entry", help="(FILE) the kernel entry, as run-kernel")
    p.add_argument("--map", action="append", default=[], metavar="KERNEL_TENSOR=DSREF_NAME",
                   help="(FILE) as run-kernel: a --map-ped GM tensor is fingerprinted too")
    p.add_argument("--scalar", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--emulate", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(fn=cmd_fingerprint)

