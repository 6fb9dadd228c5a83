"""How fast ``lowering sweep`` judges a pypto-lib checkout, measured in one run.

    python benchmarks/sweep.py PYPTO_LIB_DIR [--commit SHA] [--jobs N] [--timeout S]
                               [--out benchmarks/sweep_results.json]
    python benchmarks/sweep.py PYPTO_LIB_DIR --from-json SWEEP.json [--commit SHA]
    python benchmarks/sweep.py DIR --fits benchmarks/sweep_results.json

``--from-json``: no new run — the figures of a finished ``lowering sweep DIR --json SWEEP.json``
(its wall time, jobs and per-file seconds), so one sweep gives both the table and the benchmark.

Writes JSON and prints a summary: the machine (CPU model, cores), the checkout's commit (from
``git rev-parse`` when DIR is a git checkout, else ``--commit``), the wall time of the whole
sweep, files per minute, verdict counts per directory, and per file the emulator seconds, the
golden (torch) seconds and their ratio — where the emulator is the bottleneck — and where all
the seconds went: the file's own code (imports, specs, weights: ``setup_s``), its inputs
(``inputs_s``), the emulator, the golden, the comparison, and the rest (process start,
imports, files that timed out); and what a shorter per-file limit would buy: the minutes
the same files would take on this machine's cores and how many would keep their verdict
(``what_fits``, ``--fits RECORD``). A measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_kind  # noqa: E402

from lowering.sweep import PHASES, SIM_SET, VERDICTS, SweepRow, ci_class, summary, sweep, with_verdict  # noqa: E402


def checkout_commit(root: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: per-file time limits the record's "what fits" table tries (seconds)
FIT_TIMEOUTS = (30, 60, 120, 180, 300, 600)


def what_fits(per_file: list[dict], cores: int, timeouts=FIT_TIMEOUTS) -> list[dict]:
    """For each per-file time limit T: the core-seconds a sweep of these files would take
    (each file ``min(its seconds, T)``), that as minutes on ``cores`` cores, and the files that
    would still get a verdict (those that got one within T). From one sweep's per-file
    seconds, so a file's seconds are as that sweep ran it (beside another, where it ran
    ``--jobs 2``)."""
    n = len(per_file)
    out = []
    for t in timeouts:
        core_s = sum(min(f["seconds"], t) for f in per_file)
        verdicts = sum(1 for f in per_file if f["verdict"] in ("PASS", "FAIL")
                       and f["seconds"] <= t)
        out.append({"timeout_s": t, "core_s": round(core_s, 1),
                    "minutes": round(core_s / cores / 60, 1), "with_verdict": verdicts,
                    "with_verdict_pct": round(100 * verdicts / max(n, 1), 1)})
    return out


def print_fits(fits: list[dict], cores: int) -> None:
    print(f"  what a per-file limit buys ({cores} cores):")
    for f in fits:
        print(f"    --timeout {f['timeout_s']:>4}: {f['minutes']:5.1f} min, "
              f"{f['with_verdict']} with a verdict ({f['with_verdict_pct']}%)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", help="a pypto-lib checkout")
    p.add_argument("--commit", help="the checkout's commit, when DIR is not a git checkout")
    p.add_argument("--jobs", type=int, default=0, help="files at a time (default: cores)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", default=str(Path(__file__).with_name("sweep_results.json")))
    p.add_argument("--from-json", metavar="SWEEP_JSON",
                   help="a finished `lowering sweep --json` result instead of a new run")
    p.add_argument("--fits", metavar="RECORD",
                   help="print what per-file time limits would buy from a record this script "
                        "wrote (e.g. benchmarks/sweep_results.json); runs nothing")
    args = p.parse_args(argv)
    if args.fits:
        rec = json.loads(Path(args.fits).read_text())
        print_fits(what_fits(rec["per_file"], rec["cores"]), rec["cores"])
        return 0
    root = Path(args.dir).resolve()
    jobs = args.jobs or len(os.sched_getaffinity(0))
    if args.from_json:
        done = json.loads(Path(args.from_json).read_text())
        rows = [SweepRow(f["file"], f["verdict"], f["seconds"], f.get("reason", ""),
                         f.get("ci") or ci_class(root / f["file"]),
                         {k: f.get(k, 0.0) for k in PHASES})
                for f in done["files"]]
        wall = float(done["seconds"])
        jobs = int(done.get("jobs", jobs))
        args.timeout = float(done.get("timeout_s", args.timeout))
    else:
        t0 = time.perf_counter()
        rows = sweep(root, jobs=jobs, timeout=args.timeout)
        wall = time.perf_counter() - t0
    per_file = []
    for r in rows:
        ratio = r.emulator_s / r.golden_s if r.golden_s > 0 else None
        per_file.append({"file": r.file, "ci": r.ci, "verdict": r.verdict,
                         "seconds": round(r.seconds, 2),
                         **{k: round(r.phases.get(k, 0.0), 3) for k in PHASES},
                         "emulator_over_golden": None if ratio is None else round(ratio, 1),
                         "reason": r.reason})
    ratios = [f["emulator_over_golden"] for f in per_file if f["emulator_over_golden"]]
    spent = {k: round(sum(r.phases.get(k, 0.0) for r in rows), 1) for k in PHASES}
    spent["other_s"] = round(sum(r.seconds for r in rows) - sum(spent.values()), 1)
    per = summary(rows)
    res = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_kind(),
        "cores": len(os.sched_getaffinity(0)), "jobs": jobs, "timeout_s": args.timeout,
        "checkout": str(root), "commit": checkout_commit(root, args.commit),
        "files": len(rows), "wall_s": round(wall, 1),
        "files_per_minute": round(60 * len(rows) / wall, 1),
        "emulator_over_golden_median": round(statistics.median(ratios), 1) if ratios else None,
        "with_verdict_pct": round(with_verdict(per["total"]), 1),
        "sim_set_with_verdict_pct": round(with_verdict(per[SIM_SET]), 1),
        "seconds_by_phase": spent,
        "summary": {d: {v: c.get(v, 0) for v in VERDICTS} for d, c in per.items()},
        "per_file": per_file,
    }
    res["what_fits"] = what_fits(per_file, res["cores"])
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['files']} files in {res['wall_s']} s on {res['cpu']} ({jobs} jobs): "
          f"{res['files_per_minute']} files/min; emulator ÷ golden median "
          f"{res['emulator_over_golden_median']}; with a verdict {res['with_verdict_pct']}% "
          f"({SIM_SET}: {res['sim_set_with_verdict_pct']}%)")
    print("  file-seconds by phase: " + ", ".join(f"{k} {v:.0f}" for k, v in spent.items()))
    for d, c in res["summary"].items():
        print(f"  {d:<36} " + "  ".join(f"{v} {c[v]}" for v in VERDICTS))
    print_fits(res["what_fits"], res["cores"])
    slow = sorted((f for f in per_file if f["emulator_over_golden"]),
                  key=lambda f: -f["emulator_over_golden"])[:5]
    for f in slow:
        print(f"  slowest vs golden: {f['file']} {f['emulator_s']:.1f}s / {f['golden_s']:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
