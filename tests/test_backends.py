"""The torch backend against the numpy backend: every region output of both models bitwise,
every cast mode, and the one-line errors for missing torch / torch_npu / devices."""

from __future__ import annotations

import builtins

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_bitwise

import dsref
from lowering import cli
from lowering.backends import DeviceUnavailable, TorchUnavailable, _torch, get_backend
from lowering.pipeline import run_region
from lowering.registry import kernel_for
from lowering.trace import trace

torch = pytest.importorskip("torch", reason="torch is not installed")
BF16 = np.dtype(ml_dtypes.bfloat16)
RUNS = [("v32.decode_front", "v32-tiny", 16, 1, False), ("v32.decode_front", "v32-tiny", 5, 1, True),
        ("v4.qkv_proj_rope", "v4-tiny", 3, 3, False)]


@pytest.fixture(scope="module")
def torch_cpu():
    return get_backend("torch", device="cpu")


@pytest.mark.parametrize("model,config,batch,seq,ties", RUNS)
def test_every_region_output_bitwise_equal_to_numpy(torch_cpu, model, config, batch, seq, ties):
    cfg = dsref.config(config)
    kw = {"ties": True} if ties else {}
    ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=3, **kw)
    regions = [r for r in trace(model, cfg, ins).regions if kernel_for(model, r.name)]
    if not regions:
        pytest.skip(f"{model}: no kernels registered yet")
    for r in regions:
        rep_np, out_np = run_region(model, cfg, r, r.inputs, backend="numpy")
        rep_t, out_t = run_region(model, cfg, r, r.inputs, backend=torch_cpu)
        assert rep_t.status == rep_np.status, r.name
        assert [f.message for f in rep_t.findings] == [f.message for f in rep_np.findings]
        for n in out_np:
            assert_bitwise(out_t[n], out_np[n], f"{r.name}.{n}")


def _specials(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        x = (rng.standard_normal(n) * np.exp2(rng.integers(-140, 130, n))).astype(np.float32)
    x[:16] = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, -1e-45, 65520.0,
              1 + 2**-8, -(1 + 2**-8), 0.5, 1.5, 2.5, -2.5]
    return x.reshape(64, -1)


@pytest.mark.parametrize("mode", ["none", "rint", "round", "floor", "ceil", "trunc"])
def test_casts_bitwise_equal_to_numpy(torch_cpu, mode):
    np_bk = get_backend("numpy")
    x32 = _specials(64 * 64, 1)
    ints = np.random.default_rng(2).integers(-(2**31), 2**31, (64, 64)).astype(np.int32)
    with np.errstate(over="ignore"):
        x16 = x32.astype(np.float16)
    cases = [(x32, "BF16"), (x32, "FP16"), (x32, "INT8"), (x32, "INT32"), (ints, "BF16"),
             (ints, "FP32"), (ints, "INT8"), (x32.astype(BF16), "INT8"), (x16, "BF16")]
    for a, dst in cases:
        src = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", BF16: "BF16",
               np.dtype(np.float16): "FP16"}[a.dtype]
        want = np_bk.cast(np_bk.from_numpy(a, src), dst, mode)
        got = torch_cpu.to_numpy(torch_cpu.cast(torch_cpu.from_numpy(a, src), dst, mode))
        assert_bitwise(got, want, f"{src}->{dst} {mode}")


def test_report_names_the_backend_and_device(torch_cpu):
    import lowering

    cfg, scope1 = dsref.config("v32-tiny"), "v32.decode_front[:decode_cache_write]"
    rep = lowering.diff(scope1, cfg, dsref.make_inputs(scope1, cfg, batch=2))
    assert rep.backend == "numpy"
    rep = lowering.diff(scope1, cfg, dsref.make_inputs(scope1, cfg, batch=2), backend=torch_cpu)
    assert rep.backend == "torch:cpu" and rep.verdict == "PASS"
    assert get_backend("torch:cpu") is torch_cpu


