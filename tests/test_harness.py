"""`lowering run-kernel FILE` (a pypto-lib file's own __main__, specs, golden and comparators on
the emulator) and `lowering sweep DIR`, on the miniature checkout tests/pypto_lib_mini."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="pypto-lib files build their specs and goldens with torch")

from lowering import harness  # noqa: E402
from lowering.cli import main  # noqa: E402
from lowering.harness import CANNOT_RUN, FAIL, PASS, run_file  # noqa: E402

MINI = Path(__file__).parent / "pypto_lib_mini"
TOY = MINI / "models" / "toy"


def _fails(res: harness.FileResult, check: str) -> list[str]:
    return [f.message for c in res.cases for f in c.findings
            if f.check == check and f.severity == "fail"]


def test_pass_uses_the_checkouts_own_golden_package(tmp_path):
    log = tmp_path / "golden.log"
    res = run_file(MINI / "examples" / "scale.py", env={"MINI_GOLDEN_LOG": str(log)})
    assert res.verdict == PASS, res.reason
    assert [c.status for c in res.cases] == [PASS]
    y = res.cases[0].outputs[0]
    assert (y.name, y.ok, y.comparator) == ("y", True, "allclose r=0 a=0")
    assert y.diff.differ_ratio == 0.0  # y = 2x + b: exact in fp32, bitwise equal to torch
    assert log.read_text() == "y\n"  # the checkout's validate_golden judged it, once


def test_each_run_jit_call_is_a_case_and_mode_is_the_files_flag():
    res = run_file(MINI / "examples" / "modes.py")
    assert res.verdict == PASS, res.reason
    assert [c.outputs[0].diff.shape for c in res.cases] == [(16, 1), (48, 1)]
    assert [c.outputs[0].comparator for c in res.cases] == ["ratio_allclose"] * 2
    one = run_file(MINI / "examples" / "modes.py", mode="large")
    assert [c.outputs[0].diff.shape for c in one.cases] == [(48, 1)]


def test_the_file_sees_only_its_own_argv_and_env(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--variant", "big", "-q"])
    small = run_file(TOY / "argv_config.py")
    assert small.verdict == PASS, small.reason
    assert small.cases[0].outputs[0].diff.shape == (16, 32)
    big = run_file(TOY / "argv_config.py", env={"TOY_VARIANT": "big"})
    assert big.cases[0].outputs[0].diff.shape == (64, 32)
    assert sys.argv == ["pytest", "--variant", "big", "-q"]
    assert "config" not in sys.modules and "golden" not in sys.modules
    assert "pypto.language" not in sys.modules
    assert str(TOY) not in sys.path


def test_race_is_a_fail_naming_tensor_loop_and_iterations():
    res = run_file(TOY / "race.py")
    assert res.verdict == FAIL
    (msg,) = _fails(res, "race")
    assert "race on tensor 'scratch'" in msg and "loop 'h'" in msg
    assert "h=0 writes scratch[0, 0:32]" in msg and "h=1 writes" in msg
    assert res.cases[0].outputs[0].ok  # sequential emulation hides it from the golden


def test_tail_never_written_fails_the_golden_and_says_why():
    res = run_file(TOY / "tail.py")
    assert res.verdict == FAIL
    y = res.cases[0].outputs[0]
    assert not y.ok and "Mismatched elements: 16/144" in y.detail
    assert y.diff.first_mismatches[0] == (8, 0)
    cov = [f for f in res.cases[0].findings if f.check == "coverage"]
    assert cov and cov[0].severity == "warning" and "rows 8..8" in cov[0].message


def test_budget_overflow_fails():
    res = run_file(TOY / "budget.py")
    assert res.verdict == FAIL
    (msg,) = _fails(res, "budget")
    assert "scope 'whole_tile'" in msg and "Vec needs" in msg and "a2a3" in msg
    assert res.cases[0].outputs[0].ok
    assert run_file(TOY / "budget.py", platform="a5").verdict == FAIL  # 512 KiB > 240 too


def test_default_cast_mode_on_ties_fails_against_a_round_to_even_golden():
    res = run_file(TOY / "ties.py")
    assert res.verdict == FAIL
    y = res.cases[0].outputs[0]
    assert not y.ok and y.diff.max_ulp == 1 and y.diff.differ_ratio == pytest.approx(0.5)


def test_unsupported_construct_cannot_run_naming_it_and_the_line():
    res = run_file(TOY / "unsupported.py")
    assert res.verdict == CANNOT_RUN and res.exit == 2
    assert "pl.not_an_op" in res.reason and "unsupported.py:8" in res.reason


def test_an_exception_of_the_kernels_own_code_is_a_fail_with_file_line():
    res = run_file(TOY / "kernel_raises.py")
    assert res.verdict == FAIL and res.exit == 1
    assert "rows must be a multiple of 32" in res.reason and "kernel_raises.py:8" in res.reason


def test_file_without_main_runs_its_kernel_specs_and_golden():
    assert run_file(TOY / "nomain.py").verdict == PASS
    res = run_file(TOY / "config.py")
    assert res.verdict == CANNOT_RUN and "no __main__" in res.reason


def test_program_class_with_a_scalar_runs_through_golden_run():
    res = run_file(TOY / "program.py")
    assert res.verdict == PASS, res.reason
    assert res.cases[0].outputs[0].diff.differ_ratio == 0.0


def test_same_seed_same_bits_other_seed_other_inputs():
    a, b = (run_file(MINI / "examples" / "modes.py", seed=s, mode="small") for s in (3, 3))
    c = run_file(MINI / "examples" / "modes.py", seed=4, mode="small")
    (ga, wa), (gb, wb), (gc, _) = (r.cases[0].values["s"] for r in (a, b, c))
    assert ga.tobytes() == gb.tobytes() and wa.tobytes() == wb.tobytes()
    assert ga.tobytes() != gc.tobytes()


def test_cli_exit_codes_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run-kernel", str(MINI / "examples" / "scale.py"), "--json", str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["verdict"] == PASS and rep["cases"][0]["outputs"][0]["name"] == "y"
    assert main(["run-kernel", str(TOY / "race.py"), "--quiet"]) == 1
    assert main(["run-kernel", str(TOY / "unsupported.py")]) == 2
    assert "pl.not_an_op" in capsys.readouterr().err
    assert main(["run-kernel", str(TOY / "race.py"), "--reference", "golden",
                 "--config", "v32-tiny"]) == 2
    assert "belong to --reference dsref" in capsys.readouterr().err


def test_sweep_end_to_end_on_a_miniature_checkout(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    rc = main(["sweep", str(MINI), "--timeout", "120", "--json", str(out), "--jobs", "2"])
    assert rc == 1
    rep = json.loads(out.read_text())
    got = {Path(f["file"]).stem: f["verdict"] for f in rep["files"]}
    assert got == {"scale": PASS, "modes": PASS, "argv_config": PASS, "nomain": PASS,
                   "program": PASS, "race": FAIL, "tail": FAIL, "budget": FAIL, "ties": FAIL,
                   "kernel_raises": FAIL, "unsupported": CANNOT_RUN, "allgather": PASS,
                   "host_call": PASS, "doubled": PASS, "rowops": PASS, "widened": FAIL,
                   "overrun": FAIL}
    assert rep["summary"]["examples"] == {PASS: 2}
    assert rep["summary"]["total"] == {PASS: 9, FAIL: 7, CANNOT_RUN: 1}
    # pypto-lib's own CI classes: no __main__, so upstream never runs them itself
    assert {Path(f["file"]).stem for f in rep["files"] if f["ci"] != "sim"} == {
        "nomain", "rowops", "overrun"}
    assert rep["summary"]["upstream sim set"] == {PASS: 7, FAIL: 6, CANNOT_RUN: 1}
    why = {Path(f["file"]).stem: f["reason"] for f in rep["files"]}
    # helper modules, judged through the runs that execute their kernels
    assert why["rowops"].startswith("no __main__: its kernels ran (3 pl ops) in "
                                    "models/toy/doubled.py")
    assert why["overrun"].startswith("fails in models/toy/widened.py: ")
    assert "overrun.py:9" in why["overrun"] and "out of bounds" in why["overrun"]
    text = capsys.readouterr().out
    assert "17 files" in text and "9 PASS, 7 FAIL, 1 CANNOT RUN, 0 TIMEOUT" in text
    assert "with a verdict: 94% of all files, 93% of the 14 in the upstream sim set" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_sweep_quiet_prints_nothing(capsys):
    assert main(["sweep", str(MINI / "examples"), "--quiet", "--jobs", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_a_helper_module_stays_cannot_run_when_no_run_executes_it():
    from lowering.sweep import SweepRow, judge_modules

    rows = [SweepRow("models/toy/rowops.py", CANNOT_RUN, 1.0, "no __main__", "lib"),
            SweepRow("models/toy/doubled.py", FAIL, 1.0, "elsewhere", "sim",
                     result={"op_files": {str(TOY / "rowops.py"): 3}})]
    judged = judge_modules(rows, MINI)
    assert judged[0].verdict == CANNOT_RUN  # its only run failed, not in it
    assert judged[0].reason.endswith("its kernels ran only in models/toy/doubled.py, "
                                     "with no PASS")
    alone = judge_modules([SweepRow("models/toy/rowops.py", CANNOT_RUN, 1.0, "x", "lib")], MINI)
    assert alone[0].verdict == CANNOT_RUN and alone[0].reason == "x"


def test_sweep_timeout_is_a_verdict(tmp_path):
    from lowering.sweep import run_one

    slow = tmp_path / "models" / "slow.py"  # its own code never ends
    slow.parent.mkdir()
    slow.write_text("import time\nimport pypto.language as pl\n\n\n@pl.jit\ndef k():\n"
                    "    pass\n\n\nif __name__ == '__main__':\n    time.sleep(60)\n")
    t0 = time.perf_counter()
    row = run_one(slow, tmp_path, timeout=3, seed=0, platform="a2a3")
    assert row.verdict == "TIMEOUT" and "no verdict within 3 s" in row.reason
    assert "slow.py: the file's own code" in row.reason  # the phase it was stuck in
    assert time.perf_counter() - t0 < 30  # killed, not waited for


SLEEPY = (MINI / "examples" / "scale.py").read_text().replace(
    "if __name__ == \"__main__\":\n", "if __name__ == \"__main__\":\n    import time\n"
    "    time.sleep(3)\n")


def test_short_of_memory_the_sweep_stops_the_child_started_last(tmp_path, monkeypatch):
    """With two files running and memory nearly gone, the launcher stops the younger (the
    kernel's killer would take the larger, usually the one that ran longest); the elder
    finishes, and the stopped one is marked for a run alone."""
    import threading

    from lowering import sweep as sw

    (tmp_path / "models").mkdir()
    elder, younger = tmp_path / "models" / "elder.py", tmp_path / "models" / "younger.py"
    for f in (elder, younger):
        f.write_text(SLEEPY)
    assert "time.sleep(3)" in SLEEPY
    low = threading.Event()
    monkeypatch.setattr(sw, "_meminfo", lambda: (5, 100) if low.is_set() else (90, 100))
    launcher = sw.Launcher()
    rows = {}

    def go(f):  # noqa: ANN001
        rows[f.name] = sw.run_one(f, tmp_path, 60, 0, "a2a3", launcher)

    try:
        deadline = time.monotonic() + 30

        def until(n: int) -> None:
            while launcher.running < n and time.monotonic() < deadline:
                time.sleep(0.05)
            assert launcher.running == n

        ta = threading.Thread(target=go, args=(elder,))
        ta.start()
        until(1)
        tb = threading.Thread(target=go, args=(younger,))
        tb.start()
        until(2)
        low.set()  # both run: the guard stops the younger; the elder is then alone
        ta.join(60)
        tb.join(60)
    finally:
        launcher.close()
    assert rows["elder.py"].verdict == PASS, rows["elder.py"].reason
    y = rows["younger.py"]
    assert y.verdict == CANNOT_RUN and y.killed
    assert "stopped by the sweep to leave memory to the file beside it" in y.reason


def test_a_file_killed_beside_others_runs_again_alone(tmp_path, monkeypatch):
    from lowering import sweep as sw

    boom = tmp_path / "models" / "boom.py"  # killed as the out-of-memory killer would
    boom.parent.mkdir()
    boom.write_text("import os, signal\nimport pypto.language as pl\n\n\n@pl.jit\ndef k():\n"
                    "    pass\n\n\nif __name__ == '__main__':\n"
                    "    os.kill(os.getpid(), signal.SIGKILL)\n")
    row = sw.run_one(boom, tmp_path, timeout=60, seed=0, platform="a2a3")
    assert row.verdict == CANNOT_RUN and row.killed
    assert "killed by signal 9 without a result (since" in row.reason
    assert "boom.py: the file's own code" in row.reason

    calls = []
    real = sw.run_one

    def once_killed(path, root, timeout, seed, platform, launcher, threads):
        calls.append(path.name)
        given.append((path.name, threads))
        if path.name == "scale.py" and calls.count("scale.py") == 1:
            return sw.SweepRow(str(path.relative_to(root)), CANNOT_RUN, 1.0, "killed first",
                               killed=True)
        return real(path, root, timeout, seed, platform, launcher, threads)

    given = []
    monkeypatch.setattr(sw.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})

    monkeypatch.setattr(sw, "kernel_files", lambda root: sorted((root / "examples").glob("*.py")))
    monkeypatch.setattr(sw, "run_one", once_killed)
    rows = sw.sweep(MINI, jobs=2, timeout=60)
    assert [(Path(r.file).name, r.verdict, r.alone) for r in rows] == [
        ("modes.py", PASS, False), ("scale.py", PASS, True)]
    assert calls.count("scale.py") == 2
    # the cores shared out between two children; a file run alone gets them all
    assert sorted(given) == [("modes.py", 2), ("scale.py", 2), ("scale.py", 4)]
    assert given[-1] == ("scale.py", 4)
    assert rows[1].to_dict()["first_run"] == "killed first"  # the record keeps why
    assert "first_run" not in rows[0].to_dict()


def test_history_runs_the_files_a_previous_sweep_needed_alone_first(tmp_path, monkeypatch):
    """``--history``: a file the previous sweep ran again alone (its ``--json`` row has
    ``alone``) runs alone from the start, on every core, before the others; nothing is run
    twice."""
    from lowering import sweep as sw

    given = []
    real = sw.run_one

    def recorded(path, root, timeout, seed, platform, launcher, threads):
        given.append((path.name, threads))
        return real(path, root, timeout, seed, platform, launcher, threads)

    monkeypatch.setattr(sw, "kernel_files", lambda root: sorted((root / "examples").glob("*.py")))
    monkeypatch.setattr(sw, "run_one", recorded)
    monkeypatch.setattr(sw.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    history = {"files": [{"file": "examples/scale.py", "alone": True},
                         {"file": "examples/modes.py", "alone": False}]}
    assert sw.needed_alone(history) == {"examples/scale.py"}
    rows = sw.sweep(MINI, jobs=2, timeout=60, alone=sw.needed_alone(history))
    assert given == [("scale.py", 4), ("modes.py", 2)]
    assert [(Path(r.file).name, r.verdict, r.alone) for r in rows] == [
        ("modes.py", PASS, False), ("scale.py", PASS, True)]
    assert rows[1].to_dict()["first_run"] == sw.ALONE_FROM_THE_START
    from lowering.cli import main

    monkeypatch.setattr(sw, "run_one", real)
    assert main(["sweep", str(MINI), "--history", str(tmp_path / "missing.json"),
                 "--quiet"]) == 2  # an unreadable history is a usage error, before any run


def test_history_starts_the_files_longest_first(tmp_path, monkeypatch):
    """``--history``: files start in the order of the previous sweep's seconds, longest first
    (a 2400 s file started last would hold the sweep for its whole length while the other
    workers idle); files it did not time start before them, largest source first."""
    from lowering import sweep as sw

    for name, size in [("a.py", 10), ("b.py", 30), ("c.py", 20), ("new_small.py", 5),
                       ("new_big.py", 50)]:
        (tmp_path / name).write_text("#" * size)
    files = sorted(tmp_path.glob("*.py"))
    history = {"files": [{"file": "a.py", "seconds": 2400.0}, {"file": "b.py", "seconds": 3.5},
                         {"file": "c.py", "seconds": 60}, {"file": "gone.py", "seconds": 9}]}
    took = sw.seconds_taken(history)
    assert took == {"a.py": 2400.0, "b.py": 3.5, "c.py": 60.0, "gone.py": 9.0}
    assert [f.name for f in sw.start_order(files, tmp_path, took)] == [
        "new_big.py", "new_small.py", "a.py", "c.py", "b.py"]
    assert [f.name for f in sw.start_order(files, tmp_path, {})] == [
        "new_big.py", "b.py", "c.py", "a.py", "new_small.py"]  # no history: by size

    given = []
    real = sw.run_one

    def recorded(path, root, timeout, seed, platform, launcher, threads):
        given.append(path.name)
        return real(path, root, timeout, seed, platform, launcher, threads)

    monkeypatch.setattr(sw, "kernel_files", lambda root: sorted((root / "examples").glob("*.py")))
    monkeypatch.setattr(sw, "run_one", recorded)
    for slow in ("modes.py", "scale.py"):
        given.clear()
        took = {f"examples/{n}": 100.0 if n == slow else 1.0 for n in ("modes.py", "scale.py")}
        sw.sweep(MINI, jobs=1, timeout=60, took=took)
        assert given[0] == slow


def test_a_child_runs_its_file_on_the_threads_it_is_given(tmp_path):
    from lowering.sweep import run_one

    probe = tmp_path / "models" / "probe.py"  # says what its own code runs on
    probe.parent.mkdir()
    probe.write_text("import os\nimport torch\nimport pypto.language as pl\n\n\n@pl.jit\n"
                     "def k():\n    pass\n\n\nif __name__ == '__main__':\n"
                     "    raise RuntimeError(f'torch {torch.get_num_threads()} golden '\n"
                     "                       f'{os.environ[\"PYPTO_GOLDEN_NUM_THREADS\"]}')\n")
    for n in (1, 2):
        row = run_one(probe, tmp_path, timeout=60, seed=0, platform="a2a3", threads=n)
        assert f"torch {n} golden {n}" in row.reason, row.reason


def test_progress_names_each_phase_and_the_sweep_reads_the_last(capsys):
    """`run-kernel --progress`: one stderr line per phase as it starts; a sweep whose child
    timed out names the last one (where the time went)."""
    from lowering.sweep import _last_phase, ci_class

    assert main(["run-kernel", str(MINI / "examples" / "scale.py"), "--quiet",
                 "--progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in err] == [
        "scale.py: the file's own code (imports, specs, weights)",
        "scale #1: making the inputs", "scale #1: the emulator", "scale #1: the file's golden",
        "scale #1: comparing", "scale #1 done: the file's own code"]
    assert _last_phase("\n".join(err[:3])).endswith(": scale #1: the emulator")
    assert ci_class(MINI / "models" / "toy" / "nomain.py") == "lib"
    assert main(["run-kernel", str(TOY / "race.py"), "--progress", "--config", "v32-tiny"]) == 2


def test_a_file_that_runs_its_kernel_itself():
    """kernel.compile(...)(tensors) and kernel(tensors) run on the emulator as on a device:
    each call a case judged by its checks, the outputs written back for the file's own check.
    Planted: a race (named, though the file then fails its own check), a wrong value (the
    file's check fails: FAIL at its line)."""
    path = TOY / "host_call.py"
    res = run_file(path)
    assert res.verdict == PASS, res.reason
    assert [c.label for c in res.cases] == ["double #1", "double #2"]
    res = run_file(path, env={"HOST_CALL_PLANT": "race"})
    assert res.verdict == FAIL and res.reason.startswith("double #1: [race]")
    res = run_file(path, env={"HOST_CALL_PLANT": "wrong"})
    assert res.verdict == FAIL and [c.status for c in res.cases] == [PASS]
    assert "y != 2x" in res.reason and "host_call.py:36" in res.reason


def test_a_host_call_outside_run_kernel_names_itself():
    import torch

    from lowering.pypto_compat import installed

    with installed(force=True):
        import pypto.language as pl

        @pl.jit
        def ident(x: pl.Tensor[[4, 8], pl.FP32], y: pl.Out[pl.Tensor[[4, 8], pl.FP32]]):
            y[:, :] = pl.add(x[:, :], 0.0)
            return y

        x = torch.zeros(4, 8)
        with pytest.raises(NotImplementedError, match=r"ident called with host tensors at .*"
                                                      r"test_harness.py"):
            ident(x, x)
        with pytest.raises(NotImplementedError, match="lower.*IR is not emulated"):
            ident.lower(x, x)
        assert ident.compile(x, x).output_dir  # an (empty) directory, as pypto keeps sources


def test_outputs_start_as_zeros_like_the_harness():
    res = run_file(TOY / "tail.py")
    got = res.cases[0].outputs[0].diff
    assert np.isfinite(got.max_abs)  # the unwritten row is 0, not a NaN sentinel


def test_the_files_own_draws_are_seeded_too(tmp_path):
    """Weights a file draws while building its specs (torch.randn with no seed of its own,
    as pypto-lib's V4 files do) are the same bits in every run of one --seed."""
    f = tmp_path / "draws.py"
    f.write_text(SCALE_WITH_DRAWN_WEIGHTS)
    sums = []
    for seed in (0, 0, 1):
        log = tmp_path / f"sum{len(sums)}"
        res = run_file(f, seed=seed, env={"DRAWS_LOG": str(log)})
        assert res.verdict == PASS, res.reason
        sums.append(log.read_text())
    assert sums[0] == sums[1] != sums[2]


SCALE_WITH_DRAWN_WEIGHTS = '''
import os
import pypto.language as pl


@pl.jit
def scale(x: pl.Tensor[[8, 32], pl.FP32], y: pl.Out[pl.Tensor[[8, 32], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="scale"):
        y[:, :] = pl.mul(x[:, :], 2.0)
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    x = torch.randn(8, 32)  # drawn here, not by an init_value callable
    with open(os.environ["DRAWS_LOG"], "w") as f:
        f.write(repr(float(x.double().sum())))
    return [TensorSpec("x", [8, 32], torch.float32, init_value=x),
            TensorSpec("y", [8, 32], torch.float32, is_output=True)]


def golden_scale(tensors):
    tensors["y"][:] = tensors["x"] * 2.0


if __name__ == "__main__":
    from golden import run_jit

    result = run_jit(fn=scale, specs=build_tensor_specs(), golden_fn=golden_scale,
                     rtol=0.0, atol=0.0)
    if not result.passed:
        raise SystemExit(1)
'''


STORES_INTO_ITS_INPUT = '''
import pypto.language as pl


@pl.jit
def bump(x: pl.Tensor[[8, 32], pl.FP32], y: pl.Out[pl.Tensor[[8, 32], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="bump"):
        t = pl.add(x[:, :], 1.0)
        x[:, :] = t  # a store into an input
        y[:, :] = t
    return y


def build_tensor_specs():
    import torch
    from golden import TensorSpec

    return [TensorSpec("x", [8, 32], torch.float32, init_value=torch.randn),
            TensorSpec("y", [8, 32], torch.float32, is_output=True)]


def golden_bump(tensors):
    tensors["y"][:] = tensors["x"] + 1.0


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=bump, specs=build_tensor_specs(), golden_fn=golden_bump, rtol=0.0, atol=0.0)
'''


def test_the_golden_sees_the_inputs_as_made_when_the_kernel_stores_into_one(tmp_path):
    """The harness keeps no snapshot of the inputs: it relies on the emulator copying what it
    is given. A kernel that writes its input must not change what the golden reads."""
    f = tmp_path / "bump.py"
    f.write_text(STORES_INTO_ITS_INPUT)
    res = run_file(f)
    y = res.cases[0].outputs[0]
    assert y.ok and y.diff.differ_ratio == 0.0, y.detail  # golden: pristine x + 1
    assert any("x" in f.message for c in res.cases for f in c.findings), \
        "the store into the input is reported"


RUNTIME_SPECS = '''
import pypto.language as pl


@pl.jit
def copy(x: pl.Tensor[[8, 32], pl.FP32], y: pl.Out[pl.Tensor[[8, 32], pl.FP32]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy"):
        y[:, :] = pl.add(x[:, :], 0.0)
    return y


def build_tensor_specs():
    import torch
    from pypto.runtime import TensorSpec  # the runtime's class, not golden's

    return [TensorSpec("x", [8, 32], torch.float32, init_value=torch.randn),
            TensorSpec("y", [8, 32], torch.float32, is_output=True)]


def golden_copy(tensors):
    tensors["y"][:] = tensors["x"]


if __name__ == "__main__":
    from golden import run_jit

    run_jit(fn=copy, specs=build_tensor_specs(), golden_fn=golden_copy)
'''


def test_specs_of_pypto_runtime_are_a_fail_golden_run_would_meet_too(tmp_path):
    """pypto-lib's golden.run sorts specs by isinstance on its own classes: it makes no input
    for a pypto.runtime.TensorSpec, so such a file cannot pass upstream either."""
    f = tmp_path / "runtime_specs.py"
    f.write_text(RUNTIME_SPECS)
    res = run_file(f)
    assert res.verdict == FAIL
    assert "spec 'x' is a pypto.runtime.TensorSpec, not a golden.TensorSpec" in res.reason
    assert "(2 of 2 specs)" in res.reason and "runtime_specs.py:16" in res.reason


def test_a_spec_of_the_wrong_shape_names_the_parameters_line(tmp_path):
    """A spec whose tensor is not the kernel parameter's annotated shape (pypto-lib's
    prefill_cp_fwd_draft.py cmp_kv): a FAIL naming the parameter, both shapes and the line of
    the kernel that declares it — never "(at ?)"."""
    f = tmp_path / "wrong_shape.py"
    f.write_text(SCALE_WITH_DRAWN_WEIGHTS.replace("x = torch.randn(8, 32)",
                                                  "x = torch.randn(8, 16)"))
    res = run_file(f, env={"DRAWS_LOG": str(tmp_path / "log")})
    assert res.verdict == FAIL
    assert "parameter 'x' of scale: expected pl.Tensor[[8, 32], pl.FP32]" in res.reason
    assert f"(the parameter of {f}:6)" in res.reason and "(at ?)" not in res.reason


def test_specs_larger_than_the_machine_cannot_run_before_one_tensor_is_made(tmp_path):
    """pypto-lib's whole-model files (deepseek_v4_flash_mtp/decode_fwd.py: 85 GiB of
    weights) cannot fit a 24 GiB machine: CANNOT RUN at once, naming the largest tensors and
    both sizes, not an out-of-memory kill minutes later."""
    f = tmp_path / "huge.py"
    f.write_text(SCALE_WITH_DRAWN_WEIGHTS.replace(
        '''TensorSpec("y", [8, 32], torch.float32, is_output=True)''',
        '''TensorSpec("y", [8, 32], torch.float32, is_output=True),
            TensorSpec("w", [1 << 40], torch.int8, init_value=torch.ones)'''))
    res = run_file(f, env={"DRAWS_LOG": str(tmp_path / "log")})
    assert res.verdict == CANNOT_RUN
    assert "its 3 tensors take 1024.0 GiB (w 1024.0 GiB, x 0.0 GiB" in res.reason
    have = harness.machine_memory() / 2**30
    assert f"more than this machine's {have:.1f} GiB of memory" in res.reason


def test_the_files_own_code_out_of_memory_cannot_run_naming_size_and_line(tmp_path):
    """An allocation of the file's own code past the machine (pypto-lib's
    deepseek_v4_pro/moe.py draws 17 GiB of float32 weights at a time) is CANNOT RUN: out of
    memory, how much it asked for, file:line."""
    f = tmp_path / "greedy.py"
    f.write_text(SCALE_WITH_DRAWN_WEIGHTS.replace(
        "x = torch.randn(8, 32)", "x = torch.randn(8, 32)\n    np.empty(1 << 50, np.int8)"
    ).replace("import os\n", "import os\nimport numpy as np\n"))
    res = run_file(f, env={"DRAWS_LOG": str(tmp_path / "log")})
    assert res.verdict == CANNOT_RUN
    assert res.reason.startswith("out of memory asking for 1.00 PiB")
    assert f"(at {f}:19)" in res.reason
