"""Smoke run of benchmarks/run.py at tiny dims: it runs and writes the documented JSON keys
(no timing is asserted: benchmarks are measurements, not tests)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    assert mod.main(["--quick", "--no-eager", "--no-cli", "--rounds", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["quick"] and res["copy_bandwidth_GBps"] > 0 and res["f64_gemm_gflops"] > 0
    assert res["machine"]["cpu"] and res["machine"]["cores"] >= 1 and res["cpu_kind"]
    assert res["lowering_diff"]["exit_code"] == 0  # every region of both models has a kernel
    # --quick: V3.2 scope 1 and V4 (the full run adds the whole fused V3.2 front)
    assert set(res["models"]) == {"v32.decode_front[:decode_cache_write]", "v4.qkv_proj_rope"}
    for m in res["models"].values():
        assert {"reference", "floor_s", "reference_over_floor", "emulator",
                "emulator_over_reference", "weight_bytes"} <= set(m)
        assert m["reference"]["jit_s"] > 0 and m["emulator"]["verdict"] == "PASS"
        assert set(m["prepared"]) == set(m["prepared_over_floor"]) == {"exact", "fp32"}
        assert all(p["call_s"] > 0 for p in m["prepared"].values())
        # interleaved rounds: every call kind timed once per round, its spread kept
        for kind in ("oneshot", "prepared"):
            for t in m[kind].values():
                assert len(t["runs_s"]) == 2 and t["min_s"] <= t["median_s"] <= t["max_s"]
        assert len(m["make_inputs_s"]["runs_s"]) == 2 and m["dot_gflop"] > 0
        assert m["prepared_exact_over_f64_gemm"] > 0 and "cli_diff" not in m  # --no-cli
    table = mod.markdown(res).splitlines()  # the README's table of this record
    assert "`v32-tiny`" in table[0] and "`v4-tiny`" in table[0] and len(table) == 12
    assert all(row.count("|") == 4 for row in table)
    assert table[-1].endswith("| – | – |")  # --no-cli: no end-to-end row
    out = capsys.readouterr().out
    assert "x the floor" in out and "interleaved rounds" in out and "float64 GEMM" in out


def test_sweep_benchmark_from_a_finished_sweep(tmp_path, capsys):
    """benchmarks/sweep.py --from-json turns a `lowering sweep --json` result into the
    benchmark record: files per minute from its wall time, counts per directory, per-file
    emulator ÷ golden (none where the golden took no time), the verdict share of all files and
    of upstream's sim set, and where the file-seconds went."""
    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    done = {"seconds": 120.0, "jobs": 2, "timeout_s": 60.0, "files": [
        {"file": "examples/a.py", "ci": "sim", "verdict": "PASS", "seconds": 3.0,
         "emulator_s": 2.0, "golden_s": 0.5},
        {"file": "models/x/b.py", "ci": "sim", "verdict": "FAIL", "seconds": 9.0,
         "reason": "race", "setup_s": 1.5, "emulator_s": 6.0, "golden_s": 0.0},
        {"file": "models/x/c.py", "ci": "no-sim", "verdict": "TIMEOUT", "seconds": 60.0}]}
    src, out = tmp_path / "sweep.json", tmp_path / "bench.json"
    src.write_text(json.dumps(done))
    assert mod.main([str(tmp_path), "--from-json", str(src), "--commit", "abc",
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["files"] == 3 and res["files_per_minute"] == 1.5 and res["jobs"] == 2
    assert res["commit"] == "abc" and res["timeout_s"] == 60.0
    assert res["summary"]["models/x"] == {"PASS": 0, "FAIL": 1, "CANNOT RUN": 0, "TIMEOUT": 1}
    ratios = {f["file"]: f["emulator_over_golden"] for f in res["per_file"]}
    assert ratios == {"examples/a.py": 4.0, "models/x/b.py": None, "models/x/c.py": None}
    assert res["with_verdict_pct"] == 66.7 and res["sim_set_with_verdict_pct"] == 100.0
    spent = res["seconds_by_phase"]
    assert spent["emulator_s"] == 8.0 and spent["setup_s"] == 1.5 and spent["other_s"] == 62.0
    # a 30 s limit: 3 + 9 + 30 core-seconds, 0.35 min on 2 cores, both verdicts kept
    fits = {f["timeout_s"]: f for f in res["what_fits"]}
    assert fits[30] == {"timeout_s": 30, "core_s": 42.0, "minutes": 0.3, "with_verdict": 2,
                        "with_verdict_pct": 66.7}
    assert fits[600]["core_s"] == 72.0
    assert "1.5 files/min" in capsys.readouterr().out
    assert mod.main([str(tmp_path), "--fits", str(out)]) == 0
    assert "--timeout   30:   0.3 min, 2 with a verdict (66.7%)" in capsys.readouterr().out


def test_quick_run_never_overwrites_the_record(tmp_path, monkeypatch, capsys):
    """benchmarks/run.py --quick without --out writes nothing (results.json is the measurement)."""
    spec = importlib.util.spec_from_file_location("bench_run2", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    record = ROOT / "benchmarks" / "results.json"
    before = record.read_bytes() if record.exists() else None
    monkeypatch.setattr(mod, "run", lambda **kw: {"quick": True})
    monkeypatch.setattr(mod, "render", lambda res: "table")
    assert mod.main(["--quick", "--no-eager", "--quiet"]) == 0
    assert "no record written" in capsys.readouterr().out
    assert (record.read_bytes() if record.exists() else None) == before
