"""The ``lowering`` command line (exit 0 all pass, 1 a check failed, 2 bad usage or input,
3 PARTIAL: nothing failed but some region ran the reference instead of a kernel).

    lowering plan MODEL --config C
    lowering diff [MODEL --config C --batch B [--seq S] --seed N] [--mode isolated|chained]
                  [--backend numpy|torch] [--device cpu|cuda|npu] [--platform a2a3|a5]
                  [--json FILE] [--plot FILE]
    lowering budget MODEL --config C --batch B [--platform a2a3|a5]
    lowering fingerprint (MODEL --config C --batch B ... | --data DIR | FILE ...)

Every command takes ``--semantics NAME`` (a named semantics, default ds32) and
``--variant KEY=VALUE`` on top.

``lowering diff`` with no MODEL runs both models at their tiny configs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

import dsref
from dsref import compile_cache
from dsref.cli import model_arg
from dsref.memory import keep_freed_memory
from lowering import pipeline
from lowering.registry import kernel_for
from lowering.report import (
    COLUMN_HELP,
    check_outputs,
    exit_code,
    make_console,
    render,
    table_wanted,
    write_json,
)

# `lowering diff` with no MODEL: both models at tiny dims; V4 with an odd token count
DEFAULT_RUNS = (("v32.decode_front", "v32-tiny", 16, 1), ("v4.qkv_proj_rope", "v4-tiny", 3, 3))


class UsageError(ValueError):
    """Bad usage or input: exit 2."""


def _console():
    return make_console()


def _cfg(args: argparse.Namespace, model: str, default: str | None = None):
    name = args.config or default
    if name is None:
        raise UsageError("--config is required with a MODEL")
    base = dsref.config(name)
    if not isinstance(base, dsref.get_model(model).config_type):
        raise UsageError(f"--config {name} is not a config of {model}")
    return dsref.config(name, semantics=getattr(args, "semantics", None),
                        **dsref.parse_variants(args.variant))


def _backend(args: argparse.Namespace) -> Any:
    if args.backend == "numpy":
        if args.device not in (None, "cpu"):
            raise UsageError(f"--device {args.device}: the numpy backend runs on cpu only")
        return "numpy"
    from lowering.backends import get_backend

    return get_backend(args.backend, device=args.device)


def _runs(args: argparse.Namespace) -> list[tuple[str, Any, int, int]]:
    if args.model is None:
        given = [f for f, v in (("--config", args.config), ("--batch", args.batch),
                                ("--seq", args.seq)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} need a MODEL (lowering diff MODEL "
                             f"{' '.join(given)} ...): without one, each model runs its tiny "
                             "config at fixed dims")
        return [(m, dsref.config(c, semantics=args.semantics, **dsref.parse_variants(args.variant)),
                 b, s) for m, c, b, s in DEFAULT_RUNS
                if args.semantics is None or dsref.SEMANTICS[args.semantics].applies_to(m)]
    return [(args.model, _cfg(args, args.model), 4 if args.batch is None else args.batch,
             1 if args.seq is None else args.seq)]


def seq_lens_arg(text: str) -> list[int]:
    """``--seq-lens 1,7,4096``: one context length per batch entry."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None



def cmd_diff(args: argparse.Namespace) -> int:
    from dsref.progress import progress_steps, wanted

    backend = _backend(args)
    reports = []
    runs = _runs(args)
    total = sum(len(dsref.get_model(m).stages) for m, *_ in runs)
    with progress_steps(wanted(args.quiet), total) as step:
        for model, cfg, batch, seq in runs:
            ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=args.seed,
                                    seq_lens=args.seq_lens)
            reports.append(pipeline.diff(model, cfg, ins, mode=args.mode, backend=backend,
                                         platform=args.platform, seed=args.seed, on_region=step,
                                         permute_parallel=args.permute_parallel,
                                         tolerance=args.tolerance))
    if table_wanted(args):
        render(reports, wide=args.wide)
    if args.json:
        write_json(args.json, [r.to_dict() for r in reports])
    if args.plot:
        from lowering.plots import write_plots

        write_plots(reports, args.plot)
    return exit_code(reports)


def cmd_plan(args: argparse.Namespace) -> int:
    model = args.model
    cfg = _cfg(args, model)
    ins = dsref.make_inputs(model, cfg, batch=args.batch, seq=args.seq, seed=0)
    from lowering.trace import trace

    tr = trace(model, cfg, ins)
    con = _console()
    con.print(f"{model}  config={cfg.name}  batch={args.batch} seq={args.seq}")
    for r in tr.regions:
        k = kernel_for(model, r.name)
        shapes = {n: np.shape(a) for n, a in {**r.inputs, **r.outputs}.items()}
        where = "reference (no kernel)" if k is None else k.file
        con.print(f"[bold]{r.index:>2} {r.name}[/]  → {where}")
        con.print("     in:  " + _tensors(r.inputs))
        con.print("     out: " + _tensors(r.outputs))
        if k is not None:
            con.print(f"     tiling: {k.tiling(cfg, shapes)}")
    for u in tr.unrecognised:
        con.print(f"[red]unrecognised[/]: {u}")
    return 0 if not tr.unrecognised else 1


def _tensors(arrays: dict) -> str:
    return ", ".join(f"{n} {a.dtype.name}{list(a.shape)}" for n, a in arrays.items())


