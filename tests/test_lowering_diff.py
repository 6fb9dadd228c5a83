"""Comparators and metrics against hand-computed values; reports; the lowering CLI."""

import json

import ml_dtypes
import numpy as np
import pytest

import dsref
import lowering
from dsref.explore import ulps
from lowering import cli, tolerances
from lowering.diff import compare

BF16 = ml_dtypes.bfloat16


def _bf(a):
    return np.asarray(a, np.float32).astype(BF16)


def test_bf16_ulp_distance_counts_representable_steps_and_signed_zeros():
    a = _bf([1.0, -0.0, 0.0, 1.0, -1.0, 2.0 ** -133])
    b = _bf([1.0078125, 0.0, -0.0, 1.0234375, -1.0078125, -(2.0 ** -133)])
    np.testing.assert_array_equal(ulps(a, b), [1, 0, 0, 3, 1, 2])


def test_bf16_preset_tolerates_half_a_percent_of_one_ulp_errors():
    want = _bf(np.random.default_rng(0).standard_normal(2000))
    got = want.copy()
    got[:10] = np.nextafter(want[:10], BF16(np.inf))  # 0.5% of elements, 1 ulp (rel 2^-8 > 1/128? no)
    d = compare("x", got, want, tolerances.PRESETS["bf16"])
    assert d.ok and d.max_ulp == 1 and d.differ_ratio == pytest.approx(0.005)
    got[:200] = (want[:200].astype(np.float32) * 1.05).astype(BF16)  # 10% off by 5%
    d = compare("x", got, want, tolerances.PRESETS["bf16"])
    assert not d.ok and "outside tolerance" in d.message and d.mismatch_ratio >= 0.09
    assert d.first_mismatches[0] == (0,)


def test_nan_on_either_side_fails_and_names_the_index():
    want = _bf(np.ones(16))
    got = want.copy()
    got[3] = np.nan
    d = compare("q", got, want, tolerances.PRESETS["bf16"])
    assert not d.ok and "NaN/Inf element(s), first at [3]" in d.message


def test_int8_codes_allow_off_by_one_on_few_elements():
    want = np.zeros(1000, np.int8)
    got = want.copy()
    got[:5] = 1
    assert compare("qr", got, want, tolerances.PRESETS["int8_codes"]).ok
    got[0] = 2
    d = compare("qr", got, want, tolerances.PRESETS["int8_codes"])
    assert not d.ok and "|Δ| up to 2 > 1" in d.message
    got[:] = 0
    got[:6] = 1
    assert not compare("qr", got, want, tolerances.PRESETS["int8_codes"]).ok


def test_shape_or_dtype_mismatch_fails_clearly():
    d = compare("kv", np.zeros((2, 3), np.float32), _bf(np.zeros((2, 4))), tolerances.PRESETS["bf16"])
    assert not d.ok and d.message == "kv: expected bfloat16[2, 4], got float32[2, 3]"


def test_cosine_and_rel_l2():
    want = np.array([3.0, 4.0], np.float32)
    got = np.array([4.0, 3.0], np.float32)
    d = compare("s", got, want, tolerances.PRESETS["fp32"])
    assert d.cosine == pytest.approx(24 / 25) and d.rel_l2 == pytest.approx(np.sqrt(2) / 5)


def test_presets_by_dtype():
    assert tolerances.preset_for("q", np.dtype(BF16)).name == "bf16"
    assert tolerances.preset_for("qr", np.dtype(np.int8)).name == "int8_codes"
    assert tolerances.preset_for("qr_scale", np.dtype(np.float32)).name == "scale"
    assert tolerances.preset_for("qf", np.dtype(np.float32)).name == "fp32"
    with pytest.raises(ValueError, match="tolerance preset"):
        tolerances.get("loose")


def test_report_json_round_trips(tmp_path):
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs("v4.qkv_proj_rope", cfg, batch=1, seq=3, seed=0)
    rep = lowering.diff("v4.qkv_proj_rope", cfg, ins, mode="chained")
    d = json.loads(rep.to_json())
    assert d["model"] == "v4.qkv_proj_rope" and d["mode"] == "chained"
    assert [r["name"] for r in d["regions"]] == list(dsref.get_model("v4.qkv_proj_rope").stages)
    assert d["verdict"] == rep.verdict


