"""Speed of dsref and the tile emulator, all measured in one run on one machine.

    python benchmarks/run.py [--out FILE] [--quick] [--backend numpy|torch] [--device D]

Prints a table and writes JSON (default ``benchmarks/results.json``):

- ``reference``: per model at full dims (``v32`` B=16, V3.2 scope 1 and the whole fused front;
  ``v4-flash`` B=64 S=2), the jitted
  dsref reference after compilation (median of repeats) and one eager (``jit=False``) run of
  the same reference; their ratio. ``dsref.run`` is one self-contained call (validation off
  here): it moves every weight and cache and widens the weights for the exact dot;
- ``prepared``: one call of :func:`dsref.prepare`'s model (weights and caches resident, only
  the activations move; outputs fetched to numpy), default semantics (``exact``) and the
  ``accumulate=fp32`` variant, median of repeats, and the one-off prepare time;
- ``bandwidth``: a large in-memory copy (``np.copyto`` of 512 MiB; bytes read + written per
  second) and, per model, the floor = weight bytes ÷ that bandwidth, and each time ÷ floor;
- ``emulator``: per region the seconds of its kernel on the tile emulator at the same dims
  (isolated mode), the total, and total ÷ reference;
- ``lowering_diff``: ``lowering diff`` of both models at their tiny configs, end to end.

``--quick`` uses the tiny configs everywhere (a smoke run, not a measurement). These are
measurements, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dsref  # noqa: E402
import lowering  # noqa: E402

#: V3.2 scope 1 (what pypto-lib PR #134's golden computes: the speed comparisons of the README),
#: the whole fused V3.2 front (drawn contexts: its sparse attention kernel runs HEAD's per-row
#: online softmax, the emulator's longest region) and V4
V32_SCOPE1 = "v32.decode_front[:decode_cache_write]"
FULL = ((V32_SCOPE1, "v32", 16, 1), ("v32.decode_front", "v32", 16, 1),
        ("v4.qkv_proj_rope", "v4-flash", 64, 2))
QUICK = ((V32_SCOPE1, "v32-tiny", 16, 1), ("v4.qkv_proj_rope", "v4-tiny", 3, 3))  # a smoke run
WEIGHT = re.compile(r"^w|weight|gamma|norm_w")


def _timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def copy_bandwidth(nbytes: int, repeat: int = 5) -> float:
    """Bytes moved (read + written) per second by ``np.copyto`` of ``nbytes``."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = min(_timed(lambda: np.copyto(dst, src), repeat))
    return 2 * src.nbytes / best


def bench_reference(model: str, cfg: Any, ins: dict, repeat: int, eager: bool = True) -> dict:
    dsref.run(model, cfg, ins)  # compile
    jit = _timed(lambda: dsref.run(model, cfg, ins, check=False), repeat)
    ref = statistics.median(jit)
    out = {"jit_s": ref, "jit_runs_s": jit, "eager_s": None, "eager_over_jit": None}
    if eager:
        e = _timed(lambda: dsref.run(model, cfg, ins, jit=False, check=False), 1)[0]
        out.update(eager_s=e, eager_over_jit=e / ref)
    return out


def bench_prepared(model: str, cfg: Any, ins: dict, repeat: int) -> dict:
    out = {}
    for acc in ("exact", "fp32"):
        c = dsref.with_variants(cfg, accumulate=acc)
        t0 = time.perf_counter()
        p = dsref.prepare(model, c, ins)
        prep = time.perf_counter() - t0
        acts = {k: ins[k] for k in p.model.step_inputs}
        p(acts)  # compile
        runs = _timed(lambda p=p, acts=acts: p(acts, check=False), 2 * repeat + 1)
        out[acc] = {"call_s": statistics.median(runs), "call_runs_s": runs, "prepare_s": prep}
        del p
    return out


def bench_emulator(model: str, cfg: Any, ins: dict, backend: Any) -> dict:
    t0 = time.perf_counter()
    rep = lowering.diff(model, cfg, ins, mode="isolated", backend=backend)
    total = time.perf_counter() - t0
    regions = {r.name: {"status": r.status, "seconds": r.seconds} for r in rep.regions}
    return {"verdict": rep.verdict, "regions": regions,
            "kernels_s": sum(r.seconds for r in rep.regions), "diff_total_s": total}


