"""Diff reports: per region and output, as a terminal table (rich) and as JSON.

Verdicts (``Report.verdict``; exit status of ``lowering diff`` / ``run-kernel`` /
``diff-files``, :func:`exit_code`):

- ``PASS`` (exit 0): every region ran a kernel, and every kernel's outputs and checks passed;
- ``FAIL`` (exit 1): a region failed (its outputs, an emulator check, or an error raised in
  kernel code, named by file:line), or the trace has unrecognised structure;
- ``PARTIAL`` (exit 3): nothing failed, but at least one region ran the reference instead of a
  kernel (no kernel, or the kernel does not implement the config's semantics:
  ``registry.Unsupported``) — that part of the model was not checked, so it is not a PASS.

Exit 2 stays "bad usage or input" (unknown names, unreadable data files, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lowering.diff import OutputDiff
from lowering.tile import Finding
from lowering.tile.findings import HasFindings

PASS, FAIL, REFERENCE, PARTIAL = "PASS", "FAIL", "reference", "PARTIAL"
EXIT = {PASS: 0, FAIL: 1, PARTIAL: 3}


def exit_code(reports: list[Report]) -> int:
    """1 if any report FAILs, else 3 if any is PARTIAL, else 0."""
    verdicts = {r.verdict for r in reports}
    return next((EXIT[v] for v in (FAIL, PARTIAL) if v in verdicts), 0)


@dataclass
class RegionReport(HasFindings):
    """One region: ``status`` PASS / FAIL, or ``reference`` when no kernel covers it."""

    name: str
    status: str
    kernel: str | None = None  # kernel file
    tiling: dict[str, Any] | None = None
    outputs: list[OutputDiff] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    budget: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # why a region with a kernel ran the reference instead
    # (kernel output, reference) per output, for plots; not serialised
    values: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status, "kernel": self.kernel, "tiling": self.tiling,
            "seconds": round(self.seconds, 4), "outputs": [o.to_dict() for o in self.outputs],
            "findings": [_finding(f) for f in self.findings], "budget": self.budget,
            "note": self.note,
        }


@dataclass
class Report:
    model: str
    config: str
    mode: str
    backend: str
    platform: str
    batch: int
    seq: int
    seed: int | None
    regions: list[RegionReport]
    unrecognised: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. inputs a diff-files run ignored
    tolerance: str = ""  # how outputs were judged: "bound" | "pypto-lib" (docs/verdicts.md);
    # "" where the comparators are not ours (run-kernel FILE: the file's own golden)

    @property
    def verdict(self) -> str:
        """FAIL when any region fails or the trace has unrecognised structure; else PARTIAL
        when any region ran the reference instead of a kernel; else PASS."""
        if self.unrecognised or any(r.status == FAIL for r in self.regions):
            return FAIL
        return PARTIAL if self.reference_regions else PASS

    @property
    def reference_regions(self) -> list[str]:
        """Regions that ran the reference, not a kernel (their outputs were not checked)."""
        return [r.name for r in self.regions if r.status == REFERENCE]

    @property
    def first_fail(self) -> str | None:
        return next((r.name for r in self.regions if r.status == FAIL), None)

    def region(self, name: str) -> RegionReport:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "config": self.config, "variants": self.variants, "mode": self.mode,
            "backend": self.backend, "platform": self.platform, "batch": self.batch, "seq": self.seq,
            "seed": self.seed, "tolerance": self.tolerance, "verdict": self.verdict,
            "first_fail": self.first_fail,
            "reference_regions": self.reference_regions,
            "unrecognised": self.unrecognised, "notes": self.notes,
            "regions": [r.to_dict() for r in self.regions],
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=kw.pop("indent", 2), default=_jsonable, **kw)


def kernel_error(e: BaseException, kernel: str) -> Finding:
    """A fail finding (check ``error``) for an exception raised while ``kernel`` ran, located at
    the innermost frame in kernel code: outside the emulator and the rest of ``lowering`` (the
    hand-tiled kernels under ``lowering/kernels`` count as kernel code) and outside installed
    packages and the standard library."""
    import os
    import sysconfig
    import traceback

    pkg = os.path.dirname(os.path.abspath(__file__))
    kernels = os.path.join(pkg, "kernels")
    libs = {os.path.abspath(p) for k, p in sysconfig.get_paths().items()
            if k in ("stdlib", "platstdlib", "purelib", "platlib")}

    def kernel_code(fn: str) -> bool:
        fn = os.path.abspath(fn)
        if fn.startswith(kernels + os.sep):
            return True
        return not fn.startswith(pkg + os.sep) and not any(fn.startswith(p + os.sep) for p in libs)

    frames = traceback.extract_tb(e.__traceback__)
    site = next((f for f in reversed(frames) if kernel_code(f.filename)), None)
    where = f" at {site.filename}:{site.lineno}" if site else ""
    return Finding("error", "fail", kernel, None, (), None,
                   f"{kernel}: raised in kernel code{where}: {type(e).__name__}: {e}")


def _finding(f: Finding) -> dict[str, Any]:
    return {"check": f.check, "severity": f.severity, "kernel": f.kernel, "scope": f.scope,
            "loop_indices": [list(i) for i in f.loop_indices], "tensor": f.tensor,
            "message": f.message}


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and o != o:
        return None
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def check_outputs(args: Any) -> None:
    """``--json`` / ``--plot`` targets, checked before any work (ValueError: exit 2): ``-``
    (stdout) for ``--json``, else a file in an existing directory."""
    from pathlib import Path

    for flag in ("json", "plot"):
        path = getattr(args, flag, None)
        if path is None or (flag == "json" and path == "-"):
            continue
        if Path(path).is_dir():
            raise ValueError(f"--{flag} {path}: a directory, not a file")
        if not Path(path).resolve().parent.is_dir():
            raise ValueError(f"--{flag} {path}: its directory {Path(path).resolve().parent} "
                             "does not exist")


def write_json(path: str, obj: Any) -> None:
    """``--json FILE``, or ``-``: stdout (the table is then left out: :func:`table_wanted`)."""
    import json
    import sys

    text = json.dumps(obj, indent=2, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def table_wanted(args: Any) -> bool:
    """Whether a command prints its table: not with ``--quiet``, nor with ``--json -``."""
    return not args.quiet and getattr(args, "json", None) != "-"


def make_console(wide: bool = False) -> Any:
    """The terminal console of the CLIs: full width on a terminal, 100 columns in a pipe (200
    with ``wide``); a closed pipe (``| head``) raises BrokenPipeError for the CLI to end
    quietly with exit 0 (rich's own handling exits 1, which here would mean "a check
    failed")."""
    import sys

    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console(width=None if sys.stdout.isatty() else 200 if wide else 100,
                    highlight=False)


_COLUMNS = ("region", "status", "output", "check", "err/bound", "pinned %", "max ulp", "differ %",
            "pypto-lib", "cosine", "drift ulp", "checks")
#: the columns of the default (100-column) table; ``--wide`` shows all of :data:`_COLUMNS`
_NARROW = ("region", "status", "output", "check", "err/bound", "pinned %", "max ulp", "pypto-lib",
           "checks")
#: what each column means (``--help`` epilog of the commands that print the table, docs)
COLUMN_HELP = """table columns: check = exact (bitwise) or bound (a reduction in the kernel's order);
err/bound = the worst element's error in units of its bound (<= 1 passes; inf: moved where
nothing may); pinned % = elements whose bound allows one value (a 1-ulp change fails there);
max ulp / differ % = vs the reference; pypto-lib = upstream's ratio gate and its bad share;
cosine, drift ulp (--wide) = similarity, and drift from the pure reference along a chain;
checks = findings of the emulator checks (budget, race, coverage, dead write, layout):
'2f 1w' is 2 failing and 1 warning, each printed below the table; empty: none at all."""


def _output_cells(o: OutputDiff) -> list[str]:
    """One output's cells: the default verdict's figures (error in units of the bound, share of
    elements held bitwise), the pypto-lib ratio verdict beside them, the drift along a chain."""
    mark = "" if o.ok else " [red]✗[/]"
    ratio = "" if o.bound_ratio is None else ("∞" if o.bound_ratio == float("inf")
                                              else f"{o.bound_ratio:.3g}")
    pinned = "" if o.pinned is None else f"{100 * o.pinned:.2f}"
    upstream = "" if o.ratio_ok is None else (
        f"{'ok' if o.ratio_ok else 'FAIL'} {100 * o.mismatch_ratio:.2f}%")
    drift = "" if o.drift is None else str(o.drift["max_ulp"])
    return [o.name + mark, o.preset, ratio, pinned, str(o.max_ulp),
            f"{100 * o.differ_ratio:.3f}", upstream, f"{o.cosine:.7f}", drift]


def semantics_text(model: str, variants: dict[str, Any]) -> str:
    """``semantics=ds32``, or the variants off their defaults when no named semantics has
    exactly these (``variants: variance=mul_inv``)."""
    import dsref
    from dsref.config import family, semantics_of

    if not variants or family(model) not in dsref.model_names():
        return ""
    cfg = dsref.with_variants(dsref.config(next(
        c for c in dsref.config_names() if dsref.config(c).model == family(model))), **variants)
    name = semantics_of(cfg)
    if name is not None:
        return f"semantics={name}"
    off = {k: v for k, v in variants.items() if v != dsref.VARIANTS[k][0]}
    return "variants: " + ", ".join(f"{k}={v}" for k, v in off.items())


def render(reports: list[Report], console: Any = None, wide: bool = False) -> None:
    """Print each report as a rich table, then its findings, then the verdict line. The
    default table fits 100 columns (:data:`_NARROW`); ``wide``: every column."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = console or make_console(wide)
    cols = _COLUMNS if wide else _NARROW
    for rep in reports:
        title = (f"{escape(rep.model)}  config={rep.config}  batch={rep.batch} seq={rep.seq}  "
                 f"mode={rep.mode}" + (f"  tolerance={rep.tolerance}" if rep.tolerance else "")
                 + f"\n{semantics_text(rep.model, rep.variants)}  backend={rep.backend}  "
                 f"platform={rep.platform}")
        t = Table(title=title.replace("\n  ", "\n"), title_justify="left", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
        for col in cols:
            t.add_column(col, no_wrap=col in ("region", "output", "checks"),
                         justify="left" if col in ("region", "status", "output", "check") else "right")
        for r in rep.regions:
            style = {PASS: "green", FAIL: "bold red", REFERENCE: "yellow"}[r.status]
            checks = f"{len(r.failures)}f {len(r.warnings)}w" if r.findings else ""
            rows = r.outputs or [None]
            for i, o in enumerate(rows):
                cells = [r.name if i == 0 else "", f"[{style}]{r.status}[/]" if i == 0 else ""]
                if o is None:
                    cells += ["—"] + [""] * (len(_COLUMNS) - 4)
                else:
                    cells += _output_cells(o)
                cells.append(checks if i == 0 else "")
                t.add_row(*(c for c, name in zip(cells, _COLUMNS, strict=True) if name in cols))
        console.print(t)
        for r in rep.regions:
            for o in r.outputs:
                if not o.ok:
                    console.print(f"  [red]{r.name}.{o.name}[/]: {o.message}; at "
                                  f"{[list(i) for i in o.first_mismatches]}", highlight=False)
                if o.note:
                    console.print(f"  [yellow]{r.name}.{o.name}[/]: {o.note}", highlight=False)
            for f in r.findings:
                color = "red" if f.severity == "fail" else "yellow"
                console.print(f"  [{color}]{f.severity.upper()} [{f.check}][/] {f.message}",
                              markup=True, highlight=False)
        for r in rep.regions:
            if r.note:
                console.print(f"  [yellow]{r.name}[/]: reference — {r.note}")
        for u in rep.unrecognised:
            console.print(f"  [red]unrecognised[/]: {u}")
        for n in rep.notes:
            console.print(f"  note: {n}", markup=False, highlight=False)
        console.print(verdict_line(rep) + "\n")


def verdict_line(rep: Report) -> str:
    """``PASS model``, ``FAIL model (first FAIL: region)``, or ``PARTIAL model — N region(s)
    ran the reference, not a kernel: a, b (exit 3)`` (rich markup)."""
    from rich.markup import escape

    color = {PASS: "green", FAIL: "red", PARTIAL: "yellow"}[rep.verdict]
    line = f"[{color}]{rep.verdict}[/] {escape(rep.model)}"
    if rep.first_fail:
        line += f" (first FAIL: {rep.first_fail})"
    if rep.verdict == PARTIAL:
        refs = rep.reference_regions
        line += (f" — {len(refs)} region(s) ran the reference, not a kernel: {', '.join(refs)} "
                 "(not checked; exit 3)")
    return line
