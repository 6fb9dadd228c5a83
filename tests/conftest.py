"""Shared test settings: deterministic hypothesis, the oracle importable as ``oracle``."""

import os
import sys

import numpy as np
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
# the command-line entry points keep compiled XLA programs on disk (dsref.compile_cache): not
# from the tests, in process or in the commands they start (tests of the cache set their own)
os.environ["DSREF_COMPILE_CACHE"] = "off"

settings.register_profile("dsref", derandomize=True, deadline=None, max_examples=200)
settings.load_profile("dsref")


def bits(a) -> np.ndarray:
    """The raw bytes of an array, for bitwise comparison (NaN payloads and signed zeros too)."""
    a = np.ascontiguousarray(np.asarray(a))
    return a.view(np.uint8)


def assert_bitwise(got, want, name: str = "") -> None:
    """Bit-identical (signed zeros distinguished); NaN payloads are not compared."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if got.size == 0:
        return
    diff = (bits(got).reshape(got.size, -1) != bits(want).reshape(want.size, -1)).any(axis=-1)
    if got.dtype.kind == "f" or got.dtype.name == "bfloat16":  # any NaN equals any NaN
        g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
        diff &= ~(np.isnan(g) & np.isnan(w))
    bad = np.flatnonzero(diff)
    if bad.size:
        i = np.unravel_index(bad[0], got.shape)
        raise AssertionError(
            f"{name}: {bad.size}/{got.size} elements differ; first at {tuple(map(int, i))}: "
            f"got {got[i]!r}, want {want[i]!r}"
        )


# -- the array backend of the tile emulator: the same tests on numpy, torch cpu, torch cuda --

import pytest  # noqa: E402

BACKEND_PARAMS = ("numpy", "torch-cpu", "torch-cuda")


def _open_backend(param: str):
    from lowering.backends import get_backend

    if param == "numpy":
        return get_backend("numpy")
    try:
        return get_backend("torch", device=param.split("-", 1)[1])
    except (ImportError, ValueError) as e:  # torch missing / broken, or no such device
        pytest.skip(f"backend {param} unavailable: {e}")


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """A tile-emulator backend object; single ops made outside a kernel run (``make_tile``)
    use it too. Unavailable backends skip with the reason."""
    from lowering.tile import core

    bk = _open_backend(request.param)
    with core.use_backend(bk):
        yield bk


@pytest.fixture(autouse=True)
def _module_rng_restarts(request):
    """A test's data must not depend on which tests ran before it: a test module's ``RNG``
    starts again from its ``RNG_SEED`` for every test."""
    mod = request.module
    seed = getattr(mod, "RNG_SEED", None)
    if seed is not None:
        mod.RNG = np.random.default_rng(seed)
