"""`lowering run-kernel`: unmodified pypto-lib style kernel files on the emulator vs dsref."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import dsref
from lowering import pypto_compat
from lowering.cli import main
from lowering.run_kernel import run_file

KDIR = Path(__file__).parent / "pypto_kernels"
V32 = KDIR / "v32" / "v32_decode_front_scope1.py"
V4 = KDIR / "v4" / "v4_qkv_proj_rope.py"
V32_ARGS = [str(V32), "--entry", "build_decode_front_scope1_program", "--batch", "16"]
V4_ARGS = ["--entry", "qkv_proj_rope", "--batch", "3", "--seq", "3"]  # T = 9: odd


def _json(tmp_path: Path, argv: list[str]) -> tuple[int, dict]:
    out = tmp_path / "rep.json"
    rc = main(["run-kernel", *argv, "--quiet", "--json", str(out)])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def _fails(rep: dict) -> list[str]:
    return [f["message"] for r in rep["regions"] for f in r["findings"]
            if f["severity"] == "fail"]


def _load_config(sub: str):
    spec = importlib.util.spec_from_file_location(f"_cfg_{sub}", KDIR / sub / "config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_constants_match_dsref_tiny_presets():
    c, d = _load_config("v32"), dsref.config("v32-tiny")
    assert (c.HIDDEN, c.Q_LORA_RANK, c.NUM_HEADS, c.QK_NOPE_HEAD_DIM, c.QK_ROPE_HEAD_DIM,
            c.KV_LORA_RANK, c.MAX_SEQ, c.EPS) == (d.hidden, d.q_lora, d.heads, d.nope, d.rope,
                                                  d.kv_lora, d.max_seq, d.eps)
    c, d = _load_config("v4"), dsref.config("v4-tiny")
    assert (c.HIDDEN, c.Q_LORA, c.NUM_HEADS, c.HEAD_DIM, c.ROPE_DIM, c.NOPE_DIM, c.EPS) == (
        d.hidden, d.q_lora, d.heads, d.head_dim, d.rope, d.nope, d.eps)


def test_v32_program_style_passes_with_mapped_regions(tmp_path):
    rc, rep = _json(tmp_path, [*V32_ARGS, "--map", "q_proj_out=q", "--map",
                               "normed_states=normed", "--map", "qr_bf16=qr_raw"])
    assert rc == 0, _fails(rep)
    assert rep["verdict"] == "PASS" and rep["mode"] == "run-kernel"
    rows = {r["name"]: [o["name"] for o in r["outputs"]] for r in rep["regions"]}
    assert rows["q_head_proj"] == ["q_proj_out→q"]
    assert rows["input_rmsnorm"] == ["normed_states→normed"]
    assert rows["q_lora_proj"] == ["qr_bf16→qr_raw"]
    assert rows["decode_cache_write"] == ["kv_cache", "pe_cache"]
    assert rows["q_rope"] == ["q_nope_out", "q_pe_out"]
    assert rep["regions"][0]["name"] == "DecodeFrontScope1.decode_front_scope1"


def test_v4_jit_style_passes_at_odd_t(tmp_path):
    rc, rep = _json(tmp_path, [str(V4), *V4_ARGS, "--map", "qr32=qr32", "--map", "kv32=kv32"])
    assert rc == 0, _fails(rep)
    outs = {o["name"]: o for r in rep["regions"] for o in r["outputs"]}
    assert set(outs) == {"q", "kv", "qr", "qr_scale", "qr32", "kv32"}
    assert all(o["ok"] for o in outs.values())
    assert outs["q"]["max_ulp"] == 0 and outs["qr"]["max_ulp"] == 0


def test_v4_race_copy_is_caught(tmp_path):
    rc, rep = _json(tmp_path, [str(KDIR / "v4" / "v4_qkv_proj_rope_race.py"), *V4_ARGS])
    assert rc == 1
    races = [m for m in _fails(rep) if "race on tensor 'q_rot_bf16'" in m]
    assert len(races) == 1, _fails(rep)
    assert "iteration h=0 writes q_rot_bf16[0:5, 0:32]" in races[0]
    assert "iteration h=1 writes q_rot_bf16[0:5, 0:32]" in races[0]


def test_v4_odd_tail_copy_is_caught(tmp_path):
    rc, rep = _json(tmp_path, [str(KDIR / "v4" / "v4_qkv_proj_rope_odd_tail.py"), *V4_ARGS])
    assert rc == 1
    assert ("kernel 'qkv_proj_rope': output 'kv' [9, 160] has unwritten elements: rows 8..8 × "
            "cols 0..159 (160 elements)") in _fails(rep)
    assert any(m.startswith("kernel 'qkv_proj_rope': output 'q' [9, 4, 160] has unwritten "
                            "elements: rows 8..8") for m in _fails(rep))


def test_type_mismatch_is_one_error_per_parameter(capsys):
    rc = main(["run-kernel", *V32_ARGS[:-1], "4", "--quiet"])  # kernel built for BATCH = 16
    err = capsys.readouterr().err
    assert rc == 2
    assert ("kernel parameter 'hidden_states': expected shape [16, 1536], got [4, 1536] from "
            "dsref 'hidden_states'") in err
    assert "kernel parameter 'kv_cache': expected shape [1024, 160], got [256, 160]" in err
    assert len([ln for ln in err.splitlines() if "kernel parameter" in ln]) == 8


def test_seq_lens_reach_the_dsref_inputs(capsys):
    rc = main(["run-kernel", *V32_ARGS, "--seq-lens", "1,2", "--quiet"])
    assert rc == 2
    assert "--seq-lens: seq_lens: expected 16 integers (one per entry)" in capsys.readouterr().err


def test_unknown_parameter_needs_a_map(capsys):
    rc = main(["run-kernel", str(V4), *V4_ARGS, "--map", "q=no_such_tensor", "--quiet"])
    assert rc == 2
    assert "kernel parameter 'q': no dsref tensor of that name" in capsys.readouterr().err


def test_unsupported_api_names_call_and_line(capsys):
    rc = main(["run-kernel", str(KDIR / "misc" / "unsupported_api.py"), "--entry", "sort_rows",
               "--model", "v32.decode_front", "--batch", "16", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pl.bitonic_sort is not supported by the emulator" in err
    assert "unsupported_api.py:13" in err


def test_import_isolation():
    def importable() -> bool:
        try:
            importlib.import_module("pypto.language")
        except ImportError:
            return True
        return False

    if pypto_compat.real_pypto_available():
        pytest.skip("the real pypto.language is installed")
    assert importable()
    before_config = sys.modules.get("config")
    res = run_file(V4, "qkv_proj_rope", batch=3, seq=3)
    assert res.report.verdict == "PASS"
    assert importable()  # pypto.language is gone again
    assert "pypto" not in sys.modules and "pypto.language" not in sys.modules
    assert sys.modules.get("config") is before_config
    assert not [n for n in sys.modules if n.startswith("_pl_kernel_")]


def test_compat_module_inside_a_run():
    with pypto_compat.installed() as pl:
        import pypto.language as pl2

        assert pl2 is pl
        t = pl.Out[pl.Tensor[[4, pl.dynamic("T")], pl.BF16]]
        assert t.direction == "out" and t.inner.shape[0] == 4 and t.inner.dtype == pl.BF16
    assert "pypto.language" not in sys.modules


def test_data_dir_golden(tmp_path):
    dsref.write_golden(tmp_path / "g", "v4.qkv_proj_rope", "v4-tiny", batch=3, seq=3, seed=1,
                       fmt="npz")
    rc, rep = _json(tmp_path, [str(V4), "--entry", "qkv_proj_rope", "--data",
                               str(tmp_path / "g")])
    assert rc == 0, _fails(rep)
    assert (rep["config"], rep["batch"], rep["seq"], rep["seed"]) == ("v4-tiny", 3, 3, 1)


def test_outputs_are_judged_locally_under_the_chosen_tolerance(tmp_path):
    """Default: every output and mapped GM tensor judged against the reference stage on the
    kernel's own upstream values (exact where the stage is bitwise, bounded after sums in an
    unknown order); --tolerance pypto-lib: upstream's ratio presets, same figures beside."""
    argv = [str(V4), *V4_ARGS, "--map", "qr32=qr32", "--map", "kv32=kv32"]
    rc, rep = _json(tmp_path, argv)
    assert rc == 0 and rep["tolerance"] == "bound"
    outs = {o["name"]: o for r in rep["regions"] for o in r["outputs"]}
    # qr_norm is not mapped: it enters qr_quant as an interval, so qr / qr_scale are bounded
    assert {n: o["preset"] for n, o in outs.items()} == {
        "qr32": "bound", "qr": "bound", "qr_scale": "bound", "q": "bound", "kv32": "bound",
        "kv": "bound"}
    assert outs["qr"]["pinned"] > 0.5 and outs["q"]["pinned"] > 0.9
    assert all(o["accumulation"] == "fp32, any order" and o["ratio_ok"] for o in outs.values())
    assert all(o["drift"] is not None for o in outs.values())
    rc, rep = _json(tmp_path, [*argv, "--tolerance", "pypto-lib"])
    assert rc == 0 and rep["tolerance"] == "pypto-lib"
    assert {o["preset"] for r in rep["regions"] for o in r["outputs"]} == {"bf16", "fp32",
                                                                          "int8_codes", "scale"}


