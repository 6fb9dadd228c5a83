"""Honest verdicts: kernels follow or refuse the config's semantics, a model that ran the
reference anywhere is PARTIAL (exit 3), an error in kernel code is a FAIL naming its line, a
broken data file is exit 2 with one line, and a PR #134-style kernel file passes under the
pypto-lib-pr134 semantics."""

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise

import dsref
import lowering
from lowering.cli import main
from lowering.pipeline import region_shapes, run_kernel_on
from lowering.registry import kernel_for
from lowering.report import FAIL, PARTIAL, PASS, REFERENCE
from lowering.trace import trace

#: V3.2 scope 1: the stages with kernels (scopes 2-4 have none yet)
V32, V4 = "v32.decode_front[:decode_cache_write]", "v4.qkv_proj_rope"
KERNELS = Path(__file__).parent / "pypto_kernels" / "v32"
PR134_FILE = str(KERNELS / "v32_decode_front_pr134.py")
BF16 = ml_dtypes.bfloat16


# ---- the V3.2 RMSNorm kernels follow `variance` (they always used sum·(1/N)) -------------------


def _chunked_rms_norm(x, w, variance: str, k: int = 512) -> np.ndarray:
    """The kernel's order, in plain numpy: Σx² per k-wide chunk rounded once to fp32, the
    chunk sums added in fp32 in order; then the variance form, + eps, sqrt, 1/·, x·r, ·w."""
    x, w = oracle.f32(x), oracle.f32(w)
    s = np.zeros((x.shape[0], 1), np.float32)
    for k0 in range(0, x.shape[1], k):
        s = s + oracle.sum32(x[:, k0:k0 + k] * x[:, k0:k0 + k])
    n = x.shape[1]
    var = s / np.float32(n) if variance == "mean" else s * np.float32(1.0 / n)
    r = np.float32(1) / np.sqrt(var + np.float32(1e-6))
    return oracle.bf16(w * (x * r))


def _variance_sensitive_rows(n_rows: int = 16) -> np.ndarray:
    """bf16 rows [n_rows, 1536] whose RMSNorm output moves between sum/N and sum·(1/N)
    (found with the numpy model of the kernel: ~0.3% of random rows)."""
    rng = np.random.default_rng(0)
    w = np.ones((1, 1536), np.float32)
    found = []
    while len(found) < n_rows:
        x = rng.standard_normal((4096, 1536)).astype(np.float32).astype(BF16)
        a = _chunked_rms_norm(x, w, "mean").astype(np.float32)
        b = _chunked_rms_norm(x, w, "mul_inv").astype(np.float32)
        found += [x[i] for i in np.flatnonzero((a != b).any(axis=1))]
    return np.stack(found[:n_rows])


@pytest.mark.parametrize("variance", ["mean", "mul_inv"])
def test_v32_rmsnorm_kernels_follow_the_variance_variant(variance):
    cfg = dsref.config("v32-tiny", variance=variance)
    ins = dsref.make_inputs(V32, cfg, batch=16, seed=0)
    ins["hidden_states"] = _variance_sensitive_rows()
    ins["input_rms_weight"] = np.ones_like(ins["input_rms_weight"])
    region = trace(V32, cfg, ins).region("input_rmsnorm")
    k = kernel_for(V32, "input_rmsnorm")
    tiling = k.tiling(cfg, region_shapes(region))
    assert tiling.variance == variance
    got = run_kernel_on(k, cfg, region, region.inputs, tiling).outputs["normed"]
    want = _chunked_rms_norm(ins["hidden_states"], ins["input_rms_weight"], variance)
    assert_bitwise(got, want, f"normed ({variance})")
    # the planted bug: the other form (what the kernels computed whatever the config said)
    other = "mul_inv" if variance == "mean" else "mean"
    bad = run_kernel_on(k, cfg, region, region.inputs,
                        dataclasses.replace(tiling, variance=other)).outputs["normed"]
    assert (bad.astype(np.float32) != want.astype(np.float32)).any()


def test_pr134_semantics_is_followed_by_the_kernels():
    cfg = dsref.config("v32-tiny", semantics="pypto-lib-pr134")
    ins = dsref.make_inputs(V32, cfg, batch=16, seed=3)
    rep = lowering.diff(V32, cfg, ins)  # isolated: each region on the reference's inputs
    assert rep.verdict == PASS, rep.to_json()
    q = rep.region("q_lora_proj")
    assert q.tiling["mode"] is None and q.outputs[0].name == "qr_raw"
    assert rep.region("q_lora_rmsnorm").tiling["round_input"] is True
    # Σx² in fp32 chunks, not the exact sum: at most 1 bf16 ulp off, inside the bound
    assert rep.region("q_lora_rmsnorm").outputs[0].max_ulp <= 1
    # the ds32 kernels held against PR #134's reference fail exactly where PR #134 differs
    ds = lowering.diff(V32, cfg, ins, kernel_cfg=dsref.config("v32-tiny"))
    assert ds.verdict == FAIL


def test_v4_qr_quant_follows_the_pr332_golden_scale_form():
    """qr_scale_form=mul_recip (PR #332's torch golden: sq = 127·(1/amax)): the kernel computes
    it bit for bit; the default kernel's qr_scale moves on about a fifth of the rows."""
    cfg = dsref.config("v4-tiny", qr_scale_form="mul_recip")
    ins = dsref.make_inputs(V4, cfg, batch=5, seq=3, seed=0)
    rep = lowering.diff(V4, cfg, ins)
    q = rep.region("qr_quant")
    assert rep.verdict == PASS and q.tiling["scale_form"] == "mul_recip"
    assert all(o.differ_ratio == 0.0 for o in q.outputs)
    default = lowering.diff(V4, dsref.config("v4-tiny"), ins, kernel_cfg=cfg).region("qr_quant")
    assert {o.name: o.differ_ratio > 0 for o in default.outputs}["qr_scale"]


