"""``lowering fingerprint``: which named semantics a run's outputs match, region by region,
teacher-forced on what the kernel consumed — of the hand-tiled kernels, of a data directory,
and of a pypto-lib-style kernel file."""

import json
from pathlib import Path

import numpy as np
import pytest

import dsref
from dsref.v32 import SCOPE1
from lowering import fingerprint as fpm
from lowering.cli import main

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"
KERNELS = Path(__file__).parent / "pypto_kernels" / "v32"
PR134_FILE = str(KERNELS / "v32_decode_front_pr134.py")
DS32_FILE = str(KERNELS / "v32_decode_front_scope1.py")


def _region(fp, name):
    return next(r for r in fp.regions if r.region == name)


def _best(fp, name):
    return {m.label for m in _region(fp, name).best}


def _frac(fp, name, label):
    return next(m.fraction for m in _region(fp, name).matches if m.label == label)


@pytest.fixture(scope="module")
def pr134_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pr134")
    dsref.write_golden(d, V32, dsref.config("v32-tiny", semantics="pypto-lib-pr134"), batch=16,
                       seed=0)
    return d


def test_data_fingerprint_names_pr134(pr134_dir):
    fp = fpm.of_data(str(pr134_dir))
    assert [r.region for r in fp.regions] == ["q_lora_rmsnorm", "kv_a_proj", "q_rope",
                                              "decode_cache_write", "k_idx_cache_write",
                                              "dispatch"]  # the stored outputs
    assert {"pypto-lib-pr134", "pypto-lib-head"} == _best(fp, "q_lora_rmsnorm")
    assert _frac(fp, "q_lora_rmsnorm", "pypto-lib-pr134") == 1.0
    assert 0.9 < _frac(fp, "q_lora_rmsnorm", "ds32") < 1.0
    # single variants: each explains part of it, none all
    assert 0.9 < _frac(fp, "q_lora_rmsnorm", "q_norm_input=fp32") < 1.0
    # pypto-lib-head is PR #134 in scope 1 but has its own indexer (index_input=hidden, ...):
    # the data's k_cache_idx and dispatch_buf rows tell them apart
    assert {m.label for m in fp.overall() if m.fraction == 1.0} == {"pypto-lib-pr134"}
    assert _frac(fp, "k_idx_cache_write", "pypto-lib-head") < 1.0
    text = fp.to_text()
    assert "q_lora_rmsnorm" in text and "pypto-lib-pr134 = pypto-lib-head 100.000%" in text
    # wrapped under the region; past 100 columns only a word that cannot be broken (the data
    # path, however long the machine's temporary directory)
    assert all(len(line) <= 100 or " " not in line.strip() for line in text.splitlines())


def test_kernels_fingerprint_as_the_semantics_they_were_built_for():
    fps = {}
    for sem in ("pypto-lib-pr134", "ds32"):
        cfg = dsref.config("v32-tiny", semantics=sem)
        ins = dsref.make_inputs(V32, cfg, batch=16, seed=2)
        fp = fps[sem] = fpm.of_kernels(V32, cfg, ins)
        with_kernel = [*SCOPE1, "q_idx_proj", "k_idx_proj", "k_idx_layernorm", "idx_rope",
                       "idx_hadamard", "idx_weights", "k_idx_cache_write", "index_score",
                       "index_topk", "q_nope_latent", "sparse_attn", "v_proj", "dispatch"]
        assert [r.region for r in fp.regions] == with_kernel
        assert sem in _best(fp, "q_lora_rmsnorm") and sem in _best(fp, "input_rmsnorm")
        assert fp.source == f"kernels (built for {sem})"
        # the fp32 qr of PR #134 is another dtype than ds32's bf16 qr_raw: no match at all
        other = "ds32" if sem != "ds32" else "pypto-lib-pr134"
        q = {m.label: m for m in _region(fp, "q_lora_proj").matches}
        assert q[other].fraction == 0.0 and "qr_raw" in q[other].note
    # fed PR #134's fp32 qr, ds32's q_norm differs; fed ds32's bf16 qr, PR #134's agrees
    # (the variance of a bf16 qr is the same either way): only q_lora_proj tells them apart
    assert _frac(fps["pypto-lib-pr134"], "q_lora_rmsnorm", "ds32") < 1.0
    assert _frac(fps["ds32"], "q_lora_rmsnorm", "pypto-lib-pr134") == 1.0


