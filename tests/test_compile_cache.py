"""The persistent XLA compilation cache of the command-line entry points
(dsref.compile_cache): where it lives, that it is per host kind, that it can be turned off,
and that a program loaded from it gives the bits the compiled one gave."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from dsref import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

AVX512 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: fpu sse2 avx avx2 avx512f amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: fpu sse2 avx avx2 avx512f amx_tile
"""
AVX2 = AVX512.replace(" avx512f amx_tile", "").replace("Intel(R) Xeon(R) CPU @ 2.80GHz",
                                                         "AMD EPYC 7B13")


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("DSREF_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.cache_root() == tmp_path / "c"
    for off in ("off", "0", "OFF", "none"):
        monkeypatch.setenv("DSREF_COMPILE_CACHE", off)
        assert compile_cache.cache_root() is None and compile_cache.enable() is None
    monkeypatch.delenv("DSREF_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_root() == tmp_path / "xdg" / "dsref" / "xla"


def test_one_directory_per_host_kind():
    """A program compiled for AVX-512 must never be loaded on an AVX2-only CPU: the CPU's
    flags are part of the directory's name; the same CPU gives the same name."""
    a, b = compile_cache.host_key(AVX512), compile_cache.host_key(AVX2)
    assert a != b and a == compile_cache.host_key(AVX512)
    assert compile_cache.host_key(AVX512 + "processor\t: 2\nflags\t\t: other\n") == a


SCRIPT = """
import sys, numpy as np, ml_dtypes
from dsref import compile_cache
path = compile_cache.enable()
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("/cache_hits") else None)
x = np.random.default_rng(3).standard_normal((64, 96)).astype(np.float32)
w = np.random.default_rng(4).standard_normal((96, 80)).astype(ml_dtypes.bfloat16)
y = jax.jit(lambda x, w: jnp.tanh(x @ w.astype(jnp.float32)) * 3.0)(x, w)
sys.stdout.write(f"{path}\\n{len(hits)}\\n" + np.asarray(y).tobytes().hex())
"""


def test_a_cached_program_gives_the_compiled_bits(tmp_path):
    """Two fresh processes: the first compiles and stores the program, the second loads it
    (a cache hit, by JAX's own event); both print the same bits."""
    env = {**os.environ, "DSREF_COMPILE_CACHE": str(tmp_path), "PYTHONPATH": ROOT}
    runs = [subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                           text=True, check=True).stdout.split("\n") for _ in range(2)]
    (path, hits1, first), (path2, hits2, second) = runs
    assert path == path2 and path.startswith(str(tmp_path))
    assert int(hits1) == 0 and int(hits2) >= 1
    stored = [f for f in os.listdir(path) if not f.startswith(".")]
    assert stored, "nothing was stored"
    assert first == second
    y = np.frombuffer(bytes.fromhex(first), np.float32)
    assert y.shape == (64 * 80,) and np.isfinite(y).all()


def test_an_unwritable_place_means_no_cache(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DSREF_COMPILE_CACHE", str(blocker / "sub"))
    assert compile_cache.enable() is None


@pytest.mark.parametrize("cli", ["dsref", "lowering"])
def test_the_commands_turn_it_on(cli, monkeypatch, tmp_path):
    """``dsref`` and ``lowering`` enable the cache before running a command."""
    import importlib

    mod = importlib.import_module(f"{cli}.cli")
    called = []
    monkeypatch.setattr(compile_cache, "enable", lambda: called.append(1))
    args = ["spec", "rmsnorm"] if cli == "dsref" else ["plan", "v4.qkv_proj_rope", "--config",
                                                       "v4-tiny"]
    try:
        mod.main(args)
    except SystemExit:
        pass
    assert called == [1]
