"""``lowering diff-files``: stored outputs (dsref safetensors / npz, pypto-lib .pt) against
dsref on the stored inputs; name and shape checks first; PR #332's V4 layout accepted."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import dsref
from dsref import io as dio
from lowering import cli
from lowering.files import DataError, diff_files

BF16 = np.dtype(ml_dtypes.bfloat16)
TINY = {"v32.decode_front": ("v32-tiny", 4, 1), "v4.qkv_proj_rope": ("v4-tiny", 2, 3)}


def _fmts():
    out = ["safetensors", "npz"]
    try:
        dio.import_torch()
        out.append("pypto-lib")
    except ImportError:
        pass
    return out


def _golden(tmp_path, model, fmt):
    config, batch, seq = TINY[model]
    d = tmp_path / f"{model}-{fmt}"
    dsref.write_golden(d, model, config, batch=batch, seq=seq, seed=1, fmt=fmt)
    return d


def _rewrite_output(d, fmt, name, arr):
    """Replace one stored output in place, in the directory's own format."""
    if fmt == "safetensors":
        from safetensors.numpy import load_file, save_file

        outs = load_file(str(d / "outputs.safetensors"))
        outs[name] = arr
        save_file(outs, str(d / "outputs.safetensors"))
    elif fmt == "npz":
        with np.load(d / "outputs.npz") as z:
            outs = {k: z[k] for k in z.files}
        outs[name] = arr.view(np.uint16) if arr.dtype == BF16 else arr
        np.savez(d / "outputs.npz", **outs)
    else:
        torch = dio.import_torch()
        torch.save(dio.to_torch(torch, arr), d / "out" / f"{name}.pt")


@pytest.mark.parametrize("fmt", _fmts())
@pytest.mark.parametrize("model", sorted(TINY))
def test_own_golden_passes_and_a_perturbed_output_fails(tmp_path, model, fmt):
    d = _golden(tmp_path, model, fmt)
    rep = diff_files(d)
    assert rep.verdict == "PASS" and rep.model == model and rep.config == TINY[model][0]
    assert all(r.outputs[0].differ_ratio == 0 for r in rep.regions)
    name = "q_nope_out" if model.startswith("v32") else "q"
    want = dsref.load_golden(d).outputs[name]
    bad = want.astype(np.float32).ravel()
    bad[:: max(1, bad.size // 50)] *= 3.0  # ~2% of elements far off
    _rewrite_output(d, fmt, name, bad.astype(BF16).reshape(want.shape))
    js = tmp_path / "r.json"
    assert cli.main(["diff-files", model, "--data", str(d), "--json", str(js), "--quiet"]) == 1
    (r,) = json.loads(js.read_text())
    assert r["verdict"] == "FAIL" and r["first_fail"] == name and r["mode"] == "files"


def test_pr332_pypto_lib_v4_layout_is_accepted(tmp_path):
    """wq_b_scale stored [H·HD/128, 128], select matrices passed, no meta.json."""
    torch = pytest.importorskip("torch")
    d = _golden(tmp_path, "v4.qkv_proj_rope", "pypto-lib")
    (d / "meta.json").unlink()
    cfg = dsref.config("v4-tiny")
    hhd = cfg.heads * cfg.head_dim
    scale = torch.load(d / "in" / "wq_b_scale.pt")
    torch.save(scale.reshape(hhd // 128, 128), d / "in" / "wq_b_scale.pt")
    sel = torch.zeros(cfg.rope, cfg.rope // 2, dtype=torch.bfloat16)
    torch.save(sel, d / "in" / "even_select_t.pt")
    torch.save(sel, d / "in" / "odd_select_t.pt")
    rep = diff_files(d, "v4.qkv_proj_rope")
    assert rep.verdict == "PASS" and rep.config == "v4-tiny" and (rep.batch, rep.seq) == (2, 3)
    assert any("even_select_t" in n and "ignored" in n for n in rep.notes)
    assert any("wq_b_scale" in n for n in rep.notes)
    assert cli.main(["diff-files", "v4.qkv_proj_rope", "--data", str(d), "--quiet"]) == 0


def test_names_and_shapes_are_checked_first_one_line_per_tensor(tmp_path, capsys):
    d = _golden(tmp_path, "v32.decode_front", "safetensors")
    from safetensors.numpy import load_file, save_file

    ins = load_file(str(d / "inputs.safetensors"))
    ins["wq_a"] = ins["wq_a"][:, :-16].copy()
    ins["stray"] = np.zeros(3, np.float32)
    save_file(ins, str(d / "inputs.safetensors"))
    outs = load_file(str(d / "outputs.safetensors"))
    del outs["kv_a_out"]
    save_file(outs, str(d / "outputs.safetensors"))
    with pytest.raises(DataError) as e:
        diff_files(d)
    msg = str(e.value)
    assert "inputs wq_a: expected bfloat16[" in msg and "inputs stray: unknown input" in msg
    assert "outputs kv_a_out: missing" in msg and msg.count("\n") == 3
    assert cli.main(["diff-files", "--data", str(d), "--quiet"]) == 2
    assert "wq_a" in capsys.readouterr().err


def test_config_inferred_without_meta_and_wrong_config_rejected(tmp_path):
    d = _golden(tmp_path, "v32.decode_front", "npz")
    assert diff_files(d, config="v32-tiny").verdict == "PASS"
    with pytest.raises(DataError, match="do not fit v32.decode_front at config v32 "):
        diff_files(d, config="v32")
    with pytest.raises(DataError, match="not a config of"):
        diff_files(d, config="v4-tiny")


def test_a_kernel_files_own_in_out_snapshot_is_bound_without_a_model(tmp_path):
    """``in/`` + ``out/`` as a pypto-lib HEAD rmsnorm.py golden writes them (``x [T, D]``, a
    bf16 ``norm_w``, ``x_normed``; no meta.json): bound to ``v4.qkv_proj_rope[attn_norm]``,
    judged per output; an HF two-rounding ``x_normed`` fails; a tensor dsref lacks is named."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 1536, generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(1536, generator=g)).to(torch.bfloat16)
    xf = x.float()
    inv = 1 / torch.sqrt(xf.square().sum(-1, keepdim=True) / 1536 + 1e-6)
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    torch.save(x, tmp_path / "in" / "x.pt")
    torch.save(w, tmp_path / "in" / "norm_w.pt")
    torch.save(torch.zeros(3), tmp_path / "out" / "stats.pt")
    torch.save((xf * inv * w.float()).to(torch.bfloat16), tmp_path / "out" / "x_normed.pt")
    rep = diff_files(tmp_path)
    assert rep.verdict == "PASS", [r.outputs[0].message for r in rep.regions]
    assert (rep.model, rep.config, rep.batch, rep.seq) == (
        "v4.qkv_proj_rope[attn_norm]", "v4-tiny", 8, 1)
    assert [r.name for r in rep.regions] == ["x_normed (dsref tok)"]
    assert "not modelled by dsref (not judged): stats" in rep.notes
    assert "norm_w: bfloat16 widened to float32 (exact)" in rep.notes
    # named, the model's own layout does not fit: bound within it the same way
    assert diff_files(tmp_path, "v4.qkv_proj_rope").model == "v4.qkv_proj_rope[attn_norm]"
    hf = ((xf * inv).to(torch.bfloat16).float() * w.float()).to(torch.bfloat16)
    torch.save(hf, tmp_path / "out" / "x_normed.pt")
    assert diff_files(tmp_path).verdict == "FAIL"
    assert cli.main(["diff-files", "--data", str(tmp_path), "--quiet"]) == 1
