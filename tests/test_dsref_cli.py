"""The ``dsref`` command line: list, spec, golden; exit codes 0 / 2 and one-line errors."""

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dsref
from dsref.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_list(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    assert "v32.decode_front  (configs: v32, v32-tiny)" in out
    assert "v4.qkv_proj_rope  (configs: v4-flash, v4-pro, v4-tiny)" in out
    assert "input_rmsnorm → q_lora_proj → q_lora_rmsnorm" in out
    assert "qr_prequant_round  True | False" in out and "rope_layout        half | interleaved" in out
    assert "rms_norm, inv_rms, rope, rope_interleave, quant_int8" in out
    assert max(len(line) for line in out.splitlines()) <= 100  # wrapped, hanging indent
    assert "\n          kv_proj_matmul → kv_rms_rope\n" in out


def test_spec_text(capsys):
    code, out, _ = _run(capsys, "spec", "q_rope")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100  # long prose lines wrapped
    assert out.startswith("q_rope  (stage, v32.decode_front)")
    assert "q_pe_out = rope(q3[..., NOPE:], pos_b)" in out and "Shapes" not in out


def test_spec_with_config_and_jaxpr(capsys):
    code, out, _ = _run(capsys, "spec", "kv_rmsnorm", "--config", "v32", "--jaxpr")
    assert code == 0
    assert "Shapes (v32):" in out and "outputs  kv_normed       [2, 512]" in out  # KL = 512
    assert "jaxpr (v32):" in out and "reduce_precision" in out and "bf16[2,576]" in out


def test_spec_json(capsys):
    code, out, _ = _run(capsys, "spec", "qr_quant", "--config", "v4-tiny", "--json", "--jaxpr")
    assert code == 0
    d = json.loads(out)
    assert d["name"] == "qr_quant" and d["kind"] == "stage" and d["config"] == "v4-tiny"
    assert d["shapes"]["outputs"]["qr"] == {"shape": [2, 512], "dtype": "int8"}
    assert "reduce_precision" in d["jaxpr"]


def test_spec_helper_op_and_model(capsys):
    assert _run(capsys, "spec", "rms_norm")[1].startswith("rms_norm  (op)")
    code, out, _ = _run(capsys, "spec", "v4.qkv_proj_rope", "--json")
    assert code == 0 and json.loads(out)["kind"] == "model"


def test_spec_unknown_name(capsys):
    code, out, err = _run(capsys, "spec", "rmsnorm")
    assert code == 2 and out == ""
    assert err == ("dsref: error: spec: unknown name 'rmsnorm'; did you mean rms_norm, kv_rmsnorm, "
                   "input_rmsnorm, q_lora_rmsnorm, attn_norm?\n")


def test_spec_config_of_another_model(capsys):
    code, _, err = _run(capsys, "spec", "q_rope", "--config", "v4-tiny")
    assert code == 2
    assert err.startswith("dsref: error: spec q_rope: config 'v4-tiny' is a v4.qkv_proj_rope config")
    assert err.count("\n") == 1


def test_usage_errors_exit_2(capsys):
    assert "the following arguments are required: name" in _usage_error(capsys, "spec")
    assert "invalid choice" in _usage_error(capsys, "spec", "q_rope", "--config", "v5")
    assert "model: expected one of" in _usage_error(capsys, "golden", "v5.model", "--config", "v32-tiny",
                                            "--batch", "2", "--seed", "0", "--out", "x")
    assert "--seed" in _usage_error(capsys, "golden", "v32.decode_front", "--config", "v32-tiny",
                                    "--batch", "2", "--out", "x")
    assert "invalid choice" in _usage_error(capsys, "golden", "v32.decode_front", "--config",
                                            "v32-tiny", "--batch", "2", "--seed", "0", "--out", "x",
                                            "--format", "hdf5")
    assert "invalid choice" in _usage_error(capsys, "frobnicate")


def _golden(tmp_path, *extra, model="v4.qkv_proj_rope", cfg="v4-tiny"):
    return ["golden", model, "--config", cfg, "--batch", "2", "--seq", "2", "--seed", "3",
            "--out", str(tmp_path / "g"), *extra]


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pypto-lib"])
def test_golden_writes_every_format(tmp_path, capsys, fmt):
    code, out, err = _run(capsys, *_golden(tmp_path, "--format", fmt, "--variant", "rope_preround=true"))
    assert code == 0 and err == ""
    assert out.startswith(f"wrote {tmp_path / 'g'} ({fmt}): v4.qkv_proj_rope config=v4-tiny batch=2 seq=2")
    assert "10 inputs, 4 outputs" in out
    g = dsref.load_golden(tmp_path / "g")
    assert g.meta["format"] == fmt and g.meta["seed"] == 3 and g.meta["variants"]["rope_preround"] is True
    assert g.outputs["q"].shape == (4, 4, 160)


def test_golden_bad_variant_and_input(tmp_path, capsys):
    code, _, err = _run(capsys, *_golden(tmp_path, "--variant", "rope_layout=interleaved"))
    assert code == 2 and err.startswith("dsref: error: variant 'rope_layout' does not apply to v4")
    code, _, err = _run(capsys, *_golden(tmp_path, "--variant", "cast=up"))
    assert code == 2 and err.startswith("dsref: error: variant cast: expected one of ('rne', 'rhaz')")
    code, _, err = _run(capsys, *_golden(tmp_path, model="v32.decode_front", cfg="v32-tiny"))
    assert code == 2 and err.startswith("dsref: error: seq: v32.decode_front decodes one token")
    assert not (tmp_path / "g").exists()


def test_golden_pypto_lib_without_torch(tmp_path, capsys, monkeypatch):
    real = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    code, out, err = _run(capsys, *_golden(tmp_path, "--format", "pypto-lib"))
    assert code == 2 and out == ""
    assert err == ("dsref: error: the pypto-lib format needs torch (pip install 'dsref[torch]'); "
                   "importing it failed: ImportError: No module named 'torch'\n")


def test_python_m_dsref_list():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "dsref", "list"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "v32.decode_front" in r.stdout and "kv_rms_rope" in r.stdout


def test_a_stage_range_on_the_command_line(tmp_path, capsys):
    """``MODEL[A:B]`` wherever a MODEL is taken: a golden of the range (its inputs include the
    normalised token), judged back by ``lowering diff-files``; a bad range is one line."""
    from lowering.cli import main as lowering_main

    name = "v4.qkv_proj_rope[qr_proj_matmul:]"
    d = tmp_path / "g"
    assert main(["golden", name, "--config", "v4-tiny", "--batch", "3", "--seed", "2",
                 "--out", str(d), "--quiet"]) == 0
    g = dsref.load_golden(d)
    assert g.meta["model"] == name and "tok" in g.inputs and "x" not in g.inputs
    assert set(g.outputs) == {"q", "kv", "qr", "qr_scale"}
    assert lowering_main(["diff-files", "--data", str(d), "--quiet"]) == 0
    assert lowering_main(["diff", "v4.qkv_proj_rope[attn_norm]", "--config", "v4-tiny",
                          "--batch", "3", "--quiet"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["golden", "v4.qkv_proj_rope[qr_rms:attn_norm]", "--config", "v4-tiny",
              "--batch", "1", "--seed", "0", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "'qr_rms' comes after 'attn_norm'" in capsys.readouterr().err
