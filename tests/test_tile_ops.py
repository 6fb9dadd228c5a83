"""Tile ops against independent numpy / ml_dtypes / math.fsum constructions, per backend
(the ``backend`` fixture: numpy, torch cpu, torch cuda)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from lowering.tile import make_tile, pl, run_kernel

BF16 = ml_dtypes.bfloat16
RNG_SEED = 1234  # RNG restarts from it for every test (conftest.py)
RNG = np.random.default_rng(RNG_SEED)


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def t(a: np.ndarray):  # noqa: ANN201
    return make_tile(a)


@pytest.mark.parametrize("name,ref", [
    ("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("div", np.divide),
    ("maximum", np.maximum), ("minimum", np.minimum),
])
def test_binary_fp32_correctly_rounded(backend, name: str, ref) -> None:  # noqa: ANN001
    a, b = f32(16, 64), f32(16, 64)
    got = getattr(pl, name)(t(a), t(b)).numpy()
    assert got.dtype == np.float32
    # float64 then one rounding is the correctly rounded fp32 result (53 >= 2·24 + 2)
    want = ref(a.astype(np.float64), b.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_python_number_is_fp32_scalar(backend) -> None:
    a = f32(4, 128)
    got = pl.mul(t(a), 1.0 / 7168).numpy()
    s = np.float32(1.0 / 7168)
    want = (a.astype(np.float64) * float(s)).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    # and differs from the true division x / 7168 on some elements (not a power of two)
    div = (a.astype(np.float64) / 7168).astype(np.float32)
    assert (got != div).any()
    np.testing.assert_array_equal(pl.add(t(a), 1e-6).numpy(),
                                  (a.astype(np.float64) + float(np.float32(1e-6)))
                                  .astype(np.float32))


def test_unary_ops(backend) -> None:
    a = np.abs(f32(8, 64)) + np.float32(0.01)
    np.testing.assert_array_equal(pl.sqrt(t(a)).numpy(),
                                  np.sqrt(a.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(pl.recip(t(a)).numpy(),
                                  (1.0 / a.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(pl.neg(t(a)).numpy(), -a)
    np.testing.assert_array_equal(pl.abs(t(-a)).numpy(), a)
    np.testing.assert_array_equal(pl.exp(t(a)).numpy(),
                                  np.exp(a.astype(np.float64)).astype(np.float32))
    # recip(sqrt(v)) is two roundings: differs from a single-rounded rsqrt somewhere
    two = pl.recip(pl.sqrt(t(a))).numpy()
    one = pl.rsqrt(t(a)).numpy()
    assert (two != one).any()


def test_row_reductions_and_expands(backend) -> None:
    x = f32(16, 512)
    got = pl.row_sum(t(x)).numpy()
    assert got.shape == (16, 1)
    want = np.array([[math.fsum(map(float, row))] for row in x]).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pl.row_max(t(x)).numpy(), x.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(pl.row_min(t(x)).numpy(), x.min(axis=1, keepdims=True))
    r, c = f32(16, 1), f32(1, 512)
    for name, op in (("mul", np.multiply), ("sub", np.subtract), ("add", np.add),
                     ("div", np.divide)):
        got = getattr(pl, f"row_expand_{name}")(t(x), t(r)).numpy()
        np.testing.assert_array_equal(got, op(x.astype(np.float64), r.astype(np.float64))
                                      .astype(np.float32))
    np.testing.assert_array_equal(pl.col_expand_mul(t(x), t(c)).numpy(),
                                  (x.astype(np.float64) * c).astype(np.float32))
    with pytest.raises(ValueError):
        pl.row_expand_mul(t(x), t(c))


def test_full_reshape_gather(backend) -> None:
    f = pl.full([4, 8], pl.FP32, 0.5).numpy()
    assert f.shape == (4, 8) and (f == 0.5).all()
    v = f32(16, 1)
    np.testing.assert_array_equal(pl.reshape(t(v), [1, 16]).numpy(), v.reshape(1, 16))
    x = f32(4, 64)
    ev = pl.tensor.gather(t(x), mask_pattern=pl.tile.MaskPattern.P0101).numpy()
    od = pl.tensor.gather(t(x), mask_pattern=pl.tile.MaskPattern.P1010).numpy()
    np.testing.assert_array_equal(ev, x[:, 0::2])
    np.testing.assert_array_equal(od, x[:, 1::2])
    assert ev.shape == (4, 32)


def _exact_dot_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = np.float32(math.fsum(a64[i] * b64[:, j]))  # products exact in float64
    return out


def test_matmul_bf16_exact_products_single_rounding(backend) -> None:
    a = f32(16, 256).astype(BF16)
    b = f32(256, 32).astype(BF16)
    got = pl.matmul(t(a), t(b), out_dtype=pl.FP32).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _exact_dot_f32(a, b))


def test_matmul_acc_is_one_fp32_add_per_call(backend) -> None:
    a0, a1 = f32(16, 128).astype(BF16), f32(16, 128).astype(BF16)
    b0, b1 = f32(128, 32).astype(BF16), f32(128, 32).astype(BF16)
    acc = pl.matmul(t(a0), t(b0))
    acc = pl.matmul_acc(acc, t(a1), t(b1))
    p0, p1 = _exact_dot_f32(a0, b0), _exact_dot_f32(a1, b1)
    want = (p0.astype(np.float64) + p1.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(acc.numpy(), want)
    # ...which is not the single-rounded dot over K = 256 everywhere
    whole = _exact_dot_f32(np.concatenate([a0, a1], 1), np.concatenate([b0, b1], 0))
    assert (acc.numpy() != whole).any()


def test_matmul_int8_exact_int32(backend) -> None:
    a = RNG.integers(-128, 128, (16, 1536)).astype(np.int8)
    b = RNG.integers(-128, 128, (1536, 64)).astype(np.int8)
    got = pl.matmul(t(a), t(b), out_dtype=pl.INT32)
    want = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.int32))
    assert got.dtype == pl.INT32
    acc = pl.matmul_acc(got, t(a), t(b))
    np.testing.assert_array_equal(acc.numpy(), (2 * want).astype(np.int32))
    # int32 accumulators above 2^24 round RNE when cast to fp32
    big = make_tile(np.int32([[2**24 + 1, 2**24 + 3]]))
    assert pl.cast(big, pl.FP32, mode="rint").numpy().tolist() == [[2.0**24, 2.0**24 + 4]]


def test_matmul_rejects_mixed_dtypes(backend) -> None:
    with pytest.raises(TypeError):
        pl.matmul(t(f32(16, 16).astype(BF16)), t(f32(16, 16)))


def test_gm_slicing_3d_reshape_and_read(backend) -> None:
    T, H, HD = 4, 3, 32
    q = f32(T, H, HD)
    seq = np.int32([5, 9])

    def kernel(q, seq_lens, out, flat):  # noqa: ANN001
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy"):
            n = pl.read(seq_lens, [1])
            assert n == 9 and isinstance(n, int)
            for h in pl.range(H):
                out[:, h, :] = pl.mul(q[0:T, h, :], 2.0)
            q2 = pl.reshape(flat, [T, H * HD])
            for h in pl.range(H):
                blk = pl.slice(q, [T, 1, HD], [0, h, 0])
                q2[:, h * HD:(h + 1) * HD] = pl.reshape(blk, [T, HD])

    r = run_kernel(kernel, inputs={"q": q, "seq_lens": seq},
                   outputs={"out": ((T, H, HD), pl.FP32), "flat": ((T, H, HD), pl.FP32)},
                   backend=backend)
    assert r.ok, r.summary()
    np.testing.assert_array_equal(r.outputs["out"], q * 2)
    np.testing.assert_array_equal(r.outputs["flat"], q)


def test_unknown_op_raises() -> None:
    from lowering.tile import ops

    with pytest.raises(NotImplementedError, match="no emulator rule"):
        ops.apply("frobnicate", 1)
    with pytest.raises(AttributeError, match="not implemented"):
        pl.frobnicate  # noqa: B018


def test_out_of_bounds_slice_raises() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="oob"):
            y[:, :] = x[0:5, :]

    with pytest.raises(IndexError, match="out of bounds"):
        run_kernel(kernel, inputs={"x": f32(4, 8)}, outputs={"y": ((5, 8), pl.FP32)})


def test_a_run_collects_less_often_and_restores_the_collector() -> None:
    import gc

    seen = []

    def kernel(x, y):  # noqa: ANN001, ANN202
        seen.append(gc.get_threshold())
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy"):
            y[:, :] = pl.add(x[:, :], 0.0)

    before = gc.get_threshold()
    run_kernel(kernel, inputs={"x": f32(4, 8)}, outputs={"y": ((4, 8), pl.FP32)})
    assert seen[0][0] >= 100_000 and seen[0][1:] == before[1:]
    assert gc.get_threshold() == before


def test_module_rng_restarts_for_every_test() -> None:
    """Run after the tests above drew from RNG: the draw is still the seed's first."""
    assert RNG.standard_normal() == np.random.default_rng(RNG_SEED).standard_normal()


