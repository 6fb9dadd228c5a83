"""Speed of dsref and the tile emulator, all measured in one run on one machine.

    python benchmarks/run.py [--out FILE] [--quick] [--rounds N] [--backend numpy|torch]
                             [--device D] [--no-eager] [--no-cli]

Prints a table and writes JSON (default ``benchmarks/results.json``). The machine is named
(CPU model and vector ISA: ratios move with it — an AVX2-only EPYC and an AMX Xeon differ by
2× on the same call) and its float64 GEMM rate measured. Per model at full dims (``v32`` B=16,
V3.2 scope 1 and the whole fused front; ``v4-flash`` B=64 S=2):

- ``make_inputs_s``: :func:`dsref.make_inputs` at those dims, every draw timed;
- ``oneshot``: :func:`dsref.run`, one self-contained call (it moves every weight and cache,
  widens the weights for the exact dot; validation off here), exact (default) and
  ``accumulate=fp32``; ``reference`` keeps the exact one's median, plus one eager
  (``jit=False``) run;
- ``prepared``: one call of :func:`dsref.prepare`'s model (weights and caches resident, only
  the activations move; outputs fetched to numpy), exact and ``accumulate=fp32``, and the
  one-off prepare time;
- the four calls above run **interleaved**, one of each per round (``--rounds``, after
  compilation), so a noisy machine slows them alike; each reports median, min and max;
- ``bandwidth``: a large in-memory copy (``np.copyto`` of 512 MiB; bytes read + written per
  second) and, per model, the floor = weight bytes ÷ that bandwidth, and each time ÷ floor;
  ``dot_gflop``: 2 · tokens · the bf16 projection weights' elements, and prepared exact ÷ the
  time the measured float64 GEMM rate needs for them (the exact dot is a float64 GEMM);
- ``emulator``: per region the seconds of its kernel on the tile emulator at the same dims
  (isolated mode, in-process), the total, and total ÷ reference;
- ``cli_diff``: ``python -m lowering diff MODEL --config C --batch B --seq S`` as a user runs
  it, in a fresh process: end to end, imports included; ``seconds_first`` with an empty XLA
  compilation cache (``DSREF_COMPILE_CACHE``, a fresh directory), ``seconds`` the run after it,
  which loads the compiled programs from it (what every later run of a command sees);
- ``lowering_diff``: ``lowering diff`` of both models at their tiny configs, in-process.

``--quick`` uses the tiny configs everywhere (a smoke run, not a measurement). The process keeps
freed memory as the commands do (``dsref.memory.keep_freed_memory``; the record says whether
it took). These are measurements, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import cpu_kind, f64_gemm_gflops, machine  # noqa: E402

import dsref  # noqa: E402
import lowering  # noqa: E402

#: V3.2 scope 1 (what pypto-lib PR #134's golden computes: the speed comparisons of the README),
#: the whole fused V3.2 front (drawn contexts) and V4
V32_SCOPE1 = "v32.decode_front[:decode_cache_write]"
FULL = ((V32_SCOPE1, "v32", 16, 1), ("v32.decode_front", "v32", 16, 1),
        ("v4.qkv_proj_rope", "v4-flash", 64, 2))
QUICK = ((V32_SCOPE1, "v32-tiny", 16, 1), ("v4.qkv_proj_rope", "v4-tiny", 3, 3))  # a smoke run
WEIGHT = re.compile(r"^w|weight|gamma|norm_w")
ACCUMULATE = ("exact", "fp32")


def _timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def spread(runs: list[float]) -> dict:
    """Median, min and max of repeated timings (and the runs themselves)."""
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs),
            "runs_s": runs}


def copy_bandwidth(nbytes: int, repeat: int = 5) -> float:
    """Bytes moved (read + written) per second by ``np.copyto`` of ``nbytes``."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    best = min(_timed(lambda: np.copyto(dst, src), repeat))
    return 2 * src.nbytes / best