def cmd_budget(args: argparse.Namespace) -> int:
    from lowering.budgets import measure

    cfg = _cfg(args, args.model)
    p = args.platform
    rows = measure(args.model, cfg, batch=args.batch, seq=args.seq, platform=p)
    con = _console()
    con.print(f"{args.model}  config={cfg.name}  batch={args.batch} seq={args.seq}  platform={p}  (KiB)")
    con.print(f"{'region':<20} {'scope':<28} {'space':<5} {'shape':>9} {'peak':>9} {'limit':>7}")
    for r in rows:
        con.print(f"{r.region:<20} {r.scope:<28} {r.space:<5} {r.shape / 1024:>9.1f} "
                  f"{r.peak / 1024:>9.1f} {r.limit / 1024:>7.0f}{'  OVER' if r.over else ''}")
    over = [r for r in rows if r.over]
    con.print(f"FAIL {args.model}: {len(over)} scope(s) over the {p} limit" if over else
              f"PASS {args.model}: every scope fits {p}", markup=False, highlight=False)
    return 1 if over else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowering", description="Check NPU tile kernels against dsref.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, model_required: bool) -> None:
        sp.add_argument("model", nargs=None if model_required else "?", type=model_arg,
                        metavar="MODEL", help="a model or a stage range MODEL[A:B] (dsref list)")
        sp.add_argument("--config", help="a config of MODEL (dsref list)")
        # without a MODEL these are an error, so an omitted one must be told from a default
        sp.add_argument("--batch", type=int, default=4 if model_required else None,
                        help="batch B (default 4)")
        sp.add_argument("--seq", type=int, default=1 if model_required else None,
                        help="tokens per sequence S (default 1)")
        semantics_flags(sp)

    d = sub.add_parser("diff", help="diff every region's kernel against the reference",
                       epilog=COLUMN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(d, model_required=False)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--seq-lens", type=seq_lens_arg, metavar="L,L,...",
                   help="V3.2: each entry's context length (one per entry) instead of drawn ones")
    d.add_argument("--mode", choices=pipeline.MODES, default="isolated")
    d.add_argument("--tolerance", choices=("bound", "pypto-lib"), default="bound",
                   help="bound (default): exact-or-bounded per element; pypto-lib: upstream's "
                        "ratio_allclose presets (docs/verdicts.md)")
    d.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    d.add_argument("--device", default=None, help="cpu | cuda[:N] | npu[:N] (torch backend)")
    d.add_argument("--platform", choices=("a2a3", "a5"), default="a2a3")
    d.add_argument("--json", metavar="FILE")
    d.add_argument("--plot", metavar="FILE")
    d.add_argument("--quiet", action="store_true", help="no table and no progress bar")
    d.add_argument("--wide", action="store_true",
                   help="every column (differ %%, cosine, drift ulp), 200 columns in a pipe")
    d.add_argument("--permute-parallel", action="store_true",
                   help="run pl.parallel / pl.spmd iterations in a seeded random order")
    d.set_defaults(fn=cmd_diff)
    pl = sub.add_parser("plan", help="show the regions, their tensors and kernels")
    common(pl, model_required=True)
    pl.set_defaults(fn=cmd_plan)
    b = sub.add_parser("budget", help="on-chip buffer use per kernel scope")
    common(b, model_required=True)
    b.add_argument("--platform", choices=("a2a3", "a5"), default="a2a3")
    b.set_defaults(fn=cmd_budget)
    # subcommands defined in other modules: each adds itself with add_subparser(sub)
    from lowering import files

    files.add_subparser(sub)
    from lowering import run_kernel

    run_kernel.add_subparser(sub)
    from lowering import sweep

    sweep.add_subparser(sub)
    from lowering import fingerprint

    fingerprint.add_subparser(sub)
    return p


def cli_variants(args: argparse.Namespace, model: str | None) -> dict[str, Any]:
    """``--variant``s, on top of every variant of ``model`` under ``--semantics`` when given
    (for commands that pass a variants dict: run-kernel, diff-files, fingerprint)."""
    overrides = dsref.parse_variants(args.variant)
    if getattr(args, "semantics", None) is None:
        return overrides
    if model is None:
        raise UsageError("--semantics: cannot tell the model; pass it (MODEL or --model)")
    from dsref.config import semantic_variants

    return semantic_variants(model, args.semantics, overrides)


def semantics_flags(sp: argparse.ArgumentParser) -> None:
    """``--semantics NAME`` and ``--variant KEY=VALUE`` (on top of it)."""
    sp.add_argument("--semantics", choices=list(dsref.SEMANTICS), default=None,
                    help="a named semantics (preset of variants, e.g. pypto-lib-pr134; "
                         "default ds32): the reference follows it, and so do the kernels")
    sp.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                    help="one semantic variant, on top of --semantics")


#: commands that run a kernel file's own code (its torch golden, its inputs): their
#: allocations fragment a heap that keeps freed memory (six pypto-lib HEAD files under
#: run-kernel peaked at 1.3-2.2x the memory, 6.5 -> 9.5 GB for mtp lm_head.py), so they leave
#: glibc's malloc as it is
RUNS_OTHERS_CODE = frozenset(("run-kernel", "sweep"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    compile_cache.enable()  # compiled XLA programs kept on disk between commands
    if args.command not in RUNS_OTHERS_CODE:
        keep_freed_memory()  # whole-tensor temporaries reuse touched pages (dsref.memory)
    rc = None
    try:
        check_outputs(args)
        rc = args.fn(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return rc
    except (UsageError, ValueError) as e:  # dsref.InputError is a ValueError
        print(f"lowering: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"lowering: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left; the verdict still stands
        from dsref.progress import quiet_broken_pipe

        quiet_broken_pipe()
        return 0 if rc is None else rc


if __name__ == "__main__":
    sys.exit(main())