# ---- PARTIAL: a region ran the reference ---------------------------------------------------------


def test_a_region_on_the_reference_makes_the_model_partial(capsys):
    cfg = dsref.config("v4-tiny", semantics="deepseek-v4-official")
    ins = dsref.make_inputs(V4, cfg, batch=1, seq=3, seed=0)
    rep = lowering.diff(V4, cfg, ins)
    assert rep.verdict == PARTIAL and rep.first_fail is None
    assert rep.reference_regions == ["q_head_rms_rope", "kv_rms_rope"]
    notes = {r.name: r.note for r in rep.regions if r.status == REFERENCE}
    assert "q_head_norm='bf16'" in notes["q_head_rms_rope"]
    assert "kv_nope_fp8=True" in notes["kv_rms_rope"]
    # the kernels that ran follow the rest: bf16 Linear outputs, fp32 tables
    assert rep.region("qr_proj_matmul").status == PASS
    assert rep.region("qr_proj_matmul").tiling["round_mode"] == "rint"
    assert rep.to_dict()["verdict"] == PARTIAL
    code = main(["diff", V4, "--config", "v4-tiny", "--batch", "1", "--seq", "3",
                 "--semantics", "deepseek-v4-official"])
    out = capsys.readouterr().out
    assert code == 3
    assert "PARTIAL v4.qkv_proj_rope" in out and "ran the reference" in out


def test_every_lowering_command_takes_semantics(capsys):
    for cmd in ("diff", "plan", "budget", "diff-files", "run-kernel", "fingerprint"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "--semantics" in capsys.readouterr().out, cmd
    assert main(["plan", V32, "--config", "v32-tiny", "--semantics", "pypto-lib-pr134"]) == 0
    assert "round_input=True" in capsys.readouterr().out
    assert main(["plan", V32, "--config", "v32-tiny", "--semantics", "cann"]) == 2
    assert "does not apply to v32.decode_front" in capsys.readouterr().err


# ---- an error in kernel code is a FAIL naming its line -----------------------------------------


def _broken_kv_a_proj(normed, wkv_a, kv_a_out, *, tiling):
    raise ValueError("a bug in the kernel")  # the line the report must name


BROKEN_LINE = _broken_kv_a_proj.__code__.co_firstlineno + 1


def test_an_error_in_kernel_code_is_a_fail_naming_its_line(monkeypatch, capsys):
    from lowering.kernels.v32 import kv_a_proj

    monkeypatch.setattr(kv_a_proj, "kv_a_proj", _broken_kv_a_proj)
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=16, seed=0)
    rep = lowering.diff(V32, cfg, ins, mode="chained")
    assert rep.verdict == FAIL and rep.first_fail == "kv_a_proj"
    (f,) = rep.region("kv_a_proj").findings
    assert f.check == "error" and f.severity == "fail"
    assert f"test_honest_verdicts.py:{BROKEN_LINE}" in f.message
    assert "ValueError: a bug in the kernel" in f.message
    # downstream regions still ran (on the reference's kv_a_out) and passed
    assert rep.region("kv_rmsnorm").status == PASS
    assert main(["diff", V32, "--config", "v32-tiny", "--batch", "16", "--quiet"]) == 1


# ---- broken data files: exit 2, one line naming the file ----------------------------------------


@pytest.fixture(scope="module")
def goldens(tmp_path_factory):
    root = tmp_path_factory.mktemp("goldens")
    for fmt in ("safetensors", "npz", "pypto-lib"):
        dsref.write_golden(root / fmt, V32, "v32-tiny", batch=2, seed=0, fmt=fmt)
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt,victim", [
    ("safetensors", "outputs.safetensors"), ("safetensors", "inputs.safetensors"),
    ("npz", "inputs.npz"), ("pypto-lib", "out/qr_out.pt"), ("pypto-lib", "in/wq_a.pt"),
    ("safetensors", "meta.json"),
])
def test_a_corrupted_data_file_is_exit_2_with_one_line(goldens, tmp_path, capsys, fmt, victim):
    d = _copy(goldens / fmt, tmp_path / "d")
    f = d / victim
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])  # truncated
    assert main(["diff-files", "--data", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0] and "unreadable" in err[0], err
    assert main(["run-kernel", str(KERNELS / "v32_decode_front_scope1.py"), "--reference",
                 "dsref", "--data", str(d), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(f) in err[0], err


def test_a_meta_json_that_is_not_an_object_is_exit_2(goldens, tmp_path, capsys):
    d = _copy(goldens / "npz", tmp_path / "d")
    (d / "meta.json").write_text("[1, 2]")
    assert main(["diff-files", "--data", str(d), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "meta.json" in line and "JSON object" in line


# ---- the PR #134-style kernel file of ours --------------------------------------------------------


def test_pr134_file_passes_under_its_semantics(capsys):
    args = ["run-kernel", PR134_FILE, "--reference", "dsref", "--batch", "16",
            "--map", "qr_fp32=qr_raw", "--quiet"]
    assert main([*args, "--semantics", "pypto-lib-pr134"]) == 0
    # under ds32 the divergent region fails, and nothing downstream of it
    from lowering.run_kernel import run_file

    res = run_file(PR134_FILE, "build_decode_front_pr134_program", batch=16,
                   maps={"qr_fp32": "qr_raw"})
    status = {r.name: r.status for r in res.report.regions}
    assert status["q_lora_rmsnorm"] == FAIL
    for downstream in ("q_rope", "decode_cache_write"):
        assert status[downstream] == PASS, (downstream, res.report.to_json())
