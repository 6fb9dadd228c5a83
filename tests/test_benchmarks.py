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
    assert mod.main(["--quick", "--no-eager", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["quick"] and res["copy_bandwidth_GBps"] > 0 and res["lowering_diff"]["exit_code"] == 0
    assert set(res["models"]) == {"v32.decode_front", "v4.qkv_proj_rope"}
    for m in res["models"].values():
        assert {"reference", "floor_s", "reference_over_floor", "emulator",
                "emulator_over_reference", "weight_bytes"} <= set(m)
        assert m["reference"]["jit_s"] > 0 and m["emulator"]["verdict"] == "PASS"
        assert set(m["prepared"]) == set(m["prepared_over_floor"]) == {"exact", "fp32"}
        assert all(p["call_s"] > 0 for p in m["prepared"].values())
    assert "reference/floor" in capsys.readouterr().out