def test_cli_exit_codes(tmp_path, capsys):
    assert cli.main(["diff", "v32.decode_front", "--config", "v4-tiny", "--quiet"]) == 2
    assert "not a config of v32.decode_front" in capsys.readouterr().err
    assert cli.main(["diff", "v32.decode_front", "--quiet"]) == 2
    assert cli.main(["diff", "v32.decode_front", "--config", "v32-tiny", "--variant", "cast=odd",
                     "--quiet"]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["diff", "v9.model"])
    assert e.value.code == 2
    out = tmp_path / "r.json"
    rc = cli.main(["diff", "v32.decode_front", "--config", "v32-tiny", "--batch", "2", "--json",
                   str(out), "--quiet"])
    rep = json.loads(out.read_text())[0]
    assert rc == {"PASS": 0, "FAIL": 1, "PARTIAL": 3}[rep["verdict"]]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plot extra not installed")
    out = tmp_path / "diff.png"
    assert cli.main(["diff", "v4.qkv_proj_rope", "--config", "v4-tiny", "--batch", "2", "--seq", "3",
                     "--plot", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_plot_without_matplotlib_is_a_clear_exit_2(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = cli.main(["diff", "v32.decode_front", "--config", "v32-tiny", "--batch", "2",
                   "--plot", str(tmp_path / "x.png"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lowering: error: plots need matplotlib: pip install 'dsref[plot]' "
                   "(or: pip install matplotlib)")
    assert not (tmp_path / "x.png").exists()


def test_heatmap_counts_elements_off_per_head_and_token():
    from lowering.plots import head_token_ulps

    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs("v4.qkv_proj_rope", cfg, batch=2, seq=3, seed=0)
    rep = lowering.diff("v4.qkv_proj_rope", dsref.with_variants(cfg, rope_preround=True), ins,
                        kernel_cfg=cfg)
    ulps = head_token_ulps(rep)
    assert ulps.shape == (6, cfg.heads, cfg.head_dim)
    assert not ulps[0].any()  # token 0 sits at position 0: the rotation is the identity
    assert not ulps[:, :, : cfg.nope].any() and ulps[1:, :, cfg.nope:].any()  # rope part only


def test_kernels_pass_with_parallel_iterations_permuted(tmp_path):
    """pl.parallel promises independent iterations: any order must give the same bits."""
    out = tmp_path / "r.json"
    # every region of both models has a kernel
    assert cli.main(["diff", "--permute-parallel", "--seed", "3", "--json", str(out), "--quiet"]) == 0
    reps = json.loads(out.read_text())
    assert [r["model"] for r in reps] == ["v32.decode_front", "v4.qkv_proj_rope"]
    assert [r["verdict"] for r in reps] == ["PASS", "PASS"]
    status = {reg["name"]: reg["status"] for r in reps for reg in r["regions"]}
    assert {n for n, s in status.items() if s != "PASS"} == set()


def test_plan_lists_every_region_with_its_kernel_and_tiling(capsys):
    assert cli.main(["plan", "v4.qkv_proj_rope", "--config", "v4-tiny", "--batch", "3",
                     "--seq", "3"]) == 0
    out = capsys.readouterr().out
    for stage in dsref.get_model("v4.qkv_proj_rope").stages:
        assert f" {stage}  → " in out and f"kernels/v4/{stage}.py" in out
    assert "x bfloat16[3, 3, 1536]" in out and "tiling: " in out


def test_budget_rows_and_exit_code(capsys):
    from lowering.budgets import measure
    from lowering.tile import LIMITS

    rows = measure("v32.decode_front", dsref.config("v32-tiny"), batch=16, platform="a5")
    by = {(r.region, r.space): r for r in rows}
    # the projections' [512, 64] bf16 weight tile fills L0B exactly (PR #134's K chunk)
    assert by[("q_head_proj", "Right")].shape == 512 * 64 * 2 == LIMITS["a5"]["Right"]
    assert not any(r.over for r in rows)
    assert cli.main(["budget", "v32.decode_front", "--config", "v32-tiny", "--batch", "16"]) == 0
    out = capsys.readouterr().out
    assert "q_head_proj" in out and "OVER" not in out
    assert out.rstrip().endswith("PASS v32.decode_front: every scope fits a2a3")


def test_closed_pipe_is_not_a_failure():
    """`lowering diff | head` and `dsref list | head` end with exit 0, no traceback — with
    stdout buffered, as in a shell pipe (PYTHONUNBUFFERED unset)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for cmd in (["-m", "lowering", "diff", "v32.decode_front", "--config", "v32-tiny", "--batch", "2"],
                ["-m", "dsref", "list"]):
        p = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)
        p.stdout.close()  # the reader is gone before the first write: every write is EPIPE
        err = p.stderr.read()
        assert p.wait(timeout=120) == 0, (cmd, err)
        assert b"Traceback" not in err


def test_default_table_fits_100_columns_and_names_the_semantics(capsys):
    """The default table reads at 100 columns, with a failing output and findings; the header
    names the semantics; --wide adds the remaining columns; flags a MODEL-less diff would
    ignore are an error."""
    from lowering.bugs import PLANTED
    from lowering.report import render
    from lowering.tile import Finding

    cfg = dsref.config("v4-tiny", variance="mul_inv")
    ins = dsref.make_inputs("v4.qkv_proj_rope", cfg, batch=3, seq=3, seed=0)
    with PLANTED["rope_trunc"].patch():
        rep = lowering.diff("v4.qkv_proj_rope", cfg, ins)
    rep.regions[-1].findings.append(Finding("race", "fail", "kv_rms_rope", "kv_rope", (), "kv",
                                            "a planted finding"))
    render([rep])
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    assert "semantics=pypto-lib-pr332" in out.splitlines()[1]
    assert "1f 0w" in out and "cosine" not in out and "FAIL v4.qkv_proj_rope" in out
    render([rep], wide=True)
    assert "cosine" in capsys.readouterr().out
    rep.variants = dict(rep.variants, cast="rhaz")
    render([rep])
    assert "variants: variance=mul_inv, cast=rhaz" in capsys.readouterr().out
    for flags in (["--batch", "8"], ["--config", "v32"], ["--seq", "2"]):
        assert cli.main(["diff", *flags]) == 2
        assert f"{flags[0]} need a MODEL" in capsys.readouterr().err


def test_json_dash_is_stdout_and_bad_output_paths_fail_first(capsys, tmp_path, monkeypatch):
    import time

    args = ["diff", "v32.decode_front", "--config", "v32-tiny", "--batch", "2", "--quiet"]
    assert cli.main([*args[:-1], "--json", "-"]) == 0  # every region has a kernel and passes
    rep = json.loads(capsys.readouterr().out)  # the JSON alone: no table on stdout
    assert rep[0]["model"] == "v32.decode_front"
    monkeypatch.setattr(lowering.pipeline, "diff", lambda *a, **k: time.sleep(60))
    for flag, path, why in (("--json", tmp_path / "no" / "out.json", "does not exist"),
                            ("--plot", tmp_path / "no" / "out.png", "does not exist"),
                            ("--json", tmp_path, "a directory, not a file")):
        t0 = time.perf_counter()
        assert cli.main([*args, flag, str(path)]) == 2  # before the diff would start
        assert time.perf_counter() - t0 < 30
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lowering: error: {flag} {path}") and why in err


def test_seq_lens_flag_sets_the_contexts_of_a_v32_diff(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["diff", "v32.decode_front[sparse_attn]", "--config", "v32-tiny", "--batch", "2",
            "--quiet"]
    assert cli.main([*args, "--seq-lens", "64,3", "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["verdict"] == "PASS"
    assert cli.main([*args, "--seq-lens", "64,65"]) == 2
    assert "seq_lens: each must lie in [1, 64]" in capsys.readouterr().err


def test_nonfinite_mask_of_every_bf16_pattern():
    """The comparison's NaN/Inf mask reads bf16 exponent bits; for all 65536 patterns it must
    agree with isfinite of the exactly widened fp32 values (256 of them: ±Inf and the NaNs)."""
    from lowering.diff import _nonfinite

    every = np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    want = ~np.isfinite(every.astype(np.float32))
    assert np.array_equal(_nonfinite(every), want) and want.sum() == 256
