"""The production kernels under the default verdict, seeds 0–9, isolated and chained.

    python benchmarks/verdicts.py [--quick] [--seeds 0-9] [--planted] [--out FILE]

Full dims by default (``v32`` B=16; ``v4-flash`` B=64 S=2), ``--quick`` the tiny configs. For
every (model, mode, seed) it runs ``lowering.diff`` and records the verdict, the seconds, and
per output the check (exact / bound), the max error in units of the bound, the share of pinned
elements (the bound's sensitivity, docs/verdicts.md) and the drift along the chain. Prints one
line per run and a per-output summary (min pinned share, max err/bound); writes JSON. Exit 0
when every run PASSes. ``--planted``: instead, each planted bug of ``lowering.bugs.PLANTED`` at
the same dims (seed 0), which must FAIL exactly its regions and outputs (exit 0 when all do).
A measurement and a soak test, not part of the test suite (``tests/test_verdicts.py`` runs a
few seeds at tiny dims).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dsref  # noqa: E402
import lowering  # noqa: E402

FULL = (("v32.decode_front", "v32", 16, 1), ("v4.qkv_proj_rope", "v4-flash", 64, 2))
TINY = (("v32.decode_front", "v32-tiny", 16, 1), ("v4.qkv_proj_rope", "v4-tiny", 3, 3))


def _seeds(spec: str) -> list[int]:
    lo, _, hi = spec.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny configs")
    p.add_argument("--seeds", default="0-9")
    p.add_argument("--planted", action="store_true", help="the planted bugs instead")
    p.add_argument("--out", default=str(Path(__file__).with_name("verdicts.json")))
    args = p.parse_args(argv)
    if args.planted:
        return planted(args)
    runs, summary = [], {}
    for model, config, batch, seq in (TINY if args.quick else FULL):
        cfg = dsref.config(config)
        for seed in _seeds(args.seeds):
            ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=seed)
            for mode in lowering.MODES:
                t0 = time.perf_counter()
                rep = lowering.diff(model, cfg, ins, mode=mode, seed=seed)
                secs = time.perf_counter() - t0
                outs = [{"region": r.name, "output": o.name, "ok": o.ok, "check": o.preset,
                         "err_over_bound": o.bound_ratio, "pinned": o.pinned,
                         "differ": o.differ_ratio, "pypto_lib_ok": o.ratio_ok,
                         "drift_max_ulp": (o.drift or {}).get("max_ulp")}
                        for r in rep.regions for o in r.outputs]
                runs.append({"model": model, "config": config, "seed": seed, "mode": mode,
                             "verdict": rep.verdict, "seconds": round(secs, 2), "outputs": outs})
                print(f"{config:9s} seed {seed} {mode:9s} {rep.verdict:7s} {secs:6.1f} s"
                      + (f"  first FAIL: {rep.first_fail}" if rep.first_fail else ""), flush=True)
                for o in outs:
                    s = summary.setdefault((config, o["region"], o["output"]),
                                           {"check": o["check"], "min_pinned": 1.0, "max_err": 0.0})
                    s["min_pinned"] = min(s["min_pinned"], o["pinned"] or 0.0)
                    s["max_err"] = max(s["max_err"], o["err_over_bound"] or 0.0)
    print(f"\n{'config':9s} {'region':20s} {'output':11s} check  min pinned %  max err/bound")
    for (config, region, output), s in summary.items():
        print(f"{config:9s} {region:20s} {output:11s} {s['check']:5s} {100 * s['min_pinned']:12.3f}"
              f"  {s['max_err']:.3g}")
    Path(args.out).write_text(json.dumps({
        "quick": args.quick, "runs": runs,
        "summary": [{"config": c, "region": r, "output": o, **s}
                    for (c, r, o), s in summary.items()]}, indent=1, default=str))
    return 0 if all(r["verdict"] == "PASS" for r in runs) else 1


def planted(args: argparse.Namespace) -> int:
    """Each planted bug at every shape of its model (V4 Flash at T = 128 and T = 32: K chunks
    of 128 and 512). Exit 0 when every bug FAILs exactly its regions at one shape at least;
    where a bug is within legitimate rounding at a shape, the line says "not caught"."""
    from lowering.bugs import PLANTED

    shapes = list(TINY if args.quick else FULL)
    if not args.quick:
        shapes.append(("v4.qkv_proj_rope", "v4-flash", 16, 2))
    rows = []
    for name, bug in PLANTED.items():
        for model, config, batch, seq in (r for r in shapes if r[0] == bug.model):
            rows.append(_planted_run(name, bug, model, config, batch, seq))
    Path(args.out).write_text(json.dumps({"quick": args.quick, "planted": rows}, indent=1))
    caught = {r["bug"] for r in rows if r.get("ok")}
    return 0 if caught >= {r["bug"] for r in rows if "skipped" not in r} else 1


def _planted_run(name: str, bug, model: str, config: str, batch: int, seq: int) -> dict:
    cfg = dsref.config(config)
    where = f"{name:18s} {config:9s} T={batch * seq:<4d}"
    try:
        ins = (bug.probe or _random)(cfg, batch, seq, 0)
    except ValueError as e:  # a probe worked out for other dims
        print(f"{where} skipped: {e}")
        return {"bug": name, "config": config, "tokens": batch * seq, "skipped": str(e)}
    t0 = time.perf_counter()
    with bug.patch():
        rep = lowering.diff(model, cfg, ins)
    failed = {r.name: [o.name for o in r.outputs if not o.ok] for r in rep.regions
              if r.status == "FAIL"}
    ok = failed == bug.fails
    status = "as expected" if ok else ("not caught" if not failed else "UNEXPECTED")
    print(f"{where} {rep.verdict:5s} {status} {failed} {time.perf_counter() - t0:.1f} s",
          flush=True)
    return {"bug": name, "config": config, "tokens": batch * seq, "verdict": rep.verdict,
            "failed": failed, "expected": bug.fails, "ok": ok}


def _random(cfg, batch: int, seq: int, seed: int) -> dict:
    return dsref.make_inputs(dsref.get_model(cfg.model).name, cfg, batch=batch, seq=seq, seed=seed)


if __name__ == "__main__":
    sys.exit(main())