# -- --reference dsref on a file that makes its own inputs (pypto-lib HEAD style) -------------------

HEAD_RMS = KDIR / "head" / "rmsnorm.py"


def test_head_style_file_is_judged_against_dsref_without_flags(tmp_path):
    """rmsnorm.py at HEAD: ``x [T, D]``, a bf16 ``norm_w``, ``x_normed`` — bound to
    ``v4.qkv_proj_rope[attn_norm]`` (``x [B, S, D]``, fp32 ``norm_w``, ``tok``) with the file's
    own inputs, its config and token count read off the tensors."""
    pytest.importorskip("torch")
    rc, rep = _json(tmp_path, [str(HEAD_RMS), "--reference", "dsref"])
    assert rc == 0, rep.get("reason")
    assert rep["reference"] == "dsref"
    [case] = rep["cases"]
    assert case["dsref"] == "v4.qkv_proj_rope[attn_norm] at v4-tiny, T=8"
    assert "dsref: x: viewed [8, 1536] as [8, 1, 1536]" in case["notes"]
    assert "dsref: norm_w: bfloat16 widened to float32 (exact)" in case["notes"]
    outs = {o["name"]: o for o in case["outputs"]}
    assert outs["x_normed"]["ok"]  # the file's own comparator
    assert outs["dsref x_normed (dsref tok)"]["ok"]
    assert outs["dsref x_normed (dsref tok)"]["comparator"] == "dsref attn_norm"
    # Σx² in three 512-wide fp32 chunks: at most 1 bf16 ulp from dsref's exactly rounded sum
    assert outs["dsref x_normed (dsref tok)"]["metrics"]["max_ulp"] <= 1