def bench_calls(model: str, cfg: Any, ins: dict, rounds: int, eager: bool = True) -> dict:
    """One-shot :func:`dsref.run` and prepared calls, exact and ``accumulate=fp32``, compiled
    first, then timed interleaved: each round calls each of the four once."""
    cfgs = {acc: dsref.with_variants(cfg, accumulate=acc) for acc in ACCUMULATE}
    prepared, prepare_s = {}, {}
    for acc, c in cfgs.items():
        dsref.run(model, c, ins)  # compile
        t0 = time.perf_counter()
        prepared[acc] = dsref.prepare(model, c, ins)
        prepare_s[acc] = time.perf_counter() - t0
    acts = {k: ins[k] for k in prepared["exact"].model.step_inputs}
    calls = {}
    for acc in ACCUMULATE:
        prepared[acc](acts)  # compile
        calls[("oneshot", acc)] = lambda c=cfgs[acc]: dsref.run(model, c, ins, check=False)
        calls[("prepared", acc)] = lambda p=prepared[acc]: p(acts, check=False)
    runs: dict[tuple, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            runs[k] += _timed(fn, 1)
    prepared.clear()
    out = {kind: {acc: spread(runs[(kind, acc)]) for acc in ACCUMULATE}
           for kind in ("oneshot", "prepared")}
    for acc in ACCUMULATE:
        out["prepared"][acc].update(call_s=out["prepared"][acc]["median_s"],
                                    prepare_s=prepare_s[acc])
    exact = out["oneshot"]["exact"]
    out["reference"] = {"jit_s": exact["median_s"],  # the runs: oneshot.exact
                        "eager_s": None, "eager_over_jit": None}
    if eager:
        e = _timed(lambda: dsref.run(model, cfg, ins, jit=False, check=False), 1)[0]
        out["reference"].update(eager_s=e, eager_over_jit=e / exact["median_s"])
    return out


def dot_flops(ins: dict, tokens: int) -> float:
    """2 · tokens · the elements of every bf16 projection weight (2-D, or stacked per head):
    the flops of the model's exact dots, float64 GEMMs, each weight used once per token (int8
    weights are int32 dots, not counted)."""
    return 2.0 * tokens * sum(a.size for n, a in ins.items()
                              if WEIGHT.search(n) and a.ndim >= 2 and a.dtype == ml_dtypes.bfloat16)


def bench_cli_diff(model: str, config: str, batch: int, seq: int, backend_args: list[str]
                   ) -> dict:
    """``python -m lowering diff`` as a user runs it: a fresh process, end to end; first with
    an empty compilation cache, then again with what that run stored."""
    cmd = [sys.executable, "-m", "lowering", "diff", model, "--config", config, "--batch",
           str(batch), "--seq", str(seq), "--quiet", *backend_args]
    out = {"command": " ".join(["lowering", *cmd[3:]])}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DSREF_COMPILE_CACHE": cache}
        for key in ("seconds_first", "seconds"):
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, env=env).returncode
            out["exit_code"] = out.get("exit_code") or rc  # the first run's failure stays
            out[key] = time.perf_counter() - t0
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
        eager: bool = True, progress: bool = False, rounds: int | None = None,
        cli: bool = True) -> dict:
    from dsref.memory import keep_freed_memory
    from dsref.progress import progress_steps
    from lowering.backends import get_backend

    kept = keep_freed_memory()  # as the dsref / lowering commands do before their work
    bk = get_backend(backend, device=device)
    runs = QUICK if quick else FULL
    rounds = rounds or (3 if quick else 7)
    bw = copy_bandwidth((64 if quick else 512) << 20)
    gflops = f64_gemm_gflops(256 if quick else 1024)
    backend_args = ["--backend", backend] + (["--device", device] if device else [])
    res: dict[str, Any] = {
        "machine": machine(), "cpu_kind": cpu_kind(), "keep_freed_memory": kept,
        "quick": quick, "backend": str(bk),
        "rounds": rounds, "copy_bandwidth_GBps": bw / 1e9, "f64_gemm_gflops": gflops,
        "models": {},
    }
    with progress_steps(progress, 3 * len(runs) + 1) as step:
        for model, config, batch, seq in runs:
            cfg = dsref.config(config)
            step(f"{config} inputs")
            draw = functools.partial(dsref.make_inputs, model, cfg, batch=batch, seq=seq, seed=0)
            draws = _timed(draw, rounds)
            ins = draw()
            wbytes = sum(a.nbytes for n, a in ins.items() if WEIGHT.search(n))
            flops = dot_flops(ins, batch * seq)
            step(f"{config} reference")
            calls = bench_calls(model, cfg, ins, rounds, eager)
            ref, prep = calls["reference"], calls["prepared"]
            floor = wbytes / bw
            step(f"{config} emulator")
            emu = bench_emulator(model, cfg, ins, bk)
            res["models"][model] = {
                "config": config, "batch": batch, "seq": seq, "weight_bytes": wbytes,
                "make_inputs_s": spread(draws), "reference": ref, "oneshot": calls["oneshot"],
                "prepared": prep, "floor_s": floor,
                "reference_over_floor": ref["jit_s"] / floor,
                "prepared_over_floor": {k: v["call_s"] / floor for k, v in prep.items()},
                "dot_gflop": flops / 1e9,
                "prepared_exact_over_f64_gemm": prep["exact"]["call_s"] / (flops / gflops / 1e9),
                "emulator": emu, "emulator_over_reference": emu["kernels_s"] / ref["jit_s"],
            }
            if cli:
                step(f"{config} lowering diff (CLI)")
                res["models"][model]["cli_diff"] = bench_cli_diff(model, config, batch, seq,
                                                                  backend_args)
        step("lowering diff (tiny)")
        res["lowering_diff"] = bench_lowering_diff(backend_args)
    return res


