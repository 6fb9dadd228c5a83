"""Each emulator check: a deliberately broken test kernel it catches, and the clean version."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowering.tile import pl, run_kernel
from lowering.tile.core import DslError

BF16 = ml_dtypes.bfloat16
RNG_SEED = 7  # RNG restarts from it for every test (conftest.py)
RNG = np.random.default_rng(RNG_SEED)
CG = pl.Level.CORE_GROUP


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def only(run, check: str):  # noqa: ANN001, ANN201
    found = run.by_check(check)
    assert len(found) == 1, run.summary()
    return found[0]


# -- coverage --------------------------------------------------------------------------------


def scale_rows(x, y, *, t_tiles: int, exact: bool):  # noqa: ANN001, ANN201
    T = x.shape[0]
    t_tile = T // t_tiles if not exact else -(-T // t_tiles)
    with pl.at(level=CG, name_hint="scale"):
        for i in pl.range(t_tiles):
            t0 = i * t_tile
            t1 = min(T, t0 + t_tile)
            y[t0:t1, :] = pl.mul(x[t0:t1, :], 2.0)


def test_coverage_skipped_tail_rows() -> None:
    x = f32(7, 32)
    bad = run_kernel(scale_rows, inputs={"x": x}, outputs={"y": ((7, 32), pl.FP32)},
                     kwargs={"t_tiles": 2, "exact": False})
    f = only(bad, "coverage")
    assert f.severity == "fail" and f.tensor == "y" and not bad.ok
    assert "rows 6..6" in f.message and "scale_rows" in f.message
    good = run_kernel(scale_rows, inputs={"x": x}, outputs={"y": ((7, 32), pl.FP32)},
                      kwargs={"t_tiles": 2, "exact": True})
    assert good.ok and not good.findings, good.summary()
    np.testing.assert_array_equal(good.outputs["y"], x * 2)


def test_coverage_unwritten_output() -> None:
    def kernel(x, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="copy"):
            y[:, :] = x[:, :]

    r = run_kernel(kernel, inputs={"x": f32(4, 32)},
                   outputs={"y": ((4, 32), pl.FP32), "z": ((4, 32), pl.FP32)})
    f = only(r, "coverage")
    assert f.tensor == "z" and "rows 0..3" in f.message
    assert np.isnan(r.outputs["z"]).all()


def cache_write(new, cache, pos, *, stray: bool):  # noqa: ANN001, ANN201
    with pl.at(level=CG, name_hint="cache_write"):
        for b in pl.parallel(0, new.shape[0]):
            row = pl.read(pos, [b])
            cache[row:row + 1, :] = new[b:b + 1, :]
            if stray and b == 1:
                cache[row + 1:row + 2, :] = new[b:b + 1, :]


@pytest.mark.parametrize("width", [32, 3])  # rows compared as 8-byte words | as bytes
def test_coverage_stray_cache_row(width: int) -> None:
    new = f32(2, width).astype(BF16)
    cache = np.full((16, width), 7.0, dtype=BF16)
    pos = np.int32([3, 9])
    kw = {"inputs": {"new": new, "pos": pos}, "outputs": {},
          "inouts": {"cache": (cache, [3, 9])}}
    bad = run_kernel(cache_write, kwargs={"stray": True}, **kw)
    msgs = [f.message for f in bad.by_check("coverage")]
    assert any("written: rows 10..10" in m for m in msgs), msgs
    assert any("changed: rows 10..10" in m for m in msgs), msgs
    good = run_kernel(cache_write, kwargs={"stray": False}, **kw)
    assert good.ok and not good.findings, good.summary()
    want = cache.copy()
    want[[3, 9]] = new
    np.testing.assert_array_equal(good.outputs["cache"].view(np.uint16), want.view(np.uint16))
    missing = run_kernel(cache_write, kwargs={"stray": False}, inputs=kw["inputs"], outputs={},
                         inouts={"cache": (cache, [3, 9, 12])})
    assert "owned rows not fully written: rows 12..12" in only(missing, "coverage").message


# -- races -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chain", [
    [("reshape", (6, 20)), ("window", (1, 4), (5, 16)), ("reshape", (4, 3, 4))],
    [("window", (0, 0, 2), (4, 5, 6)), ("reshape", (20, 4)), ("reshape", (2, 10, 2, 2))],
    [("reshape", (120,)), ("window", (7,), (103,)), ("reshape", (8, 12)),
     ("window", (2, 1), (7, 11))],
])
def test_access_boxes_of_single_elements_through_view_chains(chain) -> None:  # noqa: ANN001
    """Every element of a view (reshapes and windows, chained) maps to the one base element
    numpy's own view of the same storage holds: the race, coverage and dead-write records of
    a scalar ``pl.read`` / ``pl.write`` name the element it touches."""
    from lowering.tile import core

    base = core.BaseTensor("x", np.arange(120, dtype=np.int32).reshape(4, 5, 6),
                           pl.INT32, "input")
    view = core.Tensor(base)
    for step in chain:
        view = view.reshaped(step[1]) if step[0] == "reshape" else view.window(*step[1:])
    flat = base.data.reshape(-1)
    for idx in np.ndindex(*view.shape):
        boxes = view.to_base(idx, tuple(i + 1 for i in idx))
        assert len(boxes) == 1
        lo, hi = boxes[0]
        assert all(b - a == 1 for a, b in zip(lo, hi, strict=True))
        assert flat[np.ravel_multi_index(lo, base.shape)] == view.data[idx]



def row_sums(x, y, *, cross: bool):  # noqa: ANN001, ANN201
    for i in pl.parallel(0, x.shape[0], 1):
        with pl.at(level=CG, name_hint="row"):
            dst = 0 if cross else i
            y[dst:dst + 1, :] = pl.row_sum(x[i:i + 1, :])


def test_race_cross_iteration_write() -> None:
    x = f32(4, 64)
    bad = run_kernel(row_sums, inputs={"x": x}, outputs={"y": ((4, 1), pl.FP32)},
                     kwargs={"cross": True})
    f = only(bad, "race")
    assert f.severity == "fail" and f.tensor == "y"
    assert "i=0" in f.message and "i=1" in f.message and "y[0, 0]" in f.message
    good = run_kernel(row_sums, inputs={"x": x}, outputs={"y": ((4, 1), pl.FP32)},
                      kwargs={"cross": False})
    assert good.ok and not good.findings, good.summary()


def rope_heads(q, out, *, tmp_at: str):  # noqa: ANN001, ANN201
    """``tmp_at``: 'inside' the head loop without a head dim (a fresh buffer per head),
    'before' it without one (one buffer for all heads: the race), 'before' with one
    ('per_head')."""
    T, HHD = q.shape
    H, HD = 4, HHD // 4
    if tmp_at == "before":
        tmp = pl.create_tensor([T, HD // 2], dtype=pl.FP32)
    elif tmp_at == "per_head":
        tmp = pl.create_tensor([H, T, HD // 2], dtype=pl.FP32)
    for h in pl.parallel(0, H, 1):
        if tmp_at == "inside":
            tmp = pl.create_tensor([T, HD // 2], dtype=pl.FP32)
        with pl.at(level=CG, name_hint="even"):
            even = pl.tensor.gather(q[:, h * HD:(h + 1) * HD],
                                    mask_pattern=pl.tile.MaskPattern.P0101)
            if tmp_at == "per_head":
                tmp[h, :, :] = even
            else:
                tmp[:, :] = even
        with pl.at(level=CG, name_hint="write"):
            v = tmp[h, :, :] if tmp_at == "per_head" else tmp[:, :]
            out[:, h * HD // 2:(h + 1) * HD // 2] = v


def test_race_on_a_gm_temporary_shared_by_parallel_iterations() -> None:
    """A GM temporary made before ``pl.parallel`` without the loop's dimension is one buffer
    all iterations write and read: a race. Made inside the loop body it is not shared: pypto's
    orchestration allocates a body's tensors at the body's entry, afresh per iteration."""
    q = f32(8, 4 * 16)
    kw = {"inputs": {"q": q}, "outputs": {"out": ((8, 32), pl.FP32)}}
    bad = run_kernel(rope_heads, kwargs={"tmp_at": "before"}, **kw)
    f = only(bad, "race")
    assert f.tensor == "tmp" and "h=0" in f.message and "h=1" in f.message
    want = np.concatenate([q[:, h * 16:(h + 1) * 16:2] for h in range(4)], 1)
    for at in ("inside", "per_head"):
        good = run_kernel(rope_heads, kwargs={"tmp_at": at}, **kw)
        assert good.ok and not good.findings, good.summary()
        np.testing.assert_array_equal(good.outputs["out"], want)


def test_race_through_reshape_view_of_3d_tensor() -> None:
    def kernel(x, q, *, width: int, heads: int):  # noqa: ANN001
        flat = pl.reshape(q, [4, 3 * 8])
        for h in pl.parallel(0, heads):
            with pl.at(level=CG, name_hint="heads"):
                flat[:, h * 8:h * 8 + width] = x[:, 0:width]

    x = f32(4, 16)
    bad = run_kernel(kernel, inputs={"x": x}, outputs={"q": ((4, 3, 8), pl.FP32)},
                     kwargs={"width": 16, "heads": 2})
    f = only(bad, "race")
    assert "q[0:4, 1, 0:8]" in f.message, f.message  # overlap shown in base coordinates
    good = run_kernel(kernel, inputs={"x": x}, outputs={"q": ((4, 3, 8), pl.FP32)},
                      kwargs={"width": 8, "heads": 3})
    assert good.ok and not good.findings, good.summary()


def test_parallel_permuted_order_same_result() -> None:
    x = f32(6, 64)
    a = run_kernel(row_sums, inputs={"x": x}, outputs={"y": ((6, 1), pl.FP32)},
                   kwargs={"cross": False}, permute_parallel=True, seed=3)
    b = run_kernel(row_sums, inputs={"x": x}, outputs={"y": ((6, 1), pl.FP32)},
                   kwargs={"cross": False})
    np.testing.assert_array_equal(a.outputs["y"], b.outputs["y"])


def shifted_rows(x, y, *, shift: int):  # noqa: ANN001, ANN201
    """Iteration i reads row i+shift of y (a GM tensor every iteration writes)."""
    n = x.shape[0]
    for i in pl.parallel(0, n):
        with pl.at(level=CG, name_hint="rw"):
            y[i:i + 1, :] = x[i:i + 1, :]
            j = min(n - 1, i + shift)
            y[i:i + 1, :] = pl.add(y[j:j + 1, :], x[i:i + 1, :])


def test_race_read_of_another_iterations_write() -> None:
    x = f32(4, 32)
    bad = run_kernel(shifted_rows, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                     kwargs={"shift": 1})
    f = only(bad, "race")
    assert f.tensor == "y" and "pl.parallel loop 'i'" in f.message
    assert "iteration i=1 writes y[1, 0:32]" in f.message
    assert "iteration i=0 reads y[1, 0:32]" in f.message and "overlap y[1, 0:32]" in f.message
    good = run_kernel(shifted_rows, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                      kwargs={"shift": 0})
    assert good.ok and not good.findings, good.summary()
    np.testing.assert_array_equal(good.outputs["y"], x + x)


def rows_of_a_scope_result(x, y, *, shift: int):  # noqa: ANN001, ANN201
    """A tile made in one scope, then rotated row by row in pl.parallel iterations, each in its
    own scope (pypto-lib HEAD decode_front.py's k_idx): iteration i reads row i+shift and
    writes row i of the shared tile."""
    n = x.shape[0]
    with pl.at(level=CG, name_hint="make"):
        t = pl.mul(x[0:n, :], 2.0)
    for i in pl.parallel(0, n):
        with pl.at(level=CG, name_hint="rows"):
            j = min(n - 1, i + shift)
            t = pl.assemble(t, pl.add(t[j:j + 1, :], 1.0), [i, 0])
    with pl.at(level=CG, name_hint="out"):
        y[0:n, :] = t


def test_rows_of_a_shared_tile_race_only_when_an_iteration_reads_another_ones_row() -> None:
    """A write into a tile (pl.assemble, a subscript store) reads nothing of it, and a slice
    reads its window only: per-row work on a shared tile is no race; reading the next row
    (which another iteration writes) is."""
    x = f32(4, 32)
    good = run_kernel(rows_of_a_scope_result, inputs={"x": x},
                      outputs={"y": ((4, 32), pl.FP32)}, kwargs={"shift": 0})
    assert good.ok and not good.by_check("race"), good.summary()
    np.testing.assert_array_equal(good.outputs["y"], (x * 2 + 1).astype(np.float32))
    bad = run_kernel(rows_of_a_scope_result, inputs={"x": x},
                     outputs={"y": ((4, 32), pl.FP32)}, kwargs={"shift": 1})
    f = only(bad, "race")
    assert "iteration i=1 writes" in f.message and "iteration i=0 reads" in f.message


def split_k(x, y, *, mode: str):  # noqa: ANN001, ANN201
    """Two K halves accumulate into y: atomic adds (mode 'atomic'), or one of them a plain
    write ('mixed') or a read ('read') of the element the other iteration adds into."""
    for k in pl.parallel(0, 2):
        with pl.at(level=CG, name_hint="split_k"):
            part = pl.row_sum(x[:, k * 32:(k + 1) * 32])
            if mode == "mixed" and k == 1:
                y[:, :] = part
            elif mode == "read" and k == 1:
                y[:, :] = pl.add(y[:, :], part)
            else:
                pl.assemble(y, part, [0, 0], atomic=pl.AtomicType.Add)


def test_atomic_adds_accumulate_and_only_mixed_accesses_race() -> None:
    x = np.ones((4, 64), np.float32)
    kw = {"inputs": {"x": x}, "outputs": {"y": ((4, 1), pl.FP32)}, "zero_outputs": True}
    good = run_kernel(split_k, kwargs={"mode": "atomic"}, **kw)
    assert good.ok and not good.findings, good.summary()
    np.testing.assert_array_equal(good.outputs["y"], np.full((4, 1), 64, np.float32))
    mixed = run_kernel(split_k, kwargs={"mode": "mixed"}, **kw)
    f = only(mixed, "race")
    assert "iteration k=0 atomically adds into y[0:4, 0]" in f.message
    assert "iteration k=1 writes y[0:4, 0]" in f.message
    read = run_kernel(split_k, kwargs={"mode": "read"}, **kw)
    f = only(read, "race")
    assert "k=0 atomically adds into" in f.message and "k=1 reads y[0:4, 0]" in f.message


def test_atomic_add_of_ones_twice_is_two() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="twice"):
            for _ in pl.range(2):
                pl.assemble(y, x[:, :], [0, 0], atomic=pl.AtomicType.Add)

    r = run_kernel(kernel, inputs={"x": np.ones((2, 8), np.float32)},
                   outputs={"y": ((2, 8), pl.FP32)}, zero_outputs=True)
    np.testing.assert_array_equal(r.outputs["y"], np.full((2, 8), 2, np.float32))
    bf = run_kernel(kernel, inputs={"x": np.full((2, 8), 1.5, BF16)},
                    outputs={"y": ((2, 8), pl.BF16)}, zero_outputs=True)
    assert bf.outputs["y"].dtype == BF16 and (bf.outputs["y"] == BF16(3.0)).all()

    with pytest.raises(DslError, match="not on a5"):
        run_kernel(kernel, inputs={"x": np.full((2, 8), 1.5, BF16)},
                   outputs={"y": ((2, 8), pl.BF16)}, zero_outputs=True, platform="a5")
    with pytest.raises(DslError, match="INT64"):
        run_kernel(kernel, inputs={"x": np.ones((2, 8), np.int64)},
                   outputs={"y": ((2, 8), pl.INT64)}, zero_outputs=True)

    def into_tile(x):  # noqa: ANN001
        with pl.at(level=CG, name_hint="t"):
            pl.assemble(x[:, :], x[:, :], [0, 0], atomic=pl.AtomicType.Add)

    with pytest.raises(TypeError, match="GM tensor target"):
        run_kernel(into_tile, inputs={"x": np.ones((2, 8), np.float32)}, outputs={})


def shared_tile(x, y, *, outside: bool):  # noqa: ANN001, ANN201
    with pl.at(level=CG, name_hint="stage"):
        buf = pl.full([1, 32], pl.FP32, 0.0)  # line of the shared tile
        for i in pl.parallel(0, x.shape[0]):
            t = buf if outside else pl.full([1, 32], pl.FP32, 0.0)
            t[0:1, :] = pl.mul(x[i:i + 1, :], 2.0)
            y[i:i + 1, :] = t


def test_race_on_one_tile_written_by_every_iteration() -> None:
    x = f32(3, 32)
    bad = run_kernel(shared_tile, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)},
                     kwargs={"outside": True})
    f = only(bad, "race")
    line = shared_tile.__code__.co_firstlineno + 2
    assert f"on-chip tile made at test_tile_checks.py:{line}" in f.message
    assert "pl.parallel loop 'i'" in f.message and "iteration i=0 writes" in f.message
    assert "iteration i=1" in f.message
    good = run_kernel(shared_tile, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)},
                      kwargs={"outside": False})
    assert good.ok and not good.findings, good.summary()
    np.testing.assert_array_equal(good.outputs["y"], x * 2)


# -- dead writes -----------------------------------------------------------------------------


def staged(x, y, *, mode: str):  # noqa: ANN001, ANN201
    tmp = pl.create_tensor([4, 32], dtype=pl.FP32)
    with pl.at(level=CG, name_hint="stage"):
        tmp[:, :] = pl.mul(x[:, :], 2.0)
        if mode == "overwrite":
            tmp[0:2, :] = pl.mul(x[0:2, :], 3.0)
        if mode == "unread":
            y[:, :] = x[:, :]
        else:
            y[:, :] = tmp[:, :]


def test_dead_write_unread_and_overwritten() -> None:
    x = f32(4, 32)
    kw = {"inputs": {"x": x}, "outputs": {"y": ((4, 32), pl.FP32)}}
    unread = run_kernel(staged, kwargs={"mode": "unread"}, **kw)
    f = only(unread, "dead_write")
    assert f.severity == "warning" and f.tensor == "tmp" and "rows 0..3" in f.message
    assert unread.ok  # a warning, not a failure
    over = run_kernel(staged, kwargs={"mode": "overwrite"}, **kw)
    f = only(over, "dead_write")
    assert "tmp[0:2, 0:32]" in f.message and "overwritten" in f.message
    clean = run_kernel(staged, kwargs={"mode": "clean"}, **kw)
    assert not clean.findings, clean.summary()


# -- budget ----------------------------------------------------------------------------------


def big_tile(x, y, *, rows: int):  # noqa: ANN001, ANN201
    with pl.at(level=CG, name_hint="big"):
        y[0:rows, :] = pl.mul(x[0:rows, :], 2.0)


def test_budget_over_limit() -> None:
    x = f32(384, 128)  # [384,128] fp32 = 192 KiB per tile
    bad = run_kernel(big_tile, inputs={"x": x}, outputs={"y": ((384, 128), pl.FP32)},
                     kwargs={"rows": 384})
    f = only(bad, "budget")
    assert f.severity == "fail" and f.scope == "big" and not bad.ok
    # the product may reuse the dying load's buffer: one 192 KiB buffer
    assert "Vec needs 196608 B" in f.message and "188416 B (184 KiB)" in f.message
    assert "FP32[384,128] 196608 B" in f.message and "'big'" in f.message
    # ...which fits a5's 240 KiB
    a5 = run_kernel(big_tile, inputs={"x": x}, outputs={"y": ((384, 128), pl.FP32)},
                    kwargs={"rows": 384}, platform="a5")
    assert a5.ok and not a5.findings, a5.summary()
    assert a5.budget.get("big", "Vec").over("a2a3") and not a5.budget.get("big", "Vec").over("a5")
    x2 = f32(368, 128)  # 184 KiB exactly
    good = run_kernel(big_tile, inputs={"x": x2}, outputs={"y": ((368, 128), pl.FP32)},
                      kwargs={"rows": 368})
    assert good.ok and not good.findings, good.summary()


def norm_like(x, w, y, *, loop: str):  # noqa: ANN001, ANN201
    with pl.at(level=CG, name_hint="norm"):
        a = x[0:16, 0:128]  # 16 x 512 B = 8192
        s = pl.row_sum(a)  # [16,1]: 16 x 32 = 512; scratch [16,128] fp32 = 8192
        b = x[0:16, 128:192]  # 16 x 256 = 4096
        c = pl.row_expand_mul(b, s)  # 4096
        y[:, 0:64] = c
    with pl.at(level=CG, name_hint="mm"):
        acc = pl.matmul(w[0:16, 0:64], w[0:64, 0:32], out_dtype=pl.FP32)
        y[:, 64:96] = acc
    with pl.at(level=CG, name_hint="pipe"):
        it = pl.pipeline(0, 4, 1, stage=2) if loop == "pipeline" else pl.range(0, 4, 1)
        for i in it:
            y[:, 96 + 8 * i:104 + 8 * i] = x[0:16, 8 * i:8 * i + 8]


def test_budget_hand_computed_both_models_and_pipeline() -> None:
    x = f32(16, 192)
    w = f32(64, 64).astype(BF16)
    out = {"y": ((16, 128), pl.FP32)}
    r = run_kernel(norm_like, inputs={"x": x, "w": w}, outputs=out, kwargs={"loop": "range"})
    assert r.ok, r.summary()
    vec = r.budget.get("norm", "Vec")
    # shape model: two [16,128] fp32 buffers overlap (a and the row_sum scratch), s, and one
    # [16,64] (c is written over b, whose last use is the op creating c): 2*8192 + 512 + 4096
    assert vec.shape == {"a2a3": 20992, "a5": 20992}
    # peak: a + scratch while the row_sum reads a
    assert vec.peak == {"a2a3": 16384, "a5": 16384}
    assert r.budget.get("norm", "Acc") is None
    # cube: lhs [16,64] bf16 -> 16 x 128 B; rhs [64,32] bf16 -> 64 x 64 B; acc [16,32] fp32
    assert r.budget.get("mm", "Left").shape["a2a3"] == 2048
    assert r.budget.get("mm", "Right").shape["a2a3"] == 4096
    assert r.budget.get("mm", "Mat").peak["a2a3"] == 6144
    assert r.budget.get("mm", "Acc").shape["a2a3"] == 2048
    assert r.budget.get("mm", "Vec") is None  # loads read only by the cube
    # loads [16,8] fp32: 16 x 32 B = 512 per tile, live one at a time
    assert r.budget.get("pipe", "Vec").shape["a2a3"] == 512
    p = run_kernel(norm_like, inputs={"x": x, "w": w}, outputs=out, kwargs={"loop": "pipeline"})
    assert p.budget.get("pipe", "Vec").shape["a2a3"] == 1024
    assert p.budget.get("pipe", "Vec").peak["a2a3"] == 1024
    np.testing.assert_array_equal(p.outputs["y"], r.outputs["y"])
    assert "norm" in r.budget.table() and len(r.budget.as_dicts()) == 6


def test_budget_worst_entry_of_a_scope_in_a_loop() -> None:
    def kernel(x, y):  # noqa: ANN001
        for i in pl.range(2):
            with pl.at(level=CG, name_hint="grow"):
                w = 64 * (i + 1)
                y[i:i + 1, 0:w] = pl.mul(x[i:i + 1, 0:w], 2.0)
                if i == 0:
                    y[i:i + 1, 64:128] = x[i:i + 1, 64:128]

    r = run_kernel(kernel, inputs={"x": f32(2, 128)}, outputs={"y": ((2, 128), pl.FP32)})
    vec = r.budget.get("grow", "Vec")
    assert vec.shape["a2a3"] == 512  # i=1: one [1,128] fp32 buffer (load, then product)
    assert vec.where["a2a3"] == (("i", 1),)


def test_budget_l0_operands_are_panels_of_at_most_l0_live_only_at_their_matmuls() -> None:
    def kernel(a, w, v, y, z):  # noqa: ANN001
        with pl.at(level=CG, name_hint="mm"):
            wt = w[:, :]  # [512,128] bf16: 128 KiB in L1, more than L0B's 64 KiB
            vt = v[:, :]  # [256,64] bf16: 32 KiB, loaded while wt is still in L1
            y[:, :] = pl.matmul(a[:, :], wt, out_dtype=pl.FP32)
            z[:, :] = pl.matmul(a[:, 0:256], vt, out_dtype=pl.FP32)

    a, w, v = (f32(16, 512).astype(BF16), f32(512, 128).astype(BF16),
               f32(256, 64).astype(BF16))
    r = run_kernel(kernel, inputs={"a": a, "w": w, "v": v},
                   outputs={"y": ((16, 128), pl.FP32), "z": ((16, 64), pl.FP32)})
    assert r.ok and not r.budget.over("a2a3"), r.summary()
    right = r.budget.get("mm", "Right")
    # wt's L0B share is capped at L0B (AutoTileMatmulL0 panels); vt's is only live at its own
    # matmul, so the two never add up (their L1 copies do)
    assert right.shape["a2a3"] == right.peak["a2a3"] == 65536
    assert r.budget.get("mm", "Mat").peak["a2a3"] >= 131072 + 32768


def _qk_pv(a, k, v, o, *, placed: bool):  # noqa: ANN001
    """The fused-attention pattern: per head block, QK with K^T then PV with V, both rhs
    [128, 256] bf16 = 64 KiB each, resident in L1 across the loop."""
    with pl.at(level=CG, name_hint="attn"):
        kt = pl.load(k, [0, 0], [128, 256], target_memory=pl.MemorySpace.Mat)
        vt = pl.load(v, [0, 0], [256, 128], target_memory=pl.MemorySpace.Mat)
        if placed:  # the kernel pins K in L0B itself: whole, for its whole lifetime
            kt = pl.move(kt, target_memory=pl.MemorySpace.Right)
        for hb in pl.range(2):
            s = pl.matmul(a[16 * hb:16 * hb + 16, :], kt, out_dtype=pl.FP32)
            p = pl.cast(s, target_type=pl.BF16, mode="rint")
            o[16 * hb:16 * hb + 16, :] = pl.matmul(p, vt, out_dtype=pl.FP32)


def test_budget_l0_panels_of_successive_matmuls_share_the_slot() -> None:
    """pypto's AutoTileMatmulL0 extracts each matmul's L0B panel right before it and
    MemoryReuse aliases the panels of successive matmuls: L0B peak = max(QK, PV) = 64 KiB,
    not their sum (a false budget FAIL of pypto-lib's V4 ``decode_sparse_attn_hca.py``). A
    tile the kernel moves into L0B itself stays there: then the sum is over."""
    a = f32(32, 128).astype(BF16)
    k, v = f32(128, 256).astype(BF16), f32(256, 128).astype(BF16)
    ins, outs = {"a": a, "k": k, "v": v}, {"o": ((32, 128), pl.FP32)}
    r = run_kernel(_qk_pv, inputs=ins, outputs=outs, kwargs={"placed": False})
    assert r.ok and not r.budget.over("a2a3"), r.summary()
    assert r.budget.get("attn", "Right").peak["a2a3"] == 65536
    bad = run_kernel(_qk_pv, inputs=ins, outputs=outs, kwargs={"placed": True})
    over = [u for u in bad.budget.over("a2a3") if u.space == "Right"]
    assert over and over[0].peak["a2a3"] == 2 * 65536, bad.summary()
    np.testing.assert_array_equal(bad.outputs["o"], r.outputs["o"])


# -- layout ----------------------------------------------------------------------------------


def proj(x, w, y, *, m: int):  # noqa: ANN001, ANN201
    with pl.at(level=CG, name_hint="proj"):
        y[0:m, :] = pl.matmul(x[0:m, :], w[:, :], out_dtype=pl.FP32)


def test_layout_cube_m_not_multiple_of_16() -> None:
    x, w = f32(16, 32).astype(BF16), f32(32, 32).astype(BF16)
    bad = run_kernel(proj, inputs={"x": x, "w": w}, outputs={"y": ((16, 32), pl.FP32)},
                     kwargs={"m": 8})
    f = [f for f in bad.by_check("layout") if "M=8" in f.message]
    assert f and f[0].scope == "proj"
    for m in (16, 1):
        good = run_kernel(proj, inputs={"x": x, "w": w}, outputs={"y": ((m, 32), pl.FP32)},
                          kwargs={"m": m})
        assert not good.findings, good.summary()


def test_layout_misaligned_gm_offset() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="shift"):
            y[:, :] = x[:, 3:35]

    r = run_kernel(kernel, inputs={"x": f32(4, 40)}, outputs={"y": ((4, 32), pl.FP32)})
    f = only(r, "layout")
    assert "12 B" in f.message and f.severity == "warning"


def test_budget_ignores_tiles_never_read_and_counts_crossing_values() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="produce"):
            acc = pl.create_tensor([16, 64], dtype=pl.FP32)  # placeholder, rebound unread
            acc = pl.mul(x[:, :], 2.0)
        with pl.at(level=CG, name_hint="consume"):
            n = pl.tensor.read(x, [0, 0])
            y[:, :] = pl.add(acc, n)

    x = f32(16, 64)
    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((16, 64), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    assert r.budget.get("produce", "Vec").shape["a2a3"] == 4096  # load, product in place
    # the crossing value occupies a buffer in the consuming scope, the sum reuses it
    assert r.budget.get("consume", "Vec").shape["a2a3"] == 4096
    np.testing.assert_array_equal(r.outputs["y"], x * 2 + x[0, 0])


def test_race_raster_agrees_with_the_pairwise_definition() -> None:
    """The linear-time raster (``core._race_free``) decides exactly what the pairwise rule
    says: two records of different iterations in one barrier phase overlap and one writes,
    unless both add atomically. Random boxes, kinds, iterations and phases, fixed seed."""
    from lowering.tile import core

    rng = np.random.default_rng(5)
    shape = (6, 10)
    seen = {True: 0, False: 0}
    for _ in range(400):
        recs = []
        for _ in range(int(rng.integers(2, 7))):
            lo = tuple(int(rng.integers(0, n)) for n in shape)
            hi = tuple(int(rng.integers(a + 1, min(n, a + 3) + 1)) for a, n in zip(lo, shape, strict=True))
            recs.append((int(rng.integers(0, 3)), lo, hi, int(rng.integers(0, 3)), None,
                         int(rng.integers(0, 2))))
        pairwise = not any(
            a[3] != b[3] and a[5] == b[5] and (a[0] or b[0])
            and not (a[0] == core.ATOMIC and b[0] == core.ATOMIC)
            and all(x0 < y1 and y0 < x1 for x0, x1, y0, y1 in zip(a[1], a[2], b[1], b[2], strict=True))
            for i, a in enumerate(recs) for b in recs[i + 1:])
        assert core._race_free(recs, shape) == pairwise, recs
        seen[pairwise] += 1
    assert min(seen.values()) > 50  # both outcomes exercised
