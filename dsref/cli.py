"""The ``dsref`` command line (exit 0 ok, 1 a check failed, 2 bad usage or input)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import dsref
from dsref import compile_cache
from dsref.config import MODEL_VARIANTS, SEMANTICS, VARIANTS, semantics_names
from dsref.io import FORMATS, PROGRESS_BYTES, ExtraMissing, golden_bytes
from dsref.memory import keep_freed_memory


def _configure(args: argparse.Namespace):
    """``--config`` under ``--semantics`` with ``--variant``s on top."""
    return dsref.config(args.config, semantics=args.semantics, **dsref.parse_variants(args.variant))


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _configure(args)
    ins = dsref.make_inputs(args.model, cfg, batch=args.batch, seq=args.seq, seed=args.seed)
    outs = dsref.run(args.model, cfg, ins)
    sem = dsref.semantics_of(cfg) or "custom"
    print(f"{args.model}  config={cfg.name}  semantics={sem}  batch={args.batch}  seq={args.seq}  "
          f"seed={args.seed}")
    for name, a in outs.items():
        v = np.asarray(a, dtype=np.float64)
        print(f"  {name:<12} {a.dtype.name:<9} {str(list(a.shape)):<16} "
              f"mean={v.mean():+.6f}  absmax={np.abs(v).max():.6f}")
    return 0


def _say(text: str, indent: str = "", more: str = "      ") -> None:
    """One entry of ``dsref list``, wrapped at 100 columns (later lines indented ``more``)."""
    from dsref.progress import wrap

    print(wrap(indent + text, indent + more))


def _cmd_list(args: argparse.Namespace) -> int:
    print("models:")
    for name in dsref.model_names():
        m = dsref.get_model(name)
        configs = [c for c in dsref.config_names() if dsref.config(c).model == name]
        _say(f"{name}  (configs: {', '.join(configs)})", "  ")
        _say(f"stages: {' → '.join(m.stages)}", "    ")
        _say(f"variants: {', '.join(MODEL_VARIANTS[name])}", "    ")
        _say(f"semantics: {', '.join(semantics_names(name))}", "    ")
    _say("stage ranges: MODEL[A:B] runs stages A through B on their own (either end may be left "
         "out; MODEL[A] is one stage), e.g. v4.qkv_proj_rope[attn_norm], "
         "v4.qkv_proj_rope[qr_proj_matmul:]", "  ", "    ")
    print("variants (first value is the default):")
    for key, values in VARIANTS.items():
        _say(f"{key:<18} {' | '.join(str(v) for v in values)}", "  ", " " * 19)
    print("named semantics (--semantics NAME; the other variants at their defaults):")
    from dsref.spec import semantics_line

    for sem in SEMANTICS.values():
        _say(semantics_line(sem), "  ")
    _say(f"helper ops (dsref spec NAME): {', '.join(dsref.spec_names('op'))}")
    return 0


def _cmd_spec(args: argparse.Namespace) -> int:
    if args.name == "all":
        if not args.markdown or args.json or args.jaxpr or args.config or args.semantics \
                or args.variant:
            print("dsref: error: spec all: only with --markdown (the whole contract)",
                  file=sys.stderr)
            return 2
        from dsref.spec import contract_markdown

        print(contract_markdown(), end="")
        return 0
    s = dsref.spec(args.name)
    cfg = args.config
    if args.semantics or args.variant:  # the jaxpr / shapes under those semantics
        cfg = s.config(cfg)
        if args.semantics:
            cfg = dsref.with_semantics(cfg, args.semantics)
        cfg = dsref.with_variants(cfg, **dsref.parse_variants(args.variant))
    if args.json:
        print(s.to_json(cfg, jaxpr=args.jaxpr))
        return 0
    print(s.to_markdown(cfg) if args.markdown else s.to_text(cfg), end="")
    if args.jaxpr:
        print(f"\njaxpr ({s.config(cfg).name}):\n{s.jaxpr(cfg)}")
    return 0


def _cmd_golden(args: argparse.Namespace) -> int:
    cfg = _configure(args)
    big = golden_bytes(args.model, cfg, args.batch, args.seq) > PROGRESS_BYTES
    show = big and not args.quiet and sys.stderr.isatty()
    t0 = time.perf_counter()
    g = dsref.write_golden(args.out, args.model, cfg, batch=args.batch, seq=args.seq, seed=args.seed,
                           fmt=args.format, progress=show, force=args.force)
    if args.quiet:  # as everywhere: no progress and no summary, errors and the exit code only
        return 0
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"wrote {args.out} ({args.format}): {args.model} config={cfg.name} batch={args.batch} "
          f"seq={args.seq} seed={args.seed}; {len(g.inputs)} inputs, {len(g.outputs)} outputs, "
          f"{size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
    return 0


def _semantics_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--semantics", choices=list(SEMANTICS), default=None,
                   help="a named semantics (preset of variants; default ds32)")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                   help="one variant, on top of --semantics")


def model_arg(name: str) -> str:
    """argparse type of a MODEL argument: a model or a stage range ``MODEL[A:B]``."""
    try:
        return dsref.get_model(name).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsref", description="The executable numerical spec of the DeepSeek V3.2 / V4 "
        "attention front: run it, query it, write goldens. Exit 0 ok, 2 bad usage or input.",
        epilog="the contract: docs/semantics.md (dsref spec all --markdown)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a model on deterministic inputs and summarise outputs")
    r.add_argument("model", type=model_arg, metavar="MODEL",
                   help="a model or a stage range MODEL[A:B] (dsref list)")
    r.add_argument("--config", required=True, choices=dsref.config_names(),
                   help="a preset of MODEL (dsref list)")
    r.add_argument("--batch", type=int, default=4, help="batch B (default 4)")
    r.add_argument("--seq", type=int, default=1, help="tokens per sequence S (default 1)")
    r.add_argument("--seed", type=int, default=0,
                   help="input seed (default 0): same seed, same bits")
    _semantics_flags(r)
    r.set_defaults(fn=_cmd_run)

    sub.add_parser("list", help="models, their stages, configs and variants").set_defaults(fn=_cmd_list)

    sp = sub.add_parser("spec", help="what a stage, helper op or model computes")
    sp.add_argument("name", help="a stage (q_rope), helper op (rms_norm) or model (v32.decode_front); "
                                 "'all' with --markdown: the whole contract (docs/semantics.md)")
    sp.add_argument("--markdown", action="store_true", help="print Markdown")
    sp.add_argument("--config", choices=dsref.config_names(), help="shapes and jaxpr at this config")
    sp.add_argument("--jaxpr", action="store_true", help="also print the jaxpr")
    sp.add_argument("--json", action="store_true", help="print JSON")
    _semantics_flags(sp)
    sp.set_defaults(fn=_cmd_spec)

    g = sub.add_parser("golden", help="write a model's inputs and outputs to a directory")
    g.add_argument("model", type=model_arg, metavar="MODEL",
                   help="a model or a stage range MODEL[A:B] (dsref list)")
    g.add_argument("--config", required=True, choices=dsref.config_names())
    g.add_argument("--batch", type=int, required=True)
    g.add_argument("--seq", type=int, default=1)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--format", choices=FORMATS, default="safetensors")
    _semantics_flags(g)
    g.add_argument("--quiet", action="store_true",
                   help="print nothing (no progress bar, no summary line); errors still go to "
                        "stderr")
    g.add_argument("--force", action="store_true",
                   help="replace the golden already in --out (refused otherwise: two goldens "
                        "in one directory would mix)")
    g.set_defaults(fn=_cmd_golden)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    compile_cache.enable()  # compiled XLA programs kept on disk between commands
    keep_freed_memory()  # whole-tensor temporaries reuse touched pages (dsref.memory)
    rc = None
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return rc
    except (ValueError, ExtraMissing) as e:  # InputError, bad names/values, missing torch
        print(f"dsref: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader left; the verdict still stands
        from dsref.progress import quiet_broken_pipe

        quiet_broken_pipe()
        return 0 if rc is None else rc


if __name__ == "__main__":
    sys.exit(main())
