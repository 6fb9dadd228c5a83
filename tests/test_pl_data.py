"""The 'data' group of the emulated pypto.language (lowering.tile.ops_data): valid shapes and
padding, memory spaces, element access and views. Each kernel is a small ``pl`` kernel run
through ``run_kernel``; answers come from numpy written here."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from lowering.tile import pl, run_kernel
from lowering.tile.findings import OutOfBounds

BF16 = ml_dtypes.bfloat16
RNG_SEED = 11  # RNG restarts from it for every test (conftest.py)
RNG = np.random.default_rng(RNG_SEED)
CG = pl.Level.CORE_GROUP


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f32_sum(a: np.ndarray, axis: int) -> np.ndarray:
    """Exactly rounded fp32 sums (math.fsum) along ``axis`` (keepdims)."""
    moved = np.moveaxis(a.astype(np.float64), axis, -1)
    s = np.array([math.fsum(r) for r in moved.reshape(-1, moved.shape[-1])])
    return np.expand_dims(s.reshape(moved.shape[:-1]).astype(np.float32), axis)


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


def checks(run, check: str):  # noqa: ANN001, ANN201
    return [f for f in run.findings if f.check == check]


# -- loads with valid shapes ---------------------------------------------------------------


@pytest.mark.parametrize("form", ["slice", "load", "tile.load"])
def test_window_overhangs_tensor_valid_box_read(backend, form: str) -> None:  # noqa: ANN001
    """A [8, 32] window over a [6, 32] tensor with valid_shape [6, 32] is legal (only offset +
    valid must fit); the store moves the 6 valid rows."""
    x = f32(6, 32)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            if form == "slice":
                t = pl.slice(x, [8, 32], [0, 0], valid_shape=[6, 32])
            elif form == "load":
                t = pl.load(x, [0, 0], [8, 32], valid_shape=[6, 32])
            else:
                t = pl.tile.load(x, [0, 0], [8, 32], valid_shape=[6, 32])
            pl.store(pl.mul(t, 2.0), [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((6, 32), pl.FP32)}, backend=backend)
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(2))


def test_load_valid_read_beyond_tensor_is_out_of_bounds() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            y[:, :] = pl.slice(x, [8, 32], [0, 0], valid_shape=[7, 32])

    with pytest.raises(OutOfBounds, match="0:7"):
        run_kernel(kernel, inputs={"x": f32(6, 32)}, outputs={"y": ((6, 32), pl.FP32)})


def test_load_clamp_cuts_valid_at_tensor_edge() -> None:
    x = f32(6, 32)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.load(x, [4, 0], [4, 32], clamp=True)  # rows 4, 5 exist
            pl.store(t, [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"][:2], x[4:6])
    cov = checks(r, "coverage")  # the store moved 2 rows only: rows 2..3 of y never written
    assert len(cov) == 1 and "rows 2..3" in cov[0].message


def test_store_moves_valid_box_only_coverage_reports_the_rest() -> None:
    """Planted bug: the kernel expects the store of a 2-valid-row tile to fill 4 rows."""
    x = f32(4, 16)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [4, 16], [0, 0], valid_shape=[2, 16])
            pl.store(pl.exp(t), [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 16), pl.FP32)})
    cov = checks(r, "coverage")
    assert not r.ok and len(cov) == 1 and "rows 2..3" in cov[0].message, r.summary()
    np.testing.assert_array_equal(r.outputs["y"][:2],
                                  np.exp(x[:2].astype(np.float64)).astype(np.float32))


# -- padding, fillpad, set_validshape -------------------------------------------------------


def test_padding_read_as_data_is_poison_and_reported() -> None:
    """Planted bug: widening the valid shape over padding that was never loaded. The padding is
    NaN (a wrong answer, never a silent zero) and the store of it is a coverage warning."""
    x = f32(6, 32)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [8, 32], [0, 0], valid_shape=[6, 32])
            t = pl.set_validshape(t, 8, 32)
            pl.store(pl.row_sum(t), [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 1), pl.FP32)})
    got = r.outputs["y"]
    np.testing.assert_array_equal(got[:6], f32_sum(x, 1))
    assert np.isnan(got[6:]).all()
    w = checks(r, "coverage")
    assert len(w) == 1 and w[0].severity == "warning" and "2 NaN" in w[0].message, r.summary()


@pytest.mark.parametrize("pad,op,want", [
    ("min", "col_max", lambda v: v.max(axis=0, keepdims=True)),
    ("zero", "col_sum", lambda v: f32_sum(v, 0)),
    ("max", "col_min", lambda v: v.min(axis=0, keepdims=True)),
])
def test_fillpad_then_full_reduction(backend, pad: str, op: str, want) -> None:  # noqa: ANN001
    """fillpad makes the tile fully valid with ±inf / 0 in the padding: the full-tile column
    reduction then equals the reduction of the valid rows."""
    x = f32(5, 16)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [8, 16], [0, 0], valid_shape=[5, 16])
            t = pl.fillpad(t, pad_value=getattr(pl.PadValue, pad))
            pl.store(getattr(pl, op)(t), [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((1, 16), pl.FP32)}, backend=backend)
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], want(x))


def test_fillpad_values_and_literal_spellings() -> None:
    x = np.arange(12, dtype=np.int32).reshape(3, 4)

    def kernel(x, lo, hi, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [4, 4], [0, 0], valid_shape=[3, 2])
            lo[:, :] = pl.fillpad(t, pad_value=-math.inf)
            hi[:, :] = pl.fillpad(t, pad_value=pl.PadValue.max)
            z[:, :] = pl.fillpad(t)

    r = run_kernel(kernel, inputs={"x": x}, outputs={n: ((4, 4), pl.INT32)
                                                     for n in ("lo", "hi", "z")})
    for name, fill in (("lo", np.iinfo(np.int32).min), ("hi", np.iinfo(np.int32).max),
                       ("z", 0)):
        want = np.full((4, 4), fill, np.int32)
        want[:3, :2] = x[:, :2]
        np.testing.assert_array_equal(r.outputs[name], want)
    with pytest.raises(ValueError, match="pad_value"):
        run_kernel(lambda x, lo, hi, z: pl.fillpad(pl.slice(x, [3, 4], [0, 0]), pad_value=3.0),
                   inputs={"x": x}, outputs={n: ((4, 4), pl.INT32) for n in ("lo", "hi", "z")})


def test_row_reduction_folds_valid_columns_only(backend) -> None:  # noqa: ANN001
    x = f32(8, 32)

    def kernel(x, s, m):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [8, 32], [0, 0], valid_shape=[8, 20])
            s[:, :] = pl.row_sum(t)
            m[:, :] = pl.row_max(t)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"s": ((8, 1), pl.FP32),
                                                     "m": ((8, 1), pl.FP32)}, backend=backend)
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["s"], f32_sum(x[:, :20], 1))
    np.testing.assert_array_equal(r.outputs["m"], x[:, :20].max(axis=1, keepdims=True))


def test_set_validshape_narrows_store_and_widens_back() -> None:
    x = f32(4, 32)

    def kernel(x, a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = x[:, :]
            n = pl.set_validshape(t, 2, 32)
            pl.store(n, [0, 0], a)  # 2 rows
            pl.store(pl.tensor.set_validshape(pl.add(n, 1.0), 2, 16), [0, 0], b)
            pl.store(pl.tile.set_validshape(n, 4, 32), [0, 0], c)  # the data was never lost

    r = run_kernel(kernel, inputs={"x": x}, outputs={"a": ((2, 32), pl.FP32),
                                                     "b": ((2, 16), pl.FP32),
                                                     "c": ((4, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["a"], x[:2])
    np.testing.assert_array_equal(r.outputs["b"], x[:2, :16] + np.float32(1))
    np.testing.assert_array_equal(r.outputs["c"], x)

    def too_wide(x, a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            pl.set_validshape(x[:, :], 5, 32)

    with pytest.raises(OutOfBounds):
        run_kernel(too_wide, inputs={"x": x}, outputs={"a": ((2, 32), pl.FP32),
                                                       "b": ((2, 16), pl.FP32),
                                                       "c": ((4, 32), pl.FP32)})


def test_subscript_store_window_may_pass_the_end_when_the_valid_box_fits() -> None:
    """``dst[qt:qt + 8, :] = tile`` is pypto's ``assemble(dst, tile, [qt, 0])``: the window's
    stop is not a bound, the moved box is (pypto-lib's V4 ``decode_o_proj.py`` pads the last
    2 rows of 512 this way). A fully valid tile past the end is out of bounds."""
    x = f32(8, 32)

    def kernel(x, y, *, rows: int):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.set_validshape(x[:, :], rows, 32)
            y[6:14, :] = t  # stop 14 > 8

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 32), pl.FP32)},
                   kwargs={"rows": 2})
    np.testing.assert_array_equal(r.outputs["y"][6:], x[:2])
    assert np.isnan(r.outputs["y"][:6]).all()
    with pytest.raises(OutOfBounds, match=r"y\[6:9, 0:32\]"):
        run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 32), pl.FP32)},
                   kwargs={"rows": 3})
    with pytest.raises(OutOfBounds, match=r"y\[6:14, 0:32\]"):
        run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 32), pl.FP32)},
                   kwargs={"rows": 8})


def test_slice_padding_contributes_poison_to_a_wider_operand() -> None:
    """An elementwise op computes over its first operand's valid region; a second operand with
    a smaller valid region contributes padding (NaN), as the hardware reads stale data."""
    x = f32(4, 8)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            full = x[:, :]
            part = pl.slice(x, [4, 8], [0, 0], valid_shape=[4, 5])
            y[:, :] = pl.add(full, part)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 8), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"][:, :5], x[:, :5] * np.float32(2))
    assert np.isnan(r.outputs["y"][:, 5:]).all()


# -- matmul with valid shapes ---------------------------------------------------------------


def test_matmul_contracts_valid_k_and_keeps_valid_mn(backend) -> None:  # noqa: ANN001
    a, b = f32(10, 20), f32(20, 16)

    def kernel(a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            ta = pl.load(a, [0, 0], [16, 32], valid_shape=[10, 20])
            tb = pl.load(b, [0, 0], [32, 16], valid_shape=[20, 16])
            pl.store(pl.matmul(ta, tb), [0, 0], c)

    r = run_kernel(kernel, inputs={"a": a, "b": b}, outputs={"c": ((10, 16), pl.FP32)},
                   backend=backend)
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["c"], mm(a, b))


def test_matmul_acc_leaves_accumulator_outside_the_product_box() -> None:
    a0, b0 = f32(16, 16), f32(16, 16)
    a1 = f32(10, 16)

    def kernel(a0, b0, a1, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            acc = pl.matmul(a0[:, :], b0[:, :])
            part = pl.load(a1, [0, 0], [16, 16], valid_shape=[10, 16])
            acc = pl.matmul_acc(acc, part, b0[:, :])
            pl.store(acc, [0, 0], c)

    r = run_kernel(kernel, inputs={"a0": a0, "b0": b0, "a1": a1},
                   outputs={"c": ((16, 16), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    want = mm(a0, b0)
    want[:10] = (want[:10].astype(np.float64) + mm(a1, b0).astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(r.outputs["c"], want)


def test_matmul_rhs_valid_k_must_cover_lhs() -> None:
    def kernel(a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            ta = a[:, :]
            tb = pl.load(b, [0, 0], [16, 16], valid_shape=[8, 16])
            c[:, :] = pl.matmul(ta, tb)

    with pytest.raises(ValueError, match="valid K"):
        run_kernel(kernel, inputs={"a": f32(16, 16), "b": f32(16, 16)},
                   outputs={"c": ((16, 16), pl.FP32)})


# -- views ------------------------------------------------------------------------------------


def test_reshape_maps_valid_box() -> None:
    """A [8, 1] column with 2 valid rows reshaped to [1, 8] has 2 valid columns (the flat
    prefix); a region with no box in the new shape is rejected."""
    x = f32(8, 4)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [8, 4], [0, 0], valid_shape=[2, 4])
            r = pl.reshape(pl.row_max(t), [1, 8])
            pl.store(r, [0, 0], y)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((1, 2), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x[:2].max(axis=1)[None, :])

    def bad(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            pl.reshape(pl.slice(x, [8, 4], [0, 0], valid_shape=[8, 3]), [4, 8])

    with pytest.raises(ValueError, match="no box"):
        run_kernel(bad, inputs={"x": x}, outputs={"y": ((1, 2), pl.FP32)})


def test_tile_slice_and_assemble_valid_regions() -> None:
    x = f32(8, 16)

    def kernel(x, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [8, 16], [0, 0], valid_shape=[6, 16])
            s = pl.tile.slice(t, [4, 16], [4, 0])  # rows 4..7: 2 valid
            pl.store(s, [0, 0], y)  # moves 2 rows
            acc = pl.create_tile([8, 16], dtype=pl.FP32)
            acc = pl.set_validshape(acc, 0, 16)
            acc = pl.tile.assemble(acc, x[0:4, :], [0, 0])  # valid grows to 4 rows
            acc = pl.assemble(acc, x[4:8, :], [4, 0])  # and to 8
            pl.store(acc, [0, 0], z)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((2, 16), pl.FP32),
                                                     "z": ((8, 16), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x[4:6])
    np.testing.assert_array_equal(r.outputs["z"], x)


def test_transpose_and_transpose_view() -> None:
    q, k = f32(16, 32), f32(16, 32)

    def kernel(q, k, s, t, p):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            kt = pl.load(k, [0, 0], [16, 32], target_memory=pl.MemorySpace.Mat)
            pl.store(pl.matmul(q[:, :], pl.tile.transpose_view(kt)), [0, 0], s)
            pl.store(pl.transpose(q[:, :], axis1=0, axis2=1), [0, 0], t)
            # a partially valid tile transposed: the result is declared fully valid, so its
            # padding (poison) becomes data
            part = pl.slice(q, [16, 32], [0, 0], valid_shape=[16, 30])
            pl.store(pl.transpose(part, 0, 1), [0, 0], p)

    r = run_kernel(kernel, inputs={"q": q, "k": k},
                   outputs={"s": ((16, 16), pl.FP32), "t": ((32, 16), pl.FP32),
                            "p": ((32, 16), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["s"], mm(q, k.T))
    np.testing.assert_array_equal(r.outputs["t"], q.T)
    np.testing.assert_array_equal(r.outputs["p"][:30], q.T[:30])
    assert np.isnan(r.outputs["p"][30:]).all()
    assert len(checks(r, "coverage")) == 1


def test_concat_packs_valid_columns() -> None:
    a, b = f32(4, 8), f32(4, 8)

    def kernel(a, b, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            pl.store(pl.concat(a[:, :], b[:, :]), [0, 0], y)
            pa = pl.slice(a, [4, 8], [0, 0], valid_shape=[4, 5])
            pl.store(pl.concat(pa, b[:, :]), [0, 0], z)

    r = run_kernel(kernel, inputs={"a": a, "b": b},
                   outputs={"y": ((4, 16), pl.FP32), "z": ((4, 16), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"], np.concatenate([a, b], axis=1))
    np.testing.assert_array_equal(r.outputs["z"][:, :13], np.concatenate([a[:, :5], b], axis=1))
    assert np.isnan(r.outputs["z"][:, 13:]).all()


def test_row_and_col_expand_on_4d_tiles(backend) -> None:  # noqa: ANN001
    x, r, g = f32(1, 1, 16, 32), f32(16, 1), f32(1, 1, 1, 32)

    def kernel(x, r, g, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.col_expand_mul(pl.row_expand_mul(x[:, :, :, :], r[:, :]), g[:, :, :, :])
            y[:, :, :, :] = t

    res = run_kernel(kernel, inputs={"x": x, "r": r, "g": g},
                     outputs={"y": ((1, 1, 16, 32), pl.FP32)}, backend=backend)
    assert res.ok, res.summary()
    np.testing.assert_array_equal(res.outputs["y"], (x * r) * g)

    def bad(x, r, g, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            pl.row_expand_mul(pl.reshape(x[:, :, :, :], [2, 8, 32]), r[0:8, :])

    with pytest.raises(ValueError, match="leading dims"):
        run_kernel(bad, inputs={"x": x, "r": r, "g": g}, outputs={"y": ((1, 1, 16, 32), pl.FP32)})


# -- element access, gather_row, scatter --------------------------------------------------------


def test_read_write_dim() -> None:
    idx = np.array([[3, 1]], np.int32)
    x = f32(4, 8)

    def kernel(idx, x, y, flags):  # noqa: ANN001
        row = pl.tensor.read(idx, [0, 0])
        col = pl.read(idx, [0, 1])
        assert pl.tensor.dim(x, -1) == 8 and pl.tensor.dim(x, 0) == 4
        pl.tensor.write(flags, [0, 0], 7)
        pl.write(flags, [0, 1], row + col)
        with pl.at(level=CG, name_hint="k"):
            t = x[:, :]
            pl.tile.write(t, [row, col], 100.0)
            pl.write(t, [0, 0], pl.read(t, [row, col]) + 1.0)
            y[:, :] = t

    r = run_kernel(kernel, inputs={"idx": idx, "x": x},
                   outputs={"y": ((4, 8), pl.FP32), "flags": ((1, 2), pl.INT32)})
    assert r.ok and not r.findings, r.summary()
    want = x.copy()
    want[3, 1] = 100
    want[0, 0] = 101
    np.testing.assert_array_equal(r.outputs["y"], want)
    np.testing.assert_array_equal(r.outputs["flags"], [[7, 4]])


def test_read_of_tile_padding_is_reported() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [4, 8], [0, 0], valid_shape=[2, 8])
            v = pl.read(t, [3, 0])
            y[:, :] = pl.full([1, 8], dtype=pl.FP32, value=0.0) if v == v else x[0:1, :]

    r = run_kernel(kernel, inputs={"x": f32(4, 8)}, outputs={"y": ((1, 8), pl.FP32)})
    w = checks(r, "coverage")
    assert len(w) == 1 and "reads padding" in w[0].message


def test_gather_row_with_valid_shape_and_transpose() -> None:
    pool = f32(32, 16)

    def kernel(pool, y, yt):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            acc = pl.create_l1([8, 16], pl.FP32)
            acc = pl.gather_row(acc, pool, [0, 0], [20, 0], [8, 16], valid_shape=[3, 16])
            acc = pl.gather_row(acc, pool, [3, 0], [5, 0], [8, 16], valid_shape=[5, 16])
            pl.store(pl.move(acc, target_memory=pl.MemorySpace.Vec), [0, 0], y)
            t = pl.create_tile([16, 4], dtype=pl.FP32, target_memory=pl.MemorySpace.Mat)
            for j in pl.range(4):
                t = pl.gather_row(t, pool, [0, j], [j * 7, 0], [1, 16], transpose=True)
            pl.store(t, [0, 0], yt)

    r = run_kernel(kernel, inputs={"pool": pool},
                   outputs={"y": ((8, 16), pl.FP32), "yt": ((16, 4), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], np.concatenate([pool[20:23], pool[5:10]]))
    np.testing.assert_array_equal(r.outputs["yt"], pool[[0, 7, 14, 21]].T)


def test_scatter_mask_form() -> None:
    even, odd, d = f32(4, 8), f32(4, 8), f32(4, 16)

    def kernel(even, odd, d, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.tensor.scatter(even[:, :], mask_pattern=pl.tile.MaskPattern.P0101, dst=d[:, :])
            t = pl.scatter(odd[:, :], mask_pattern=pl.tile.MaskPattern.P1010, dst=t)
            y[:, :] = t

    r = run_kernel(kernel, inputs={"even": even, "odd": odd, "d": d},
                   outputs={"y": ((4, 16), pl.FP32)})
    want = d.copy()
    want[:, 0::2], want[:, 1::2] = even, odd
    np.testing.assert_array_equal(r.outputs["y"], want)


# -- creation ---------------------------------------------------------------------------------


def test_create_tensor_init_value_and_manual_dep() -> None:
    from lowering.tile import core, ops_data

    x = f32(2, 8)
    seen = {}

    def kernel(x, y):  # noqa: ANN001
        for i in pl.range(2):
            buf = pl.create_tensor([2, 8], dtype=pl.FP32, init_value=0, manual_dep=True)
            with pl.at(level=CG, name_hint="k"):
                old = buf[:, :]  # zero at every execution of the statement
                buf[:, :] = pl.add(old, x[:, :])
                y[:, :] = pl.add(buf[:, :], pl.tile.full([2, 8], dtype=pl.FP32, value=float(i)))
        seen["manual"] = dict(ops_data.MANUAL_DEP.get(core.current(), set()) and {"n": 1})

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((2, 8), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"], x + np.float32(1))
    assert seen["manual"] == {"n": 1}
    with pytest.raises(ValueError, match="init_value"):
        run_kernel(lambda x, y: pl.create_tensor([2, 8], dtype=pl.BF16, init_value=1.0),
                   inputs={"x": x}, outputs={"y": ((2, 8), pl.FP32)})


# -- memory spaces in the budget ---------------------------------------------------------------


def test_budget_accounts_tiles_in_their_memory_space() -> None:
    """a, b [16, 32] bf16 loaded to Mat and moved to Left / Right: Mat 2 × 16·64 B, Left and
    Right 1024 B each, Acc 16 × 64 B, no Vec (nothing the vector unit touches)."""
    a = RNG.standard_normal((16, 32)).astype(BF16)
    b = RNG.standard_normal((16, 32)).astype(BF16)

    def kernel(a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="mm"):
            am = pl.load(a, [0, 0], [16, 32], target_memory=pl.MemorySpace.Mat)
            bm = pl.load(b, [0, 0], [16, 32], target_memory=pl.Mem.Mat)
            al = pl.move(am, target_memory=pl.MemorySpace.Left)
            br = pl.move(pl.tile.transpose_view(bm), target_memory=pl.MemorySpace.Right)
            pl.store(pl.matmul(al, br), [0, 0], c)

    r = run_kernel(kernel, inputs={"a": a, "b": b}, outputs={"c": ((16, 16), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["c"], mm(a, b.T))
    used = {u.space: u.shape["a2a3"] for u in r.budget.rows() if u.scope == "mm"}
    assert used == {"Mat": 2048, "Left": 1024, "Right": 1024, "Acc": 1024}, used

    def bad(a, b, c):  # noqa: ANN001
        with pl.at(level=CG, name_hint="mm"):
            pl.load(a, [0, 0], [16, 32], target_memory=pl.MemorySpace.Left)

    with pytest.raises(ValueError, match="Vec or Mat"):
        run_kernel(bad, inputs={"a": a, "b": b}, outputs={"c": ((16, 16), pl.FP32)})


def test_create_tile_scratch_counts_in_vec_and_starts_undefined() -> None:
    x = f32(8, 64)

    def kernel(x, y, u):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            tmp = pl.create_tile([8, 64], dtype=pl.FP32, target_memory=pl.MemorySpace.Vec)
            y[:, :] = pl.row_sum(x[:, :], tmp)
            u[:, :] = pl.tile.create([8, 64], dtype=pl.FP32)  # never written: undefined

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 1), pl.FP32),
                                                     "u": ((8, 64), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"], f32_sum(x, 1))
    assert np.isnan(r.outputs["u"]).all()
    vec = r.budget.get("k", "Vec").shape["a2a3"]
    # x tile and tmp live together (2 × 2048 B), the row sum [8, 1] (8 rows of 32 B); u comes
    # after x's last use and takes its place (shape model)
    assert vec == 2048 + 2048 + 256, vec


def test_gate_style_partial_reduce_and_partition_store() -> None:
    """The pattern of pypto-lib's gate.py: a scratch tile with one written row, narrowed by
    set_validshape, reduced, narrowed to [1, 1] and stored through a [1, 1] partition."""
    x = f32(4, 64)

    def kernel(x, s):  # noqa: ANN001
        for tok in pl.range(4):
            with pl.at(level=CG, name_hint="k"):
                rows = pl.reshape(x[tok:tok + 1, :], [8, 8])
                part = pl.row_sum(rows, pl.create_tile([8, 8], dtype=pl.FP32))
                red = pl.create_tile([8, 8], dtype=pl.FP32)
                red[0:1, :] = pl.reshape(part, [1, 8])
                red = pl.set_validshape(red, 1, 8)
                tot = pl.set_validshape(pl.reshape(pl.row_sum(red), [1, 8]), 1, 1)
                pl.tile.store(tot, [tok, 0], s, shapes=[1, 1])

    r = run_kernel(kernel, inputs={"x": x}, outputs={"s": ((4, 1), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    want = f32_sum(f32_sum(x.reshape(4, 8, 8), 2)[..., 0], 1)
    np.testing.assert_array_equal(r.outputs["s"], want)


def test_slice_drop_dims_and_pad_value() -> None:
    x = f32(3, 1, 16)

    def kernel(x, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [2, 1, 16], [1, 0, 0], drop_dims=[1])  # [2, 16]
            y[:, :] = t
            # pad_value is dropped by pypto's tile.load: the padding stays undefined
            p = pl.slice(x, [1, 1, 16], [0, 0, 0], valid_shape=[1, 1, 8], drop_dims=[0],
                         pad_value=pl.PadValue.zero)
            z[:, :] = pl.set_validshape(p, 1, 16)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((2, 16), pl.FP32),
                                                     "z": ((1, 16), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"], x[1:3, 0])
    np.testing.assert_array_equal(r.outputs["z"][0, :8], x[0, 0, :8])
    assert np.isnan(r.outputs["z"][0, 8:]).all()

    def bad(x, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            pl.slice(x, [1, 1, 16], [0, 0, 0], valid_shape=[0, 1, 16], drop_dims=[0])

    with pytest.raises(ValueError, match="fully valid unit axis"):
        run_kernel(bad, inputs={"x": x}, outputs={"y": ((2, 16), pl.FP32),
                                                  "z": ((1, 16), pl.FP32)})


def test_assemble_of_a_gm_tensor_copies_it() -> None:
    x = f32(2, 16)

    def kernel(x, y):  # noqa: ANN001
        row = pl.create_tensor([1, 16], dtype=pl.FP32)
        for b in pl.range(2):
            with pl.at(level=CG, name_hint="k"):
                row[:, :] = pl.mul(x[b:b + 1, :], 3.0)
            y = pl.assemble(y, row, [b, 0])

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((2, 16), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(3))


def test_assemble_of_a_higher_rank_tile_drops_leading_unit_axes() -> None:
    x = f32(1, 4, 16)

    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [1, 4, 16], [0, 0, 0], valid_shape=[1, 3, 16])
            y = pl.assemble(y, t, [0, 0])

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 16), pl.FP32)})
    np.testing.assert_array_equal(r.outputs["y"][:3], x[0, :3])
    cov = checks(r, "coverage")  # 3 valid rows moved: row 3 never written
    assert len(cov) == 1 and "rows 3..3" in cov[0].message


def test_fillpad_expand_and_inplace() -> None:
    x = f32(3, 5)

    def kernel(x, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"):
            t = pl.slice(x, [4, 8], [0, 0], valid_shape=[3, 5])
            y[:, :] = pl.fillpad_expand(t, [8, 16], pad_value=pl.PadValue.min)
            u = pl.tile.fillpad_inplace(t, pad_value=0.0)
            z[:, :] = pl.add(u, t)  # t's buffer was filled too

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 16), pl.FP32),
                                                     "z": ((4, 8), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    want = np.full((8, 16), -np.inf, np.float32)
    want[:3, :5] = x
    np.testing.assert_array_equal(r.outputs["y"], want)
    wz = np.zeros((4, 8), np.float32)
    wz[:3, :5] = x * np.float32(2)
    np.testing.assert_array_equal(r.outputs["z"], wz)


def test_element_subscript_is_a_scalar_read() -> None:
    """``t[i, j]`` with an int per axis is pypto's ``tensor.read`` / ``tile.read``: a Python
    scalar (usable as an index), recorded as a one-element GM read; anything else is a view
    or a load."""
    idx = np.array([[3, 1, 0, 2]], np.int32)
    x = f32(4, 32)

    def kernel(idx, x, y):  # noqa: ANN001
        r = idx[0, 1]  # outside a scope: a scalar, not a tile
        assert isinstance(r, int) and r == 1
        with pl.at(level=CG, name_hint="k"):
            t = x[:, :]
            assert t[2, 5] == x.numpy()[2, 5] and isinstance(idx[0, 0], int)
            y[:, :] = x[idx[0, 0]:idx[0, 0] + 1, :]

    r = run_kernel(kernel, inputs={"idx": idx, "x": x}, outputs={"y": ((1, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x[3:4])


def test_subscript_store_of_a_gm_view_copies_through_a_tile() -> None:
    """``dst[a:b, :] = view`` with a GM view as the source (a slice made outside any scope)
    is a GM -> GM copy staged through a tile, as ``pl.assemble`` of a tensor source."""
    x = f32(8, 32)

    def kernel(x, y):  # noqa: ANN001
        y[0:4, :] = x[4:8, :]  # both GM views: no scope

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x[4:8])