def test_dsref_catches_what_the_files_ratio_comparator_lets_through(tmp_path):
    """HF's two-rounding RMSNorm is 1 bf16 ulp off on a quarter of the elements: inside the
    file's ratio_allclose, outside dsref's bound."""
    pytest.importorskip("torch")
    rc, rep = _json(tmp_path, [str(HEAD_RMS), "--reference", "dsref", "--env", "RMS_BUG=hf"])
    assert rc == 1
    outs = {o["name"]: o for o in rep["cases"][0]["outputs"]}
    assert outs["x_normed"]["ok"]
    bad = outs["dsref x_normed (dsref tok)"]
    assert not bad["ok"] and "outside the bound" in bad["detail"]
    assert "dsref x_normed" in rep["reason"]
    # and which semantics the bits follow: HF's, every element
    [hint] = [n for n in rep["cases"][0]["notes"] if "under each semantics" in n]
    assert hint.startswith("bit-identical share (x_normed) under each semantics: hf 100.00 %; ")


def test_a_file_no_call_of_which_dsref_models_cannot_run_against_it(tmp_path, capsys):
    pytest.importorskip("torch")
    path = KDIR / "scopes" / "v4_style.py"
    rc = main(["run-kernel", str(path), "--reference", "dsref"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--reference dsref: no kernel call of the file maps onto a dsref model" in err
    assert "no dsref model or stage range takes these tensors (x, w, y)" in err


def test_binding_finds_the_stage_range_config_and_token_count():
    """A HEAD qkv_proj_rope call (the normalised token as ``x``, an extra tensor dsref lacks)
    binds to ``v4.qkv_proj_rope[qr_proj_matmul:]`` at the config its dims say; a misfit
    names the tensor."""
    import ml_dtypes
    import numpy as np

    from lowering.binding import KernelTensor, NoBinding, bind

    cfg = dsref.config("v4-flash")
    name = dsref.range_name("v4.qkv_proj_rope", "qr_proj_matmul")
    m = dsref.get_model(name)
    ins = {n: np.zeros(s.shape, s.dtype) for n, s in m.input_specs(cfg, 2, 1).items()}
    outs = {n: np.zeros(s.shape, s.dtype) for n, s in m.output_specs(cfg, 2, 1).items()}
    tensors = ([KernelTensor("x" if n == "tok" else n, "in", v) for n, v in ins.items()]
               + [KernelTensor(n, "out", result=v) for n, v in outs.items()]
               + [KernelTensor("cos_il", "out", result=np.zeros((2, 64), np.float32))])
    b = bind(tensors)
    assert (b.model, b.cfg.name, b.batch, b.seq) == (name, "v4-flash", 2, 1)
    assert b.kernel_of["tok"] == "x" and b.not_modelled == ["cos_il"]
    assert set(b.observed) == {"q", "kv", "qr", "qr_scale"}
    # an output of another dtype is named, not judged; an input that does not fit: no binding
    tensors = [KernelTensor("qr_scale", "out", result=np.zeros((2, 1), np.float64))
               if t.name == "qr_scale" else t for t in tensors]
    b = bind(tensors)
    assert b.unjudged == {"qr_scale": "dsref qr_scale: dtype float64, dsref's is float32"}
    assert set(b.observed) == {"q", "kv", "qr"}
    tensors = [KernelTensor("x", "in", np.zeros((2, 4000), ml_dtypes.bfloat16))
               if t.name == "x" else t for t in tensors]
    with pytest.raises(NoBinding, match=r"fit no config of v4.qkv_proj_rope \(v4-flash: x: "
                                        r"shape \[2, 4000\], dsref's is \[2, 4096\]\)"):
        bind(tensors)