def test_scalar_arithmetic_is_fp32() -> None:
    """pl.add / sub / mul / div / maximum / minimum of two scalars (pypto's Scalar
    arithmetic, qwen3_14b decode_layer_a8w8.py: pl.mul(pl.cast(pl.read(...)), 0.0)): one
    correctly rounded FP32 op with a float operand, exact on ints."""
    got = {}

    def kernel(x, y):  # noqa: ANN001, ANN202
        s = pl.cast(pl.read(x, [0, 0]), target_type=pl.FP32)
        got["fp32"] = pl.add(1.0, 2.0 ** -24)  # the tie rounds to even: 1.0, not 1 + 2**-24
        got["third"] = pl.div(1.0, 3.0)
        got["inf*0"] = pl.mul(s, 0.0)
        got["ints"] = (pl.add(3, 4), pl.sub(3, 4), pl.mul(3, 4), pl.maximum(3, 4))
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy"):
            y[:, :] = pl.add(x[:, :], pl.mul(1.0, 0.0))

    x = np.full((2, 8), np.inf, np.float32)
    run_kernel(kernel, inputs={"x": x}, outputs={"y": ((2, 8), pl.FP32)})
    assert got["fp32"] == 1.0 and got["third"] == float(np.float32(1) / np.float32(3))
    assert math.isnan(got["inf*0"]) and got["ints"] == (7, -1, 12, 4)

    def int_div(x, y):  # noqa: ANN001, ANN202
        pl.div(3, 2)

    with pytest.raises(NotImplementedError, match="pl.div of two int scalars"):
        run_kernel(int_div, inputs={"x": x}, outputs={"y": ((2, 8), pl.FP32)})


