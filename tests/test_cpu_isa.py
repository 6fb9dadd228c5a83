"""Results do not depend on the CPU: the torch backend is bitwise equal to the numpy backend on
the rounding-sensitive ops with ATen forced onto its AVX2 kernels and onto its scalar
(``default``) kernels — ``ATEN_CPU_CAPABILITY``, which only takes effect before torch is
imported, hence one subprocess per capability (docs/backends.md, "CPU independence").

Each subprocess runs :func:`check` and prints one JSON line: the capability ATen reports, the
number of elements where the torch backend differs from the numpy backend per op (all must
be 0), where the numpy backend differs from an independent float64 oracle (all 0), and where a
*planted* bug differs from it (must be > 0: the inputs and the comparison see a 1-ulp error
and a wrong tie rule): a root rounded toward zero, ``a · (1/b)`` for ``a / b``, ties away for
ties to even in the bf16 / int8 casts. It also reports (not asserted: a torch property, not
the backend's) how often torch's own fp32 ``sqrt`` / ``rsqrt`` differ: on torch 2.13 about a
third of these near-midpoint inputs, on the AVX2 and the scalar kernels alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CAST_MODES = ("rint", "round", "floor", "ceil", "trunc")


def _near_midpoint_squares(n: int, rng: np.random.Generator) -> np.ndarray:
    """fp32 ``x = fl(m²)`` for midpoints ``m`` between consecutive fp32 values: square roots as
    close to an fp32 rounding boundary as fp32 inputs allow (where inexact roots show)."""
    r = (rng.random(n) + 1.0).astype(np.float32) * np.exp2(rng.integers(-40, 40, n)).astype(
        np.float32)
    mid = (r.astype(np.float64) + np.nextafter(r, np.float32(np.inf)).astype(np.float64)) / 2
    x = (mid * mid).astype(np.float32)
    x[:6] = [0.0, 1e-45, 3e-39, 1.0, 2.0, np.inf]
    return x


def _inputs(n: int = 8192) -> dict[str, np.ndarray]:
    """Fixed-seed operands: near-midpoint squares, random magnitudes, and cast sources with
    exact ties (``k + 0.5`` and bf16 midpoints)."""
    rng = np.random.default_rng(20)
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
    b = _near_midpoint_squares(n, rng)
    b[b == 0] = 1.0
    bf16_mid = (rng.integers(1 << 14, 1 << 15, n // 4).astype(np.uint32) << 16) | 0x8000
    ties = np.concatenate([bf16_mid.view(np.float32),
                           (rng.integers(-300, 300, n // 4) + 0.5).astype(np.float32)])
    return {"a": a, "b": b, "ties": ties}


def _backends_only():
    """``lowering.backends`` without ``lowering/__init__`` (which imports the pipeline and
    jax: seconds per subprocess): the backends import nothing else from the package."""
    import types

    if "lowering" not in sys.modules:
        pkg = types.ModuleType("lowering")
        pkg.__path__ = [str(ROOT / "lowering")]
        sys.modules["lowering"] = pkg
    from lowering.backends import get_backend

    return get_backend


def check() -> dict:
    """Compare the torch and numpy backends op by op on :func:`_inputs` (run in a subprocess)."""
    import torch

    get_backend = _backends_only()

    tb, nb = get_backend("torch", device="cpu"), get_backend("numpy")
    ins = _inputs()
    a, b, ties = ins["a"], ins["b"], ins["ties"]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)

    def t_un(op: str, x: np.ndarray) -> np.ndarray:
        return tb.to_numpy(tb.unary(op, tb.from_numpy(x, "FP32")))

    def rsqrt_forms(x: np.ndarray, run) -> dict[str, np.ndarray]:
        """The kernels' ``recip(sqrt(x))`` (two roundings) and ``rsqrt`` (one rounding)."""
        return {"recip_sqrt": run("recip", run("sqrt", x)), "rsqrt": run("rsqrt", x)}

    with np.errstate(all="ignore"):
        got = {"sqrt": t_un("sqrt", b), "recip": t_un("recip", b), "exp": t_un("exp", a / 1e9),
               "div": tb.to_numpy(tb.binary("div", tb.from_numpy(a, "FP32"),
                                            tb.from_numpy(b, "FP32"), "FP32"))}
        want = {"sqrt": nb.unary("sqrt", b), "recip": nb.unary("recip", b),
                "exp": nb.unary("exp", a / 1e9), "div": nb.binary("div", a, b, "FP32")}
        got.update(rsqrt_forms(b, t_un))
        want.update(rsqrt_forms(b, nb.unary))
        for mode in CAST_MODES:
            for dst in ("BF16", "FP16", "INT8", "INT32"):
                key = f"cast_{dst}_{mode}"
                got[key] = tb.to_numpy(tb.cast(tb.from_numpy(ties, "FP32"), dst, mode))
                want[key] = nb.cast(ties, dst, mode)
        oracle = {"sqrt": np.sqrt(b64).astype(np.float32), "div": (a64 / b64).astype(np.float32),
                  "recip": (1.0 / b64).astype(np.float32),
                  "rsqrt": (1.0 / np.sqrt(b64)).astype(np.float32)}
        native = {"sqrt": torch.sqrt(torch.from_numpy(b)).numpy(),
                  "rsqrt": torch.rsqrt(torch.from_numpy(b)).numpy()}
        root = oracle["sqrt"]  # planted: the root rounded toward zero instead of to nearest
        planted = {"sqrt": np.where(root.astype(np.float64) > np.sqrt(b64),
                                    np.nextafter(root, np.float32(0)), root),
                   "div": (torch.from_numpy(a) * (1.0 / torch.from_numpy(b))).numpy(),
                   "cast_BF16_rint": want["cast_BF16_round"],  # ties away for ties to even
                   "cast_INT8_rint": want["cast_INT8_round"]}
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch_vs_numpy": {k: _n_diff(got[k], want[k]) for k in want},
        "numpy_vs_oracle": {k: _n_diff(want[k], oracle[k]) for k in oracle},
        "planted_vs_numpy": {k: _n_diff(planted[k], want[k]) for k in planted},
        "torch_native_vs_numpy": {k: _n_diff(native[k], want[k]) for k in native},
    }


