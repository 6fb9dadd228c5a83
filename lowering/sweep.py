"""``lowering sweep DIR``: ``run-kernel`` on every kernel file of a pypto-lib checkout.

Each file runs in its own process (``python -m lowering run-kernel FILE``, its own golden;
forked from a server that has torch and the harness imported already),
``--jobs`` at a time, each with a time limit. The table has one row per file (verdict PASS /
FAIL / CANNOT RUN / TIMEOUT, seconds, first reason) and a summary of counts per directory;
``--json FILE`` keeps every file's full result. Exit 0 when every file passes, 1 otherwise,
2 on bad usage.

Every file is also placed in pypto-lib's own CI classes (its ``.github`` workflows and
``detect_changes.py``), so the summary can say how the files upstream itself runs on a
simulator fare: ``sim`` (a ``__main__``, run as ``python FILE -p a2a3sim``), ``no-sim``
(marked ``# ci: no-sim``: device-only multi-layer / multi-card forwards), ``draft``
(``*_draft.py``, never run by upstream CI) and ``lib`` (no ``__main__``: a module the kernels
import). All of them are run here all the same; a ``lib`` module that cannot run alone is judged
through the runs of the files that execute its kernels (:func:`judge_modules`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsref.inputs import meminfo
from lowering.harness import CANNOT_RUN, PHASE_MARK, environ
from lowering.report import FAIL, PASS, make_console, table_wanted, write_json

TIMEOUT = "TIMEOUT"
VERDICTS = (PASS, FAIL, CANNOT_RUN, TIMEOUT)
_KERNEL = re.compile(r"^\s*@pl\.(jit|program)\b", re.M)
_SKIP_DIRS = {"golden", "tests", "docs", "build", "build_output", "__pycache__"}
_NO_SIM = re.compile(r"^#\s*ci:\s*no-sim", re.M)  # pypto-lib's marker, as its CI greps it
#: pypto-lib's CI classes of a file (see the module docstring), in table order
CI_CLASSES = ("sim", "no-sim", "draft", "lib")


def kernel_files(root: Path) -> list[Path]:
    """Every ``.py`` file under ``root`` defining a ``@pl.jit`` or ``@pl.program`` kernel,
    outside hidden, test, docs and ``golden/`` folders."""
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") or part in _SKIP_DIRS for part in rel[:-1]):
            continue
        try:
            if _KERNEL.search(p.read_text(errors="replace")):
                out.append(p)
        except OSError:
            continue
    return out


def ci_class(path: Path) -> str:
    """The file's class in pypto-lib's own CI: ``draft`` (``*_draft.py``), ``lib`` (no
    ``__main__``, tested as upstream tests it: the string anywhere in the file), ``no-sim``
    (``# ci: no-sim``), else ``sim``."""
    if path.name.endswith("_draft.py"):
        return "draft"
    text = path.read_text(errors="replace")
    if "__main__" not in text:
        return "lib"
    return "no-sim" if _NO_SIM.search(text) else "sim"


#: where a file's seconds went, summed over its cases (lowering.harness.Case)
PHASES = ("setup_s", "inputs_s", "emulator_s", "golden_s", "compare_s")


@dataclass
class SweepRow:
    file: str
    verdict: str
    seconds: float
    reason: str = ""
    ci: str = "sim"
    phases: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict, repr=False)
    killed: bool = False  # SIGKILL: the kernel's out-of-memory killer, as a rule
    alone: bool = False  # run again with no other file beside it (after a kill)
    first: str = ""  # for a file run again alone: why its first run ended (killed / stopped)

    @property
    def emulator_s(self) -> float:
        return self.phases.get("emulator_s", 0.0)

    @property
    def golden_s(self) -> float:
        return self.phases.get("golden_s", 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "verdict": self.verdict, "seconds": round(self.seconds, 2),
                "reason": self.reason, "ci": self.ci, "alone": self.alone,
                **({"first_run": self.first} if self.alone else {}),
                **{k: round(self.phases.get(k, 0.0), 3) for k in PHASES},
                "result": self.result}


def _last_phase(stderr: str) -> str:
    """The last ``--progress`` line of a child's stderr, as ``since 12.3 s: what``."""
    for line in reversed(stderr.splitlines()):
        if line.startswith(PHASE_MARK) and "] " in line:
            when, _, what = line[len(PHASE_MARK):].partition("] ")
            return f"since {when.strip()}: {what}"
    return "before the file was imported"