def _ms(s: dict) -> str:
    return f"{s['median_s'] * 1e3:.1f} ms [{s['min_s'] * 1e3:.1f}–{s['max_s'] * 1e3:.1f}]"


def render(res: dict) -> str:
    mach = res["machine"]
    lines = [f"machine: {res['cpu_kind']}, {mach['cores']} cores, {mach['platform']}; backend "
             f"{res['backend']}; copy bandwidth {res['copy_bandwidth_GBps']:.1f} GB/s; float64 "
             f"GEMM {res['f64_gemm_gflops']:.1f} GFLOP/s; {res['rounds']} interleaved rounds, "
             "median [min–max]"
             + ("  (QUICK: tiny dims, not a measurement)" if res["quick"] else "")]
    for model, m in res["models"].items():
        r = m["reference"]
        lines.append(
            f"{model} {m['config']} B={m['batch']} S={m['seq']}: weights "
            f"{m['weight_bytes'] / 1e6:.1f} MB, floor {m['floor_s'] * 1e3:.1f} ms; "
            f"make_inputs {_ms(m['make_inputs_s'])}")
        for acc in ACCUMULATE:
            lines.append(f"  dsref.run one-shot ({acc}): {_ms(m['oneshot'][acc])}"
                         + (f" = {m['reference_over_floor']:.1f}x the floor"
                            if acc == "exact" else ""))
        for acc, pr in m["prepared"].items():
            lines.append(f"  prepared ({acc}): {_ms(pr)} per call = "
                         f"{m['prepared_over_floor'][acc]:.1f}x the floor (prepare "
                         f"{pr['prepare_s']:.2f} s)")
        lines.append(f"  dots {m['dot_gflop']:.2f} GFLOP: prepared exact = "
                     f"{m['prepared_exact_over_f64_gemm']:.1f}x the float64 GEMM time")
        if r["eager_s"]:
            lines.append(f"  eager reference {r['eager_s']:.2f} s = {r['eager_over_jit']:.0f}x")
        e = m["emulator"]
        lines.append(f"  emulator {e['kernels_s']:.2f} s ({m['emulator_over_reference']:.0f}x the "
                     f"reference; diff incl. trace {e['diff_total_s']:.2f} s, {e['verdict']})")
        for name, reg in e["regions"].items():
            lines.append(f"    {name:<20} {reg['seconds']:8.3f} s  {reg['status']}")
        if "cli_diff" in m:
            c = m["cli_diff"]
            lines.append(f"  {c['command']}: {c['seconds']:.1f} s end to end "
                         f"({c['seconds_first']:.1f} s with an empty compilation cache), exit "
                         f"{c['exit_code']}")
    d = res["lowering_diff"]
    lines.append(f"lowering diff (both models, tiny): {d['seconds']:.2f} s, exit {d['exit_code']}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The README's speed table of a record: one column per model, median [min–max]."""
    ms = lambda s: f"{s['median_s'] * 1e3:.0f} ms [{s['min_s'] * 1e3:.0f}–{s['max_s'] * 1e3:.0f}]"  # noqa: E731
    models = res["models"]
    head = [f"`{m['config']}` {name.split('.', 1)[1]} B={m['batch']}"
            + (f" S={m['seq']}" if m["seq"] > 1 else "") for name, m in models.items()]
    rows = [("weights / bandwidth floor",
             lambda m: f"{m['weight_bytes'] / 1e6:.1f} MB / {m['floor_s'] * 1e3:.1f} ms"),
            ("`make_inputs`", lambda m: ms(m["make_inputs_s"]))]
    for acc in ACCUMULATE:
        rows.append((f"`dsref.run`, one-shot, {acc}",
                     lambda m, a=acc: ms(m["oneshot"][a])))
    for acc in ACCUMULATE:
        rows.append((f"`dsref.prepare`d call, {acc} (÷ floor)",
                     lambda m, a=acc: f"{ms(m['prepared'][a])} ({m['prepared_over_floor'][a]:.0f}×)"))
    rows += [("prepared exact ÷ float64 GEMM time of its bf16 dots",
              lambda m: f"{m['prepared_exact_over_f64_gemm']:.1f}× ({m['dot_gflop']:.1f} GFLOP)"),
             ("eager reference (`jit=False`)",
              lambda m: f"{m['reference']['eager_s']:.1f} s" if m["reference"]["eager_s"] else "–"),
             ("emulator, every region's kernel", lambda m: f"{m['emulator']['kernels_s']:.1f} s"),
             ("`lowering diff`, a fresh process, end to end (empty compilation cache)",
              lambda m: f"{m['cli_diff']['seconds']:.1f} s ({m['cli_diff']['seconds_first']:.1f} s)"
              if "cli_diff" in m else "–")]
    out = ["| | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    out += ["| " + label + " | " + " | ".join(f(m) for m in models.values()) + " |"
            for label, f in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="JSON record (default benchmarks/results.json; with --quick: none, a "
                        "smoke run never overwrites the measurement)")
    p.add_argument("--quick", action="store_true", help="tiny configs (smoke run)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    p.add_argument("--device", default=None)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default 7; --quick 3)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager reference runs")
    p.add_argument("--no-cli", action="store_true",
                   help="skip the end-to-end `lowering diff` processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--markdown", metavar="RECORD",
                   help="print the README table of a record (e.g. benchmarks/results.json); "
                        "runs nothing")
    a = p.parse_args(argv)
    if a.markdown:
        print(markdown(json.loads(Path(a.markdown).read_text())))
        return 0
    from dsref.progress import wanted

    res = run(quick=a.quick, backend=a.backend, device=a.device, eager=not a.no_eager,
              progress=wanted(a.quiet), rounds=a.rounds, cli=not a.no_cli)
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