def bench_lowering_diff(backend_args: list[str]) -> dict:
    from lowering import cli

    t0 = time.perf_counter()
    rc = cli.main(["diff", "--quiet", *backend_args])
    return {"exit_code": rc, "seconds": time.perf_counter() - t0}


def run(quick: bool = False, backend: str = "numpy", device: str | None = None,
        eager: bool = True, progress: bool = False) -> dict:
    from dsref.progress import progress_steps
    from lowering.backends import get_backend

    bk = get_backend(backend, device=device)
    runs = QUICK if quick else FULL
    repeat = 3 if quick else 5
    bw = copy_bandwidth((64 if quick else 512) << 20)
    res: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "numpy": np.__version__},
        "quick": quick, "backend": str(bk), "copy_bandwidth_GBps": bw / 1e9, "models": {},
    }
    with progress_steps(progress, 2 * len(runs) + 1) as step:
        for model, config, batch, seq in runs:
            cfg = dsref.config(config)
            ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=0)
            wbytes = sum(a.nbytes for n, a in ins.items() if WEIGHT.search(n))
            step(f"{config} reference")
            ref = bench_reference(model, cfg, ins, repeat, eager)
            prep = bench_prepared(model, cfg, ins, repeat)
            floor = wbytes / bw
            step(f"{config} emulator")
            emu = bench_emulator(model, cfg, ins, bk)
            res["models"][model] = {
                "config": config, "batch": batch, "seq": seq, "weight_bytes": wbytes,
                "reference": ref, "prepared": prep, "floor_s": floor,
                "reference_over_floor": ref["jit_s"] / floor,
                "prepared_over_floor": {k: v["call_s"] / floor for k, v in prep.items()},
                "emulator": emu, "emulator_over_reference": emu["kernels_s"] / ref["jit_s"],
            }
        step("lowering diff (tiny)")
        args = ["--backend", backend] + (["--device", device] if device else [])
        res["lowering_diff"] = bench_lowering_diff(args)
    return res


def render(res: dict) -> str:
    lines = [f"machine: {res['machine']['platform']}, {res['machine']['cpus']} cpus; "
             f"backend {res['backend']}; copy bandwidth {res['copy_bandwidth_GBps']:.1f} GB/s"
             + ("  (QUICK: tiny dims, not a measurement)" if res["quick"] else "")]
    for model, m in res["models"].items():
        r = m["reference"]
        lines.append(
            f"{model} {m['config']} B={m['batch']} S={m['seq']}: reference {r['jit_s'] * 1e3:.1f} ms"
            + (f" (eager {r['eager_s']:.2f} s = {r['eager_over_jit']:.0f}x)" if r["eager_s"] else "")
            + f"; weights "
            f"{m['weight_bytes'] / 1e6:.1f} MB, floor {m['floor_s'] * 1e3:.1f} ms, reference/floor "
            f"{m['reference_over_floor']:.1f}x")
        for acc, pr in m["prepared"].items():
            lines.append(f"  prepared ({acc}): {pr['call_s'] * 1e3:.1f} ms per call = "
                         f"{m['prepared_over_floor'][acc]:.1f}x the floor (prepare {pr['prepare_s']:.2f} s)")
        e = m["emulator"]
        lines.append(f"  emulator {e['kernels_s']:.2f} s ({m['emulator_over_reference']:.0f}x the "
                     f"reference; diff incl. trace {e['diff_total_s']:.2f} s, {e['verdict']})")
        for name, reg in e["regions"].items():
            lines.append(f"    {name:<20} {reg['seconds']:8.3f} s  {reg['status']}")
    d = res["lowering_diff"]
    lines.append(f"lowering diff (both models, tiny): {d['seconds']:.2f} s, exit {d['exit_code']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="JSON record (default benchmarks/results.json; with --quick: none, a "
                        "smoke run never overwrites the measurement)")
    p.add_argument("--quick", action="store_true", help="tiny configs (smoke run)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    p.add_argument("--device", default=None)
    p.add_argument("--no-eager", action="store_true", help="skip the eager reference runs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    from dsref.progress import wanted

    res = run(quick=a.quick, backend=a.backend, device=a.device, eager=not a.no_eager,
              progress=wanted(a.quiet))
    print(render(res))
    out = a.out or (None if a.quick else str(Path(__file__).with_name("results.json")))
    if out is None:
        print("--quick: no record written (pass --out FILE to keep one)")
    else:
        Path(out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