#: the environment of every child: one OpenMP thread unless told otherwise (``--jobs``
#: children share the cores; :func:`_child` sets its own torch threads) and a fixed hash
#: seed, so that set order, and so a run, is the same every time
CHILD_ENV = {"PYPTO_GOLDEN_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
#: what every child needs before its file: imported once by the fork server, so a child
#: starts in milliseconds rather than the ~4 s that importing torch, jax and the harness takes
PRELOAD = ["torch", "lowering.cli", "lowering.harness", "lowering.run_kernel"]


def _forkserver() -> Any:
    """The multiprocessing context whose fork server has :data:`PRELOAD` imported. The server
    starts (once per process) with :data:`CHILD_ENV` in its environment: the hash seed is
    fixed when an interpreter starts, so it must be there, not set in the child."""
    import multiprocessing as mp
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with environ(CHILD_ENV):
        forkserver.ensure_running()
    return ctx


def _meminfo() -> tuple[int, int] | None:
    """(MemAvailable, MemTotal) in bytes, from /proc/meminfo; None where there is none."""
    m = meminfo()
    return (m["MemAvailable"], m["MemTotal"]) if "MemAvailable" in m and "MemTotal" in m else None


class Launcher:
    """Starts the sweep's children (forked from the preloaded server) and keeps memory in hand.

    Whole-model files can take most of the machine's memory. Left to itself the kernel's
    out-of-memory killer stops the *largest* process — as a rule the file that has run
    longest — and the sweep must run it again alone. Instead, while more than one child
    runs and less than :attr:`floor` of the memory is available, the launcher stops the child
    started last (the least work lost; it is run again alone at the end like any killed
    file), and it starts no new child while less than :attr:`start_floor` is available and
    another still runs."""

    floor = 0.12  # share of MemTotal below which the youngest of several children is stopped
    start_floor = 0.25  # share below which no child starts beside a running one
    poll_s = 0.2

    def __init__(self, guard: bool = True) -> None:
        self.ctx = _forkserver()
        self._lock = threading.Lock()
        self._alive: dict[int, tuple[float, Any]] = {}  # pid -> (start time, process)
        self.yielded: set[int] = set()  # pids stopped to free memory
        self._stop = threading.Event()
        self._guard = None
        if guard and _meminfo() is not None:
            self._guard = threading.Thread(target=self._watch, name="sweep-memory", daemon=True)
            self._guard.start()

    def start(self, target: Any, args: tuple) -> Any:
        while self._guard is not None and not self._room():
            time.sleep(self.poll_s)
        proc = self.ctx.Process(target=target, args=args)
        with self._lock:
            proc.start()
            self._alive[proc.pid] = (time.monotonic(), proc)
        return proc

    @property
    def running(self) -> int:
        """How many of its children run now."""
        with self._lock:
            return len(self._alive)

    def done(self, proc: Any) -> None:
        with self._lock:
            self._alive.pop(proc.pid, None)

    def close(self) -> None:
        self._stop.set()

    def _room(self) -> bool:
        mem = _meminfo()
        with self._lock:
            return not self._alive or mem is None or mem[0] >= self.start_floor * mem[1]

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            mem = _meminfo()
            if mem is None or mem[0] >= self.floor * mem[1]:
                continue
            with self._lock:
                if len(self._alive) < 2:
                    continue
                pid, (_, proc) = max(self._alive.items(), key=lambda kv: kv[1][0])
                self.yielded.add(pid)
                proc.kill()
                self._alive.pop(pid)


def _child(argv: list[str], cwd: str, stderr: str, threads: int = 1) -> None:
    """A forked child: ``python -m lowering ARGV`` run in ``cwd`` on ``threads`` torch threads
    (the file's own code and its golden), stdout discarded, stderr (its progress lines) to
    the file ``stderr``."""
    os.environ.update(CHILD_ENV)
    os.environ["PYPTO_GOLDEN_NUM_THREADS"] = str(threads)  # pypto-lib's golden reads it
    os.chdir(cwd)
    with contextlib.suppress(OSError):  # `top` / `ps -o comm` show the file, not "python"
        Path("/proc/self/comm").write_text(Path(argv[1]).stem[:15])
    for fd, path in ((1, os.devnull), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    import torch

    torch.set_num_threads(threads)
    from lowering.cli import main

    sys.argv = [sys.executable, "-m", "lowering", *argv]
    rc = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(rc)


def run_one(path: Path, root: Path, timeout: float, seed: int, platform: str,
            launcher: Launcher | None = None, threads: int = 1) -> SweepRow:
    """One file in a child process (started by ``launcher``) on ``threads`` torch threads,
    judged from its ``--json`` result."""
    rel, ci = str(path.relative_to(root)), ci_class(path)
    launcher = launcher or Launcher(guard=False)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "result.json", Path(tmp) / "stderr"
        argv = ["run-kernel", str(path), "--quiet", "--progress", "--json", str(out),
                "--seed", str(seed), "--platform", platform]
        t0 = time.perf_counter()
        proc = launcher.start(_child, (argv, str(path.parent), str(err), threads))
        try:
            proc.join(timeout)
            timed_out = proc.exitcode is None  # still running
            if timed_out:
                proc.kill()
                proc.join()
        finally:
            launcher.done(proc)
        stderr = err.read_text(errors="replace") if err.is_file() else ""
        if timed_out:
            return SweepRow(rel, TIMEOUT, time.perf_counter() - t0,
                            f"no verdict within {timeout:g} s ({_last_phase(stderr)})", ci)
        secs, rc = time.perf_counter() - t0, proc.exitcode
        if not out.is_file():
            lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith(PHASE_MARK)]
            why = f"killed by signal {-rc}" if rc < 0 else f"exited {rc}"
            if proc.pid in launcher.yielded:
                why = "stopped by the sweep to leave memory to the file beside it"
            return SweepRow(rel, CANNOT_RUN, secs,
                            f"run-kernel {why} without a result ({_last_phase(stderr)})"
                            + (f": {lines[-1]}" if lines else ""), ci,
                            killed=rc == -signal.SIGKILL)
        res = json.loads(out.read_text())
    cases = res.get("cases", [])
    return SweepRow(rel, res["verdict"], secs, res.get("reason", ""), ci,
                    {k: sum(c.get(k, 0.0) for c in cases) for k in PHASES}, res)


def sweep(root: Path, *, jobs: int, timeout: float, seed: int = 0, platform: str = "a2a3",
          progress: Any = None, alone: set[str] | frozenset[str] = frozenset(),
          took: Mapping[str, float] | None = None) -> list[SweepRow]:
    """Every kernel file, ``jobs`` at a time; a file killed (out of memory, as a rule, or
    stopped by the :class:`Launcher` to leave memory to another) while others ran beside it
    is run again alone at the end, on every core. ``alone``: files (paths relative to
    ``root``) run alone from the start, on every core — those a previous sweep had to run
    again alone (:func:`needed_alone`), so that no first run beside another is wasted.
    ``took``: seconds per file from a previous sweep (:func:`seconds_taken`): files start
    longest first (:func:`start_order`)."""
    root = root.resolve()
    cores = max(1, len(os.sched_getaffinity(0)))
    threads = max(1, cores // max(1, jobs))  # the cores shared out among the children
    files = kernel_files(root)
    rows: list[SweepRow] = []
    files = start_order(files, root, took or {})
    first = [f for f in files if str(f.relative_to(root)) in alone] if jobs > 1 else []
    files = [f for f in files if f not in first]
    total = len(files) + len(first)
    launcher = Launcher(guard=jobs > 1)
    try:
        for f in first:
            rows.append(run_one(f, root, timeout, seed, platform, launcher, cores))
            rows[-1].alone, rows[-1].first = True, ALONE_FROM_THE_START
            if progress is not None:
                progress(rows[-1], len(rows), total)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futs = {pool.submit(run_one, f, root, timeout, seed, platform, launcher, threads): f
                    for f in files}
            for fut in as_completed(futs):
                row = fut.result()
                rows.append(row)
                if progress is not None:
                    progress(row, len(rows), total)
        for i, row in enumerate(rows):
            if row.killed and jobs > 1:
                rows[i] = run_one(root / row.file, root, timeout, seed, platform, launcher,
                                  cores)
                rows[i].alone, rows[i].first = True, row.reason
                if progress is not None:
                    progress(rows[i], len(rows), total)
    finally:
        launcher.close()
    rows.sort(key=lambda r: r.file)
    return judge_modules(rows, root)


def start_order(files: list[Path], root: Path, took: Mapping[str, float]) -> list[Path]:
    """The order files start in: longest first, so that no long file starts last while the
    other workers sit idle (Graham's longest-processing-time order: a sweep within 4/3 of the
    shortest possible). Files a previous sweep timed (``took``, by path relative to ``root``)
    by those seconds; the others before them, largest source first (a new file may be long,
    and the largest are the whole-model forwards)."""
    def key(f: Path) -> tuple[int, float]:
        t = took.get(str(f.relative_to(root)))
        return (0, -f.stat().st_size) if t is None else (1, -t)

    return sorted(files, key=key)


def seconds_taken(history: dict[str, Any]) -> dict[str, float]:
    """Seconds per file (path relative to the root) of a finished sweep (its ``--json``)."""
    return {r["file"]: float(r["seconds"]) for r in history.get("files", [])
            if isinstance(r.get("seconds"), (int, float))}


#: why a file ran alone although nothing stopped it (``first_run`` of its row)
ALONE_FROM_THE_START = "run alone from the start: a previous sweep had to run it again alone"


def needed_alone(history: dict[str, Any]) -> set[str]:
    """The files a finished sweep (its ``--json``) ran again alone after a kill, by path."""
    return {r["file"] for r in history.get("files", []) if r.get("alone")}


def judge_modules(rows: list[SweepRow], root: Path) -> list[SweepRow]:
    """A module with no ``__main__`` of its own (``ci == "lib"``: ``@pl.jit.inline`` helpers
    the kernels import) that ``run-kernel`` cannot run alone is judged through the runs that
    executed its code (``op_files`` of their results: pl ops called from its lines):

    - FAIL when such a run fails *in it* (the failure names one of its lines);
    - PASS when none does and at least one such run passes;
    - otherwise it stays CANNOT RUN, saying which runs executed it and how they ended."""
    for i, row in enumerate(rows):
        if row.ci != "lib" or row.verdict != CANNOT_RUN:
            continue
        path = str((root / row.file).resolve())
        ran = [r for r in rows if r is not row and path in r.result.get("op_files", {})]
        if not ran:
            continue
        here = [r for r in ran if r.verdict == FAIL and path in r.reason]
        passed = [r for r in ran if r.verdict == PASS]
        shown = here or passed or ran
        names = ", ".join(r.file for r in shown[:3]) \
            + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        if here:
            rows[i] = SweepRow(row.file, FAIL, row.seconds, f"fails in {names}: {here[0].reason}",
                               row.ci, row.phases, row.result)
        elif passed:
            n = sum(r.result["op_files"][path] for r in passed)
            rows[i] = SweepRow(row.file, PASS, row.seconds,
                               f"no __main__: its kernels ran ({n} pl ops) in {names}, which "
                               "pass", row.ci, row.phases, row.result)
        else:
            row.reason += f"; its kernels ran only in {names}, with no PASS"
    return rows


#: the summary line of the files pypto-lib's own CI runs on a simulator (``ci == "sim"``)
SIM_SET = "upstream sim set"


def summary(rows: list[SweepRow]) -> dict[str, Counter]:
    """Verdict counts per directory (relative to the swept root), then ``total``, then
    :data:`SIM_SET`."""
    per: dict[str, Counter] = {}
    for r in rows:
        d = str(Path(r.file).parent)
        per.setdefault(d, Counter())[r.verdict] += 1
    per["total"] = sum(per.values(), Counter())
    per[SIM_SET] = Counter(r.verdict for r in rows if r.ci == "sim")
    return per


def with_verdict(c: Counter) -> float:
    """The share of files that got a verdict (PASS or FAIL), in percent."""
    return 100 * (c.get(PASS, 0) + c.get(FAIL, 0)) / max(sum(c.values()), 1)


def render(rows: list[SweepRow], console: Any = None) -> None:
    from rich.table import Table

    console = console or make_console()
    t = Table(title="sweep", title_justify="left", expand=False)
    t.add_column("file", overflow="fold", max_width=40)
    t.add_column("ci", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    t.add_column("first reason", overflow="ellipsis", no_wrap=True, max_width=34)
    style = {PASS: "green", FAIL: "bold red", CANNOT_RUN: "yellow", TIMEOUT: "magenta"}
    for r in rows:
        t.add_row(r.file, r.ci, f"[{style[r.verdict]}]{r.verdict}[/]", f"{r.seconds:.1f}",
                  r.reason)
    console.print(t)
    s = Table(title="per directory", title_justify="left")
    s.add_column("directory", overflow="fold")
    for v in VERDICTS:
        s.add_column(v, justify="right")
    s.add_column("verdict %", justify="right")
    tail = ("total", SIM_SET)
    for d, c in sorted(summary(rows).items(), key=lambda kv: (kv[0] in tail, kv[0])):
        s.add_row(d, *(str(c.get(v, 0)) for v in VERDICTS), f"{with_verdict(c):.0f}")
    console.print(s)
    console.print(f"ci: the file's class in pypto-lib's own CI ({', '.join(CI_CLASSES)});\n"
                  f"'{SIM_SET}': the 'sim' files, those upstream runs on its simulator",
                  markup=False, highlight=False)


def cmd_sweep(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        print(f"lowering: error: sweep {args.dir}: not a directory", file=sys.stderr)
        return 2
    console = make_console()
    t0 = time.perf_counter()

    def progress(row: SweepRow, done: int, total: int) -> None:
        if not args.quiet:
            print(f"[{done}/{total}] {row.verdict:<10} {row.seconds:6.1f}s  {row.file}"
                  + (" (run alone from the start, --history)"
                     if row.first == ALONE_FROM_THE_START else
                     " (run alone after a kill)" if row.alone else
                     " (killed beside another file: runs again alone at the end)"
                     if row.killed and jobs > 1 else ""),
                  file=sys.stderr, flush=True)

    jobs = args.jobs or len(os.sched_getaffinity(0))
    alone: set[str] = set()
    took: dict[str, float] = {}
    if args.history:
        try:
            history = json.loads(Path(args.history).read_text())
            alone, took = needed_alone(history), seconds_taken(history)
        except (OSError, ValueError, TypeError, KeyError) as e:
            print(f"lowering: error: sweep --history {args.history}: {e}", file=sys.stderr)
            return 2
    rows = sweep(root, jobs=jobs, timeout=args.timeout, seed=args.seed, platform=args.platform,
                 progress=progress, alone=alone, took=took)
    wall = time.perf_counter() - t0
    if not rows:
        print(f"lowering: error: sweep {args.dir}: no kernel files (@pl.jit / @pl.program)",
              file=sys.stderr)
        return 2
    if table_wanted(args):
        render(rows, console)
    per = summary(rows)
    counts = per["total"]
    line = (f"{len(rows)} files in {wall:.0f} s: "
            + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
            + f"\nwith a verdict: {with_verdict(counts):.0f}% of all files, "
              f"{with_verdict(per[SIM_SET]):.0f}% of the {sum(per[SIM_SET].values())} in the "
              f"{SIM_SET}")
    if args.quiet:  # as everywhere: nothing printed; the exit code and --json say it all
        pass
    elif args.json == "-":  # stdout is the JSON's: the summary goes to stderr
        print(line, file=sys.stderr)
    else:
        console.print(line, markup=False, highlight=False)
    if args.json:
        write_json(args.json, {
            "root": str(root.resolve()), "seconds": round(wall, 1), "seed": args.seed,
            "platform": args.platform, "jobs": jobs, "timeout_s": args.timeout,
            "summary": {d: dict(c) for d, c in summary(rows).items()},
            "files": [r.to_dict() for r in rows]})
    return 0 if counts.get(PASS, 0) == len(rows) else 1


def add_subparser(sub: Any) -> None:
    s = sub.add_parser("sweep", help="run-kernel on every kernel file under DIR (a pypto-lib "
                                     "checkout): a table of verdicts")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds per file (default 300)")
    s.add_argument("--jobs", type=int, default=0, help="files at a time (default: one per core)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--platform", choices=("a2a3", "a5"), default="a2a3")
    s.add_argument("--json", metavar="FILE")
    s.add_argument("--history", metavar="FILE",
                   help="a previous sweep's --json: files start longest first by its times, "
                        "and those it had to run again alone (out of memory beside another) "
                        "run alone from the start, on every core")
    s.add_argument("--quiet", action="store_true",
                   help="print nothing (no progress lines, table or summary): the exit code and "
                        "--json")
    s.set_defaults(fn=cmd_sweep)