def test_binary_ops_broadcast_tiles_as_pypto_does(backend) -> None:  # noqa: ANN001
    """[16, 256] op [16, 1] and [1, 256] (pypto's tile ops broadcast, qwen3_14b
    decode_layer_a8w8.py:592): each element one correctly rounded fp32 op."""
    x, c, r = f32(4, 8), f32(4, 1), f32(1, 8)

    def kernel(x, c, r, y, z):  # noqa: ANN001, ANN202
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="bcast"):
            y[:, :] = pl.mul(x[:, :], c[:, :])
            z[:, :] = pl.sub(r[:, :], x[:, :])

    run = run_kernel(kernel, inputs={"x": x, "c": c, "r": r}, backend=backend,
                     outputs={"y": ((4, 8), pl.FP32), "z": ((4, 8), pl.FP32)})
    np.testing.assert_array_equal(run.outputs["y"], x * c)
    np.testing.assert_array_equal(run.outputs["z"], r - x)

    def bad(x, c, r, y, z):  # noqa: ANN001, ANN202
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="bad"):
            y[:, :] = pl.mul(x[:, :], x[0:2, 0:4])

    with pytest.raises(ValueError, match=r"pl.mul: shapes \[4, 8\] and \[2, 4\] do not broadcast"):
        run_kernel(bad, inputs={"x": x, "c": c, "r": r}, backend=backend,
                   outputs={"y": ((4, 8), pl.FP32), "z": ((4, 8), pl.FP32)})
