"""What a benchmark ran on: the CPU's model and vector ISA, and its float64 GEMM rate.

Results differ by CPU kind (an Intel host with AMX against an AMD EPYC with AVX2 only: XLA's
and BLAS's kernels, and so every ratio, move with the ISA), so every record names it."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

#: /proc/cpuinfo flags that change which GEMM / vector kernels run, in the order shown
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The GEMM-relevant ISA extensions this CPU reports (of :data:`ISA_FLAGS`)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in ISA_FLAGS if f in flags]


def cpu_kind() -> str:
    """One phrase for tables: ``"AMD EPYC 7B13 (avx2)"``, ``"Intel Xeon ... (avx2 avx512f amx)"``."""
    isa = [f for f in cpu_isa() if f != "avx512_bf16"]
    isa = [f for f in isa if not f.startswith("amx")] + (["amx"] if any(
        f.startswith("amx") for f in isa) else [])
    return f"{cpu_model()} ({' '.join(isa) or 'no avx2'})"


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "isa": cpu_isa(), "cores": len(os.sched_getaffinity(0)),
            "numpy": np.__version__}


def f64_gemm_gflops(n: int = 1024, repeat: int = 5) -> float:
    """The best float64 GEMM rate numpy's BLAS reaches on this machine (``n × n`` operands,
    ``2n³`` flops per product), in GFLOP/s: what bounds an exact float64 dot."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    a @ b  # warm the BLAS threads
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
