"""Golden export and import: all three layouts round-trip bit-exact; files load with plain tools."""

import builtins
import json

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_bitwise

import dsref
from dsref.io import FORMATS, ExtraMissing, detect_format

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"
CASES = {V32: dict(cfg="v32-tiny", batch=3, seq=1), V4: dict(cfg="v4-tiny", batch=2, seq=3)}
BF16 = np.dtype(ml_dtypes.bfloat16)


def _write(tmp_path, model, fmt, **kw):
    c = CASES[model]
    return dsref.write_golden(tmp_path / fmt, model, c["cfg"], batch=c["batch"], seq=c["seq"],
                              seed=7, fmt=fmt, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", [V32, V4])
def test_round_trip_bit_exact(tmp_path, model, fmt):
    written = _write(tmp_path, model, fmt)
    assert detect_format(tmp_path / fmt) == fmt
    back = dsref.load_golden(tmp_path / fmt)
    m = dsref.get_model(model)
    c = CASES[model]
    cfg = dsref.config(c["cfg"])
    assert list(back.inputs) == list(m.input_specs(cfg, c["batch"], c["seq"]))
    assert list(back.outputs) == list(m.output_specs(cfg, c["batch"], c["seq"]))
    for group in ("inputs", "outputs"):
        for name, a in getattr(written, group).items():
            assert_bitwise(getattr(back, group)[name], a, f"{group}/{name}")
    assert back.meta == written.meta


@pytest.mark.parametrize("model", [V32, V4])
def test_meta_regenerates_the_golden(tmp_path, model):
    _write(tmp_path, model, "safetensors", variants={"cast": "rhaz"})
    g = dsref.load_golden(tmp_path / "safetensors")
    meta = g.meta
    assert {k: meta[k] for k in ("model", "config", "batch", "seed", "format", "dsref_version")} == {
        "model": model, "config": CASES[model]["cfg"], "batch": CASES[model]["batch"], "seed": 7,
        "format": "safetensors", "dsref_version": dsref.__version__}
    assert meta["variants"]["cast"] == "rhaz" and meta["seq"] == CASES[model]["seq"]
    cfg = dsref.config(meta["config"], **meta["variants"])
    ins = dsref.make_inputs(meta["model"], cfg, batch=meta["batch"], seq=meta["seq"], seed=meta["seed"])
    outs = dsref.run(meta["model"], cfg, ins)
    for name, a in outs.items():
        assert_bitwise(g.outputs[name], a, name)
    assert meta["tensors"]["outputs"] == {k: {"dtype": a.dtype.name, "shape": list(a.shape)}
                                          for k, a in outs.items()}


def test_npz_stores_bf16_as_uint16_with_a_sidecar(tmp_path):
    _write(tmp_path, V4, "npz")
    meta = json.loads((tmp_path / "npz" / "meta.json").read_text())
    with np.load(tmp_path / "npz" / "inputs.npz") as z:
        assert z["x"].dtype == np.uint16 and z["wq_b"].dtype == np.int8
    with np.load(tmp_path / "npz" / "outputs.npz") as z:
        assert z["q"].dtype == np.uint16 and z["qr_scale"].dtype == np.float32
    assert meta["dtypes"]["inputs"]["x"] == "bfloat16" and meta["dtypes"]["outputs"]["qr"] == "int8"


def test_safetensors_load_as_bf16_in_plain_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    g = _write(tmp_path, V4, "safetensors")
    outs = load_file(str(tmp_path / "safetensors" / "outputs.safetensors"))
    assert outs["q"].dtype == torch.bfloat16 and outs["qr"].dtype == torch.int8
    assert outs["q"].shape == g.outputs["q"].shape
    assert np.array_equal(outs["q"].view(torch.int16).numpy(), g.outputs["q"].view(np.int16))


@pytest.mark.parametrize("model", [V32, V4])
def test_pt_tensors_load_with_plain_torch(tmp_path, model):
    torch = pytest.importorskip("torch")
    g = _write(tmp_path, model, "pypto-lib")
    d = tmp_path / "pypto-lib"
    want = {"bfloat16": torch.bfloat16, "float32": torch.float32, "int8": torch.int8, "int32": torch.int32}
    assert sorted(p.stem for p in (d / "in").glob("*.pt")) == sorted(g.inputs)
    assert sorted(p.stem for p in (d / "out").glob("*.pt")) == sorted(g.outputs)
    for sub, arrays in (("in", g.inputs), ("out", g.outputs)):
        for name, a in arrays.items():
            t = torch.load(d / sub / f"{name}.pt")
            assert isinstance(t, torch.Tensor), name
            assert t.dtype == want[a.dtype.name] and tuple(t.shape) == a.shape, name
            bits = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
            assert np.array_equal(bits, a.view(np.int16) if a.dtype == BF16 else a), name
    if model == V32:  # in/out tensors: input value under in/, output value under out/
        before, after = torch.load(d / "in" / "kv_cache.pt"), torch.load(d / "out" / "kv_cache.pt")
        changed = (before.view(torch.int16) != after.view(torch.int16)).any(dim=1)
        assert int(changed.sum()) == CASES[V32]["batch"]


def _torch_import_fails(monkeypatch, exc):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise exc
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("exc", [ImportError("No module named 'torch'"),
                                 RuntimeError("torch_npu: libascendcl.so not found\nset CANN env")])
def test_pypto_lib_without_torch_is_a_clear_error(tmp_path, monkeypatch, exc):
    _torch_import_fails(monkeypatch, exc)
    with pytest.raises(ExtraMissing) as info:
        _write(tmp_path, V4, "pypto-lib")
    msg = str(info.value)
    assert "\n" not in msg and "needs torch" in msg and "dsref[torch]" in msg
    assert str(exc).splitlines()[0] in msg
    assert not (tmp_path / "pypto-lib").exists()  # failed before any work


def test_bad_format_and_bad_directory(tmp_path):
    with pytest.raises(ValueError, match="format: expected one of"):
        _write(tmp_path, V4, "hdf5")
    with pytest.raises(ValueError, match="not a golden directory"):
        dsref.load_golden(tmp_path)


def test_npz_without_sidecar_is_an_error(tmp_path):
    _write(tmp_path, V4, "npz")
    (tmp_path / "npz" / "meta.json").unlink()
    with pytest.raises(ValueError, match="needs meta.json with 'dtypes'"):
        dsref.load_golden(tmp_path / "npz")


def test_a_second_golden_never_mixes_with_the_first(tmp_path):
    """A golden written into a directory that already holds one is refused before any work;
    --force replaces it (and nothing but a golden); a directory that holds two layouts, or a
    meta.json that describes another layout, is a one-line error naming it."""
    from dsref.io import DataFileError

    d = tmp_path / "npz"
    first = _write(tmp_path, V32, "npz")
    with pytest.raises(ValueError, match=r"not empty \(inputs.npz, meta.json, outputs.npz\)"):
        _write(tmp_path, V32, "npz")
    (d / "inputs.npz").rename(tmp_path / "kept.npz")
    with pytest.raises(ValueError, match="not empty"):  # refused before the work starts
        dsref.write_golden(d, V32, "v32-tiny", batch=1, seed=0, fmt="npz")
    (tmp_path / "kept.npz").rename(d / "inputs.npz")
    second = dsref.write_golden(d, V4, "v4-tiny", batch=2, seq=3, seed=7, fmt="safetensors",
                                force=True)
    assert sorted(p.name for p in d.iterdir()) == [
        "inputs.safetensors", "meta.json", "outputs.safetensors"]
    assert dsref.load_golden(d).meta == second.meta != first.meta
    (d / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="also holds notes.txt"):
        _write(tmp_path, V32, "npz", force=True)
    assert (d / "notes.txt").read_text() == "mine" and (d / "meta.json").is_file()
    with pytest.raises(ValueError, match="a file, not a directory"):
        dsref.write_golden(d / "notes.txt", V32, "v32-tiny", batch=1, seed=0)
    with pytest.raises(ValueError, match="parent directory .* does not exist"):
        dsref.write_golden(tmp_path / "no" / "such", V32, "v32-tiny", batch=1, seed=0)

    mixed = tmp_path / "mixed"  # what an older dsref let happen: npz over safetensors
    dsref.write_golden(mixed, V32, "v32-tiny", batch=1, seed=0, fmt="npz")
    for f in ("inputs.safetensors", "outputs.safetensors", "meta.json"):
        (mixed / f).write_bytes((d / f).read_bytes())
    with pytest.raises(DataFileError, match="holds safetensors and npz goldens at once"):
        dsref.load_golden(mixed)
    for f in ("inputs.safetensors", "outputs.safetensors"):
        (mixed / f).unlink()
    with pytest.raises(DataFileError, match="describes a safetensors golden but the directory "
                                            "holds a npz one"):
        dsref.load_golden(mixed)


def test_golden_cli_refuses_a_used_directory_unless_forced(tmp_path, capsys):
    from dsref.cli import main

    args = ["golden", V32, "--config", "v32-tiny", "--batch", "1", "--seed", "0", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 0
    assert main([*args, "--format", "npz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--force" in err[0]
    assert main([*args, "--format", "npz", "--force"]) == 0
    assert detect_format(tmp_path) == "npz"
    assert capsys.readouterr().out == ""  # --quiet: nothing printed, as in `lowering`
    loud = [a for a in args if a != "--quiet"]
    assert main([*loud, "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path} (safetensors)")