def _n_diff(x: np.ndarray, y: np.ndarray) -> int:
    """Elements whose bits differ; any NaN equals any NaN (sign and payload of a NaN are not
    part of the contract: torch's AVX2 fp32 → bf16 cast gives 0xffff, its scalar one 0x7fc0)."""
    x, y = np.asarray(x), np.asarray(y)
    same = x.view(f"u{x.dtype.itemsize}") == y.view(f"u{y.dtype.itemsize}")
    if x.dtype.kind == "f" or x.dtype.name == "bfloat16":  # NaN bits are not compared
        same |= np.isnan(x.astype(np.float32)) & np.isnan(y.astype(np.float32))
    return int(np.count_nonzero(~same))


CAPABILITIES = {"avx2": "AVX2", "default": "DEFAULT"}


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    """One subprocess per ATen capability, run side by side (torch's import dominates)."""
    pytest.importorskip("torch", reason="torch is not installed")
    procs = {}
    for cap in CAPABILITIES:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=str(ROOT))
        procs[cap] = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    out = {}
    for cap, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"subprocess under {cap}: {stderr[-2000:]}"
        out[cap] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("capability", sorted(CAPABILITIES))
def test_torch_backend_bitwise_equal_to_numpy_whatever_the_cpu_kernels(results, capability):
    res, reported = results[capability], CAPABILITIES[capability]
    if res["capability"] != reported:
        pytest.skip(f"ATEN_CPU_CAPABILITY={capability} not honoured on this host "
                    f"(torch reports {res['capability']}: the CPU lacks it)")
    bad = {k: v for k, v in res["torch_vs_numpy"].items() if v}
    assert not bad, f"torch backend under {reported}: elements differing from numpy {bad}"
    bad = {k: v for k, v in res["numpy_vs_oracle"].items() if v}
    assert not bad, f"numpy backend: elements differing from float64 rounded once {bad}"
    blind = [k for k, v in res["planted_vs_numpy"].items() if not v]
    assert not blind, f"planted 1-ulp / tie-rule bugs in {blind} not detected: inputs too easy"


if __name__ == "__main__":
    print(json.dumps(check()))