def test_device_strings():
    assert _torch.parse_device("cuda:1") == ("cuda", 1)
    assert _torch.parse_device("NPU") == ("npu", None)
    assert _torch.parse_device(None) == ("cpu", None)
    with pytest.raises(DeviceUnavailable, match="expected cpu, cuda"):
        _torch.parse_device("tpu")
    with pytest.raises(ValueError, match="unknown tile backend"):
        get_backend("jax")
    with pytest.raises(DeviceUnavailable, match="numpy backend runs on cpu only"):
        get_backend("numpy", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_absent_cuda_is_exit_2_with_one_line(capsys):
    with pytest.raises(DeviceUnavailable, match="no cuda device is available"):
        get_backend("torch", device="cuda")
    assert cli.main(["diff", "--backend", "torch", "--device", "cuda:0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no cuda device" in err


def test_missing_torch_npu_is_exit_2_with_one_line(capsys, monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "torch_npu":
            raise ModuleNotFoundError("No module named 'torch_npu'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert cli.main(["diff", "--backend", "torch", "--device", "npu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs torch_npu, which is not installed" in err


def test_torch_npu_autoload_without_cann_is_one_line(monkeypatch):
    """torch_npu installed without CANN breaks ``import torch`` itself (autoload)."""
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "torch":
            raise RuntimeError("Failed to load the backend extension: torch_npu. You can "
                               "disable extension auto-loading with TORCH_DEVICE_BACKEND_AUTOLOAD=0."
                               "\n  libascendcl.so: cannot open shared object file")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(TorchUnavailable) as e:
        _torch.import_torch(npu=True)
    msg = str(e.value)
    assert "\n" not in msg and "torch_npu is installed but CANN is not usable" in msg


def _root_stress(n: int, seed: int) -> np.ndarray:
    """fp32 values whose square roots lie as close to an fp32 rounding midpoint as fp32 allows
    (x = fl(m²) for midpoints m), plus random magnitudes, subnormals and special values."""
    rng = np.random.default_rng(seed)
    r = (rng.random(n) + 1.0).astype(np.float32) * np.exp2(rng.integers(-60, 60, n)).astype(np.float32)
    mid = (r.astype(np.float64) + np.nextafter(r, np.float32(np.inf)).astype(np.float64)) / 2
    x = (mid * mid).astype(np.float32)
    x[:8] = [0.0, -0.0, np.inf, 1e-45, 3e-39, 1.0, 4.0, 2.0]
    return x.reshape(64, -1)


def test_sqrt_div_recip_correctly_rounded_even_with_an_inexact_library_sqrt(torch_cpu, monkeypatch):
    """torch 2.13's CPU fp32 sqrt is 1 ulp off on ~16% of elements on an AVX2-only AMD EPYC.
    The backend rounds the float64 root and corrects it by an exact residual test, so even a
    library root off by half an fp32 ulp (simulated here) gives numpy's correctly rounded bits."""
    np_bk = get_backend("numpy")
    x = _root_stress(64 * 64, 4)
    want = np_bk.unary("sqrt", x)
    np.testing.assert_array_equal(want, np.sqrt(x.astype(np.float64)).astype(np.float32))
    for name, src in (("FP32", x), ("BF16", x.astype(BF16))):
        got = torch_cpu.to_numpy(torch_cpu.unary("sqrt", torch_cpu.from_numpy(src, name)))
        assert_bitwise(got, np_bk.unary("sqrt", src), f"sqrt {name}")
    real_sqrt = torch.sqrt

    def sloppy_sqrt(t, *a, **k):  # a library root with errors up to half an fp32 ulp
        r = real_sqrt(t, *a, **k)
        if r.dtype != torch.float64:
            return r
        wobble = torch.from_numpy(np.random.default_rng(0).choice([-1.0, 0.0, 1.0], r.shape))
        return r * (1.0 + wobble * 2.0**-25)

    monkeypatch.setattr(torch, "sqrt", sloppy_sqrt)
    got = torch_cpu.to_numpy(torch_cpu.unary("sqrt", torch_cpu.from_numpy(x, "FP32")))
    assert_bitwise(got, want, "sqrt under a sloppy library root")
    monkeypatch.undo()
    a = _specials(64 * 64, 5)
    b = _root_stress(64 * 64, 6)
    ta, tb = torch_cpu.from_numpy(a, "FP32"), torch_cpu.from_numpy(b, "FP32")
    with np.errstate(all="ignore"):
        assert_bitwise(torch_cpu.to_numpy(torch_cpu.binary("div", ta, tb, "FP32")),
                       np_bk.binary("div", a, b, "FP32"), "div")
        assert_bitwise(torch_cpu.to_numpy(torch_cpu.unary("recip", tb)),
                       np_bk.unary("recip", b), "recip")