def test_file_fingerprint_names_the_pr134_divergence():
    """The PR #134-style file, run against the default (ds32) reference: its q_lora_rmsnorm is
    PR #134's, every region downstream matches both."""
    fp = fpm.of_file(PR134_FILE, batch=16, maps={"qr_fp32": "qr_raw"})
    assert fp.source.startswith("file ") and fp.model == f"{V32}[:decode_cache_write]"
    assert "pypto-lib-pr134" in _best(fp, "q_lora_rmsnorm")
    assert "ds32" not in _best(fp, "q_lora_rmsnorm")
    assert _frac(fp, "q_lora_rmsnorm", "ds32") < 1.0
    assert {"ds32", "pypto-lib-pr134"} <= _best(fp, "q_rope")  # a ulp upstream moves nothing
    assert "pypto-lib-pr134" in _best(fp, "q_lora_proj")  # the --map-ped qr_fp32
    ds = fpm.of_file(DS32_FILE, batch=16)
    assert "ds32" in _best(ds, "q_lora_rmsnorm") and "pypto-lib-pr134" not in _best(
        ds, "q_lora_rmsnorm")


def test_v4_official_data_is_named(tmp_path):
    cfg = dsref.config("v4-tiny", semantics="deepseek-v4-official")
    dsref.write_golden(tmp_path, V4, cfg, batch=3, seq=2, seed=1)
    labels = {"deepseek-v4-official", "ds32", "pypto-lib-pr332", "cann", "kv_nope_fp8=true",
              "q_head_norm=bf16", "rope_preround=true"}  # (all of them: ~3x the compiles)
    fp = fpm.of_data(str(tmp_path), labels=labels)
    assert _best(fp, "q_head_rms_rope") == {"deepseek-v4-official"}
    assert _best(fp, "kv_rms_rope") == {"deepseek-v4-official"}
    assert 0.5 < _frac(fp, "kv_rms_rope", "kv_nope_fp8=true") < 1.0
    assert _frac(fp, "q_head_rms_rope", "pypto-lib-pr332") < 0.9


def test_teacher_forcing_uses_the_consumed_values():
    """A region is judged on the values it consumed: ds32's q_lora_rmsnorm computed on a
    perturbed qr_raw is 100% ds32 when that qr_raw is exposed, not when it is hidden."""
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=16, seed=4)
    (normed,) = dsref.run_stage("input_rmsnorm", cfg, ins["hidden_states"], ins["input_rms_weight"])
    (qr,) = dsref.run_stage("q_lora_proj", cfg, normed, ins["wq_a"])
    bits = qr.view(np.uint16).copy()
    bits[:, ::7] += 1  # one bf16 ulp on every 7th column
    qr_bad = bits.view(qr.dtype)
    (qr_out,) = dsref.run_stage("q_lora_rmsnorm", cfg, qr_bad, ins["q_norm_weight"])
    labels = {"ds32", "pypto-lib-pr134"}
    seen = fpm.fingerprint(V32, cfg, ins, {"qr_raw": qr_bad, "qr_out": qr_out}, labels=labels)
    assert _frac(seen, "q_lora_rmsnorm", "ds32") == 1.0
    assert _frac(seen, "q_lora_proj", "ds32") < 0.9  # the perturbed qr_raw itself
    hidden = fpm.fingerprint(V32, cfg, ins, {"qr_out": qr_out}, labels=labels)
    assert _frac(hidden, "q_lora_rmsnorm", "ds32") < 0.9


def test_dtype_conversion_and_cache_rows():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=16, seed=0)
    outs = dsref.run(V32, cfg, ins)
    fp = fpm.fingerprint(V32, cfg, ins, {"kv_cache": outs["kv_cache"]}, labels={"ds32", "hf"})
    (r,) = fp.regions
    assert r.region == "decode_cache_write"
    m = {x.label: x for x in r.matches}
    assert m["ds32"].total == 16 * cfg.kv_lora  # the 16 rows this step owns, not the cache
    assert m["ds32"].fraction == 1.0 and m["hf"].fraction < 1.0


def test_groups_text_caps_long_ties():
    ms = [fpm.Match(f"v{i}", "variant", 5, 10) for i in range(9)] + [
        fpm.Match("x", "semantics", 1, 10)]
    text = fpm._groups(ms)
    assert text == "v0 = v1 = v2 = v3 = v4 = … (+4) 50.000% · x 10.000%"


def test_cli_fingerprint_data_and_model(pr134_dir, tmp_path, capsys):
    out = tmp_path / "fp.json"
    assert main(["fingerprint", "--data", str(pr134_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "q_lora_rmsnorm" in text and "overall: pypto-lib-pr134" in text
    d = json.loads(out.read_text())
    assert d["model"] == V32 and d["regions"][0]["matches"][0]["label"] == "pypto-lib-pr134"
    assert main(["fingerprint", "v32.decode_front", "--batch", "2"]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main(["fingerprint", "no/such/file.py"]) == 2
