"""The ``dsref`` command line (exit 0 ok, 1 a check failed, 2 bad usage or input)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import dsref


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = dsref.config(args.config, **dsref.parse_variants(args.variant))
    ins = dsref.make_inputs(args.model, cfg, batch=args.batch, seq=args.seq, seed=args.seed)
    outs = dsref.run(args.model, cfg, ins)
    print(f"{args.model}  config={cfg.name}  batch={args.batch}  seq={args.seq}  seed={args.seed}")
    for name, a in outs.items():
        v = np.asarray(a, dtype=np.float64)
        print(f"  {name:<12} {a.dtype.name:<9} {str(list(a.shape)):<16} "
              f"mean={v.mean():+.6f}  absmax={np.abs(v).max():.6f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsref", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a model on deterministic inputs and summarise outputs")
    r.add_argument("model", choices=dsref.model_names())
    r.add_argument("--config", required=True, choices=dsref.config_names())
    r.add_argument("--batch", type=int, default=4)
    r.add_argument("--seq", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(fn=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:  # InputError and bad config/variant values
        print(f"dsref: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
