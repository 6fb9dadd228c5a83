"""pl.parallel loops run in lanes (lowering.tile.lanes): the iterations side by side, once.

The property: a run in lanes gives the bits, findings and budget of the run one iteration at
a time, on every kernel; where a body steps outside what lanes model, the run starts again
with that loop one iteration at a time, and says so in ``KernelRun.lane_loops``."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowering.tile import pl, run_kernel
from lowering.tile.core import OutOfBounds
from lowering.tile.lanes import LaneEscape, Lanes

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(11)
CG = pl.Level.CORE_GROUP
H, R, L, P, S, K = 4, 16, 64, 16, 40, 9  # heads, rows, latent, rope, cache rows, top-k


@pytest.fixture(autouse=True)
def _no_remembered_denials() -> None:
    """Each test starts with no loop remembered as one-at-a-time (kernels made by one factory
    share their code, which is what the runner remembers denials by)."""
    from lowering.tile import runner

    runner._LANES_DENIED.clear()


def both(kernel, **kw):  # noqa: ANN001, ANN201
    """The kernel run in lanes and one iteration at a time, which must agree bit for bit."""
    on = run_kernel(kernel, lanes=True, **kw)
    off = run_kernel(kernel, lanes=False, **kw)
    assert on.outputs.keys() == off.outputs.keys()
    for name in on.outputs:
        a, b = on.outputs[name], off.outputs[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    key = lambda r: sorted((f.check, f.severity, f.tensor, f.message)  # noqa: E731
                           for f in r.findings)
    assert key(on) == key(off), (on.summary(), off.summary())
    assert on.budget.as_dicts() == off.budget.as_dicts()
    assert on.lane_loops and not off.lane_loops  # lanes=False: no loop ran in lanes
    return on


def rows_both(kernel, y: tuple[int, int] = (H, 32)):  # noqa: ANN001, ANN201
    """:func:`both` on x, H rows of 32 fp32 values, into an fp32 output y; (x, the run)."""
    x = RNG.standard_normal((H, 32)).astype(np.float32)
    return x, both(kernel, inputs={"x": x}, outputs={"y": (y, pl.FP32)})


def attend(q_lat, q_pe, w_v, kv_cache, pe_cache, topk, out):  # noqa: ANN001, ANN201
    """decode_front's sparse attention shape: per head, GM loads at per-head offsets, an online
    softmax over rows of a shared cache, a per-head weight slice, a tile assembled per chunk,
    a row of the output per head."""
    for h in pl.parallel(H):
        with pl.at(level=CG, name_hint="softmax"):
            qn = q_lat[h * R:(h + 1) * R, 0:L]
            qp = q_pe[h * R:(h + 1) * R, 0:P]
            p0 = pl.read(topk, [0])
            kv0 = pl.cast(kv_cache[p0:p0 + 1, 0:L], target_type=pl.FP32)
            oi = pl.col_expand(pl.full([R, L], dtype=pl.FP32, value=0.0), kv0)
            mi = pl.mul(pl.add(pl.row_sum(pl.mul(qn, oi)), pl.row_sum(pl.mul(
                qp, pl.col_expand(pl.full([R, P], dtype=pl.FP32, value=0.0),
                                  pl.cast(pe_cache[p0:p0 + 1, 0:P], target_type=pl.FP32))))), 0.125)
            li = pl.exp(pl.sub(mi, mi))
            for kk in pl.range(1, K):
                pos = pl.read(topk, [kk])
                kv = pl.col_expand(pl.full([R, L], dtype=pl.FP32, value=0.0),
                                   pl.cast(kv_cache[pos:pos + 1, 0:L], target_type=pl.FP32))
                cur = pl.mul(pl.row_sum(pl.mul(qn, kv)), 0.125)
                mn = pl.maximum(mi, cur)
                alpha = pl.exp(pl.sub(mi, mn))
                beta = pl.exp(pl.sub(cur, mn))
                li = pl.add(pl.mul(alpha, li), beta)
                oi = pl.add(pl.row_expand_mul(oi, alpha), pl.row_expand_mul(kv, beta))
                mi = mn
            ctx = pl.cast(pl.row_expand_div(oi, li), target_type=pl.BF16)
        with pl.at(level=CG, name_hint="v_proj"):
            acc = pl.full([R, 2 * P], dtype=pl.FP32, value=0.0)
            for v0 in pl.range(0, 2 * P, P):
                part = pl.matmul(ctx, w_v[h * L:(h + 1) * L, v0:v0 + P], out_dtype=pl.FP32)
                acc = pl.assemble(acc, part, [0, v0])
            out = pl.assemble(out, pl.col_sum(acc), [h, 0])
    return out


def attend_args() -> dict:
    return dict(
        inputs={"q_lat": RNG.standard_normal((H * R, L)).astype(np.float32),
                "q_pe": RNG.standard_normal((H * R, P)).astype(np.float32),
                "w_v": RNG.standard_normal((H * L, 2 * P)).astype(BF16),
                "kv_cache": RNG.standard_normal((S, L)).astype(BF16),
                "pe_cache": RNG.standard_normal((S, P)).astype(BF16),
                "topk": RNG.permutation(S)[:K].astype(np.int32)},
        outputs={"out": ((H, 2 * P), pl.FP32)})


def test_attention_in_lanes_is_the_one_at_a_time_run() -> None:
    run = both(attend, **attend_args())
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    assert run.ok and not np.isnan(run.outputs["out"]).any()
    # one iteration's tiles in the budget (each iteration has its own core), not H of them
    row = run.budget.get("softmax", "Vec")
    assert row is not None and f"FP32[{R},{L}]" in str(row.top) and f"[{H}," not in str(row.top)


def test_scaled_rows_match_numpy() -> None:
    def kernel(x, w, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="scale"):
                t = pl.mul(x[h * 2:h * 2 + 2, :], w[h:h + 1, :])  # per lane both
                y[h * 2:h * 2 + 2, :] = pl.add(t, pl.row_max(t))

    x = RNG.standard_normal((2 * H, 32)).astype(np.float32)
    w = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x, "w": w}, outputs={"y": ((2 * H, 32), pl.FP32)})
    t = x * np.repeat(w, 2, axis=0)
    np.testing.assert_array_equal(run.outputs["y"], t + t.max(axis=1, keepdims=True))
    assert list(run.lane_loops.values()) == ["lanes"]


def one_at_a_time(run) -> str:  # noqa: ANN001
    (why,) = run.lane_loops.values()
    assert why.startswith("one at a time: "), run.lane_loops
    return why


def test_a_branch_on_the_index_runs_one_at_a_time() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                if h % 2 == 0:
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
                else:
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 3.0)

    x, run = rows_both(kernel)
    assert "a branch" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], x * np.array([[2], [3], [2], [3]], np.float32))


def test_a_branch_every_lane_takes_alike_stays_in_lanes() -> None:
    def kernel(x, flag, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                if pl.read(flag, [0]) > 0:  # one value, read by every iteration
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
                else:
                    y[h:h + 1, :] = x[h:h + 1, :]

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x, "flag": np.array([1], np.int32)},
               outputs={"y": ((H, 32), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"]
    np.testing.assert_array_equal(run.outputs["y"], x * 2)


def test_a_branch_the_source_hides_leaves_the_lanes_when_it_runs() -> None:
    def factor(t):  # noqa: ANN001, ANN202  (the body's source does not show this branch)
        return 2.0 if pl.read(t, [0, 0]) > 0 else 3.0

    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                t = x[h:h + 1, :]
                y[h:h + 1, :] = pl.mul(t, factor(t))

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    x[:, 0] = [1, -1, 1, -1]
    run = both(kernel, inputs={"x": x}, outputs={"y": ((H, 32), pl.FP32)})
    assert "a branch of a value that differs" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], x * np.array([[2], [3], [2], [3]], np.float32))


def _running_sums(x: np.ndarray, rows: list) -> np.ndarray:
    """numpy, in the kernels' fp32 order: row h is 0 + x[r] for r in rows[h], one by one."""
    out = np.zeros((len(rows), x.shape[1]), np.float32)
    for h, rs in enumerate(rows):
        for r in rs:
            out[h] += x[r]
    return out


def test_a_trip_count_per_iteration_runs_one_at_a_time() -> None:
    def kernel(x, n, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                acc = pl.full([1, 32], dtype=pl.FP32, value=0.0)
                for k in pl.range(pl.read(n, [h])):
                    acc = pl.add(acc, x[k:k + 1, :])
                y[h:h + 1, :] = acc

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    n = np.array([1, 4, 2, 3], np.int32)
    run = both(kernel, inputs={"x": x, "n": n}, outputs={"y": ((H, 32), pl.FP32)})
    assert "trip count" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], _running_sums(x, [range(k) for k in n]))


def test_atomic_adds_keep_the_iterations_order() -> None:
    # two adds per iteration into one element: in lanes the first adds of every iteration
    # would all come before the second ones, and fp32 sums depend on the order
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                pl.assemble(y, x[h:h + 1, :], [0, 0], atomic=pl.AtomicType.Add)
                pl.assemble(y, pl.mul(x[h:h + 1, :], -1.0e-3), [0, 0],
                            atomic=pl.AtomicType.Add)

    x = (RNG.standard_normal((H, 32)) * np.array([[1e8], [1], [-1e8], [1]])).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((1, 32), pl.FP32)}, zero_outputs=True)
    assert "atomic" in one_at_a_time(run)


def test_a_race_is_reported_from_the_one_at_a_time_run() -> None:
    def kernel(x, y):  # noqa: ANN001
        scratch = pl.create_tensor([1, 32], dtype=pl.FP32)
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="stage"):
                scratch[0:1, :] = pl.mul(x[h:h + 1, :], 3.0)
            with pl.at(level=CG, name_hint="out"):
                y[h:h + 1, :] = scratch[0:1, :]

    x, run = rows_both(kernel)
    assert "race" in one_at_a_time(run)
    (race,) = run.by_check("race")
    assert race.severity == "fail" and "h=0 writes scratch" in race.message
    np.testing.assert_array_equal(run.outputs["y"], x * 3)  # the sequential order's values


def test_python_state_carried_across_iterations_is_refused() -> None:
    def kernel(x, y):  # noqa: ANN001
        seen = []
        for h in pl.parallel(H):
            seen.append(h)
            with pl.at(level=CG, name_hint="s"):
                y[h:h + 1, :] = pl.mul(x[h:h + 1, :], float(len(seen)))

    x, run = rows_both(kernel)
    assert ".append()" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], x * np.arange(1, H + 1, dtype=np.float32)[:, None])


def test_a_tile_kept_past_the_loop_runs_one_at_a_time() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                t = pl.mul(x[h:h + 1, :], 2.0)
                y[h:h + 1, :] = t
        with pl.at(level=CG, name_hint="last"):
            y[H:H + 1, :] = pl.add(t, 1.0)  # the last iteration's tile

    x, run = rows_both(kernel, (H + 1, 32))
    assert "after the loop" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"][H], x[H - 1] * 2 + 1)


def test_a_buffer_per_iteration_runs_one_at_a_time() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            tmp = pl.create_tensor([1, 32], dtype=pl.FP32)
            with pl.at(level=CG, name_hint="a"):
                tmp[0:1, :] = pl.mul(x[h:h + 1, :], 2.0)
            with pl.at(level=CG, name_hint="b"):
                y[h:h + 1, :] = tmp[0:1, :]

    x, run = rows_both(kernel)
    assert "buffer per iteration" in one_at_a_time(run)
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], x * 2)


def test_an_error_in_one_lane_is_the_one_at_a_time_error() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                y[h:h + 1, :] = pl.row_sum(x[h * 5:h * 5 + 4, :])[0:1, :]

    kw = dict(inputs={"x": RNG.standard_normal((18, 32)).astype(np.float32)},
              outputs={"y": ((H, 1), pl.FP32)})
    with pytest.raises(OutOfBounds) as seq:
        run_kernel(kernel, lanes=False, **kw)
    with pytest.raises(OutOfBounds) as lanes:
        run_kernel(kernel, **kw)
    assert str(lanes.value) == str(seq.value) and "15:19" in str(seq.value)


def test_lanes_values() -> None:
    h = Lanes(np.arange(4))
    assert repr(h * 16 + 3) == "3..51 step 16"
    assert h - h == 0 and isinstance(h - h, int)  # equal in every lane: one number
    assert operator_index(Lanes(np.array([5, 5, 5]))) == 5
    with pytest.raises(LaneEscape):
        operator_index(h)
    with pytest.raises(LaneEscape):
        bool(h == 1)
    assert bool(h < 4)


def operator_index(x):  # noqa: ANN001, ANN201
    import operator

    return operator.index(x)


def test_every_iteration_writing_one_place_runs_one_at_a_time() -> None:
    # the ready flag every block sets: unordered writes of the same bits (a race warning)
    def kernel(x, y, ready):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
                pl.write(ready, [0], 1)

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x},
               outputs={"y": ((H, 32), pl.FP32), "ready": ((1,), pl.INT32)})
    assert "every iteration writes ready[0]" in one_at_a_time(run)
    (race,) = run.by_check("race")
    assert race.severity == "warning" and "same bits" in race.message


@pl.jit
def blocks_with_form(x, y):  # noqa: ANN001, ANN201
    with pl.spmd(H, name_hint="blocks"):
        b = pl.tile.get_block_idx()
        t = pl.exp(x[b * 2:b * 2 + 2, :])
        y[b * 2:b * 2 + 2, :] = pl.row_expand_div(t, pl.row_sum(t))
    return y


def test_spmd_blocks_run_in_lanes() -> None:
    def for_form(x, y):  # noqa: ANN001
        for b in pl.spmd(H, name_hint="blocks"):
            t = pl.exp(x[b * 2:b * 2 + 2, :])
            y[b * 2:b * 2 + 2, :] = pl.row_expand_div(t, pl.row_sum(t))

    x = RNG.standard_normal((2 * H, 32)).astype(np.float32)
    kw = dict(inputs={"x": x}, outputs={"y": ((2 * H, 32), pl.FP32)})
    for kernel in (for_form, blocks_with_form):
        run = both(kernel, **kw)
        assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
        assert run.ok, run.summary()
        t = np.exp(x.astype(np.float64)).astype(np.float32)  # float64 exp, rounded once
        np.testing.assert_array_equal(  # row sum in float64, rounded once; an fp32 divide
            run.outputs["y"], t / t.astype(np.float64).sum(axis=1, keepdims=True).astype(np.float32))
        row = run.budget.get("blocks", "Vec")  # each block is its own core: one block's tiles
        assert row is not None and "FP32[2,32]" in str(row.top) and "[4," not in str(row.top)


def test_a_read_every_iteration_makes_of_what_one_writes_is_a_race() -> None:
    # every iteration reads row 0 of buf; iteration 0 writes it (one record stands for the
    # reads of all lanes; any one iteration's write meets it)
    def kernel(x, buf, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                head = buf[0:1, :]
                buf[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
                y[h:h + 1, :] = pl.add(head, 1.0)

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((H, 32), pl.FP32)},
               inouts={"buf": (np.zeros((H, 32), np.float32), None)})
    assert "race" in one_at_a_time(run)
    (race,) = run.by_check("race")
    assert race.severity == "fail" and "buf[0, 0:32]" in race.message


def test_a_long_loop_runs_in_passes_of_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowering.tile import core

    monkeypatch.setattr(core, "FIRST_PASS_LANES", 3)  # H = 4: a pass of 3 lanes, then one of 1
    run = both(attend, **attend_args())
    assert list(run.lane_loops.values()) == ["lanes"]
    passes: list = []
    real = core._passes
    monkeypatch.setattr(core, "_passes", lambda rt, idx: (passes.append(str(v)) or v
                                                          for v in real(rt, idx)))
    # a first pass of one iteration shows no tile: the next takes every iteration left
    monkeypatch.setattr(core, "FIRST_PASS_LANES", 1)
    run_kernel(attend, **attend_args())
    assert passes == ["0", "1..3"], passes
    # passes as small as their largest tile asks, two lanes at least
    passes.clear()
    monkeypatch.setattr(core, "FIRST_PASS_LANES", 2)
    monkeypatch.setattr(core, "LANE_TILE_BYTES", 1)
    run_kernel(attend, **attend_args())
    assert passes == ["[0, 1]", "[2, 3]"], passes


def test_every_iteration_writing_one_shared_tile_is_the_race_it_is() -> None:
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="s"):
            acc = pl.full([1, 32], dtype=pl.FP32, value=0.0)
            for _h in pl.parallel(H):
                acc[0:1, :] = pl.mul(x[0:1, :], 2.0)  # the same tile, every iteration
            y[0:1, :] = acc

    x, run = rows_both(kernel, (1, 32))
    np.testing.assert_array_equal(run.outputs["y"], x[:1] * 2)
    assert "every iteration writes the tile" in one_at_a_time(run)
    (race,) = run.by_check("race")
    assert race.severity == "fail" and "on-chip tile" in race.message


def test_a_value_carried_by_name_runs_one_at_a_time() -> None:
    # an in-core pl.parallel may rebind a tile (pypto makes it a carried value): a running sum
    def kernel(x, y):  # noqa: ANN001
        with pl.at(level=CG, name_hint="s"):
            acc = pl.full([1, 32], dtype=pl.FP32, value=0.0)
            for h in pl.parallel(H):
                acc = pl.add(acc, x[h:h + 1, :])
                y[h:h + 1, :] = acc

    x, run = rows_both(kernel)
    assert "'acc' is read before the body assigns it" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], np.cumsum(x, axis=0, dtype=np.float32))


def test_valid_shapes_in_lanes() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                t = pl.slice(x, [2, 32], [h * 2, 0], valid_shape=[2, 16])  # per lane, padded
                t = pl.set_validshape(pl.mul(t, 2.0), 2, 8)
                y[h * 2:h * 2 + 2, 0:1] = pl.row_sum(pl.reshape(t, [2, 32]))

    x = RNG.standard_normal((2 * H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((2 * H, 1), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    np.testing.assert_array_equal(run.outputs["y"][:, 0],
                                  (x[:, :8] * 2).astype(np.float64).sum(axis=1).astype(np.float32))


def test_a_valid_shape_per_iteration_runs_one_at_a_time() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                n = 8 * (h + 1)
                t = pl.slice(x, [1, 32], [h, 0], valid_shape=[1, n])
                y[h:h + 1, 0:1] = pl.row_sum(t)

    x, run = rows_both(kernel, (H, 1))
    assert "a valid shape that differs" in one_at_a_time(run)
    n = 8 * np.arange(1, H + 1)
    np.testing.assert_array_equal(run.outputs["y"][:, 0], [
        np.float32(x[h, :n[h]].astype(np.float64).sum()) for h in range(H)])


def test_a_shared_value_written_into_every_lanes_tile() -> None:
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                t = pl.mul(x[h:h + 1, :], 2.0)  # one per lane
                t[0:1, 0:16] = pl.full([1, 16], dtype=pl.FP32, value=1.0)  # one for all
                y[h:h + 1, :] = t

    x, run = rows_both(kernel)
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    want = x * 2
    want[:, :16] = 1
    np.testing.assert_array_equal(run.outputs["y"], want)


# -- loops that branch on the index: run in lanes by runs of iterations that agree ------------

T = 8  # rows of a token tile


def _record_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from lowering.tile import core

    passes: list[str] = []
    real = core._passes
    monkeypatch.setattr(core, "_passes", lambda rt, groups: (passes.append(str(v)) or v
                                                             for v in real(rt, groups)))
    return passes


def tail_tiles(x, y):  # noqa: ANN001, ANN201
    """pypto-lib's tail pattern: full token tiles one way, the last partial one another."""
    rows = x.shape[0]
    for t in pl.parallel((rows + T - 1) // T):
        with pl.at(level=CG, name_hint="s"):
            t0 = t * T
            valid = pl.min(T, rows - t0)
            if valid == T:
                y[t0:t0 + T, :] = pl.mul(x[t0:t0 + T, :], 2.0)
            else:
                part = pl.slice(x, [T, 32], [t0, 0], valid_shape=[valid, 32])
                pl.store(pl.mul(part, 3.0), [t0, 0], y)


def test_a_tail_tile_runs_apart_and_the_full_tiles_in_lanes(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    rows = 5 * T + 3
    passes = _record_passes(monkeypatch)
    x = RNG.standard_normal((rows, 32)).astype(np.float32)
    run = both(tail_tiles, inputs={"x": x}, outputs={"y": ((rows, 32), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    assert passes == ["0..4", "5"], passes  # the five full tiles side by side, then the tail
    np.testing.assert_array_equal(run.outputs["y"][:5 * T], x[:5 * T] * 2)
    np.testing.assert_array_equal(run.outputs["y"][5 * T:], x[5 * T:] * 3)


def test_a_branch_that_alternates_runs_one_at_a_time() -> None:
    # h % 2: runs of one iteration agree; lanes would gain nothing
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                odd = h % 2
                if odd == 1:
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 3.0)
                else:
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)

    x, run = rows_both(kernel)
    why = one_at_a_time(run)
    assert "a branch that differs across the iterations (alike over runs of 1 " in why, why
    np.testing.assert_array_equal(run.outputs["y"], x * np.array([[2], [3], [2], [3]], np.float32))


def test_a_branch_on_data_read_with_the_index_is_refused_from_the_source() -> None:
    def kernel(x, flag, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                f = pl.read(flag, [h])
                if f > 0:
                    y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
                else:
                    y[h:h + 1, :] = x[h:h + 1, :]

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    flag = np.array([1, 1, 0, 1], np.int32)
    run = both(kernel, inputs={"x": x, "flag": flag}, outputs={"y": ((H, 32), pl.FP32)})
    assert "a branch on data that differs across the iterations" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"], x * np.where(flag > 0, 2, 1)[:, None])


def _two_adds(x: np.ndarray, bump) -> np.ndarray:  # noqa: ANN001
    """numpy, in the kernels' fp32 order: for k in 0, 1: (+1 where bump(h, k)), + x[h]."""
    out = np.zeros_like(x)
    for h in range(len(x)):
        for k in range(2):
            if bump(h, k):
                out[h] += np.float32(1)
            out[h] += x[h]
    return out


def test_a_key_the_arithmetic_cannot_tell_runs_one_at_a_time() -> None:
    # the branch reads an inner loop's variable: before the loop nothing tells which
    # iterations agree, and a pass that disagreed half-way would cost a rerun
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(6):
            with pl.at(level=CG, name_hint="s"):
                acc = pl.full([1, 32], dtype=pl.FP32, value=0.0)
                for k in pl.range(2):
                    if h + k == 2:
                        acc = pl.add(acc, 1.0)
                    acc = pl.add(acc, x[h:h + 1, :])
                y[h:h + 1, :] = acc

    x = RNG.standard_normal((6, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((6, 32), pl.FP32)})
    why = one_at_a_time(run)
    assert "a branch on the index that its arithmetic before the loop cannot tell" in why, why
    np.testing.assert_array_equal(run.outputs["y"], _two_adds(x, lambda h, k: h + k == 2))


def test_pl_min_and_max_per_lane() -> None:
    assert pl.min(Lanes(np.array([3, 9])), 5).v.tolist() == [3, 5]
    assert pl.max(4, Lanes(np.array([3, 9]))).v.tolist() == [4, 9]
    both_over = pl.min(Lanes(np.array([7, 9])), 5)  # every lane agrees: a plain number
    assert both_over == 5 and type(both_over) is int


def test_an_inner_loop_whose_bounds_differ_per_lane_runs_in_lanes() -> None:
    # hc_post's `for t in pl.pipeline(t0, t0 + T_TILE)`: the bounds per lane, one trip count
    def kernel(x, y):  # noqa: ANN001
        for b in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                t0 = b * 3
                for t in pl.range(t0, t0 + 3):
                    y[t:t + 1, :] = pl.add(pl.mul(x[t:t + 1, :], 2.0), pl.cast(t, pl.FP32))

    x = RNG.standard_normal((3 * H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((3 * H, 32), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    np.testing.assert_array_equal(run.outputs["y"],
                                  x * 2 + np.arange(3 * H, dtype=np.float32)[:, None])


def test_an_inner_trip_count_per_lane_runs_one_at_a_time() -> None:
    def kernel(x, y):  # noqa: ANN001
        for b in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                acc = pl.full([1, 32], dtype=pl.FP32, value=0.0)
                for t in pl.range(b * 2, b * 3 + 1):
                    acc = pl.add(acc, x[t:t + 1, :])
                y[b:b + 1, :] = acc

    x = RNG.standard_normal((3 * H + 1, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((H, 32), pl.FP32)})
    assert "a trip count that differs across the iterations" in one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["y"],
                                  _running_sums(x, [range(b * 2, b * 3 + 1) for b in range(H)]))


def test_an_item_of_a_pl_array_set_per_iteration_runs_one_at_a_time() -> None:
    # decode_o_proj's `proj_b_tids[local_group] = proj_b_tid`: once for N iterations in lanes
    def kernel(x, y, n):  # noqa: ANN001
        seen = pl.array.create(H, pl.INT32)
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="s"):
                y[h:h + 1, :] = pl.mul(x[h:h + 1, :], 2.0)
            seen[h] = h + 10
        for h in pl.range(H):
            pl.write(n, [h], seen[h])

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x}, outputs={"y": ((H, 32), pl.FP32), "n": ((H,), pl.INT32)})
    assert "line " in one_at_a_time(run) and "an item of 'seen' from outside the body" in \
        one_at_a_time(run)
    np.testing.assert_array_equal(run.outputs["n"], np.arange(H) + 10)
    np.testing.assert_array_equal(run.outputs["y"], x * 2)


def test_findings_of_what_runs_once_for_all_lanes_name_the_first_iteration() -> None:
    # the scope is entered once for the lanes and the full runs once: their budget finding
    # is the one-at-a-time run's, found first in iteration h=0
    def kernel(x, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="big"):
                wide = pl.full([48, 1024], dtype=pl.FP32, value=1.0)  # 192 KiB of Vec
                y[h:h + 1, :] = pl.add(x[h:h + 1, :], wide[0:1, 0:32])

    x, run = rows_both(kernel)
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    (over,) = run.by_check("budget")
    assert "scope 'big', h=0: Vec needs" in over.message, over.message
    np.testing.assert_array_equal(run.outputs["y"], x + 1)


def test_split_k_products_in_lanes() -> None:
    # per-lane operands (x rows and weight columns at per-lane offsets), matmul then
    # matmul_acc: a stacked product, one 2-D BLAS product per lane
    def kernel(x, w, y):  # noqa: ANN001
        for h in pl.parallel(H):
            with pl.at(level=CG, name_hint="mm"):
                acc = pl.matmul(x[h * 16:(h + 1) * 16, 0:32], w[0:32, h * 8:(h + 1) * 8],
                                out_dtype=pl.FP32)
                acc = pl.matmul_acc(acc, x[h * 16:(h + 1) * 16, 32:64], w[32:64, h * 8:(h + 1) * 8])
                y[h * 16:(h + 1) * 16, 0:8] = acc

    ints = np.random.default_rng(3).integers(-4, 5, (16 * H + 64, 64))
    x = ints[:16 * H].astype(BF16)
    w = ints[16 * H:16 * H + 64, :8 * H].astype(BF16)
    run = both(kernel, inputs={"x": x, "w": w}, outputs={"y": ((16 * H, 8), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    xf, wf = x.astype(np.float64), w.astype(np.float64)  # small integers: every sum exact
    for h in range(H):
        np.testing.assert_array_equal(run.outputs["y"][h * 16:(h + 1) * 16],
                                      xf[h * 16:(h + 1) * 16] @ wf[:, h * 8:(h + 1) * 8])


def test_a_stack_of_products_is_each_products_blas_call() -> None:
    from lowering.backends.numpy_backend import NumpyBackend
    from lowering.tile.lanes import lane_array

    bk = NumpyBackend()
    a = lane_array(RNG.standard_normal((5, 16, 300)).astype(np.float32))
    b = RNG.standard_normal((300, 24)).astype(np.float32)
    c = bk.matmul(a, b, "FP32")
    assert type(c) is type(a) and c.shape == (5, 16, 24)  # still the lanes
    for i in range(5):
        assert c[i].tobytes() == bk.matmul(np.asarray(a[i]), b, "FP32").tobytes()


def test_a_tile_made_in_the_body_and_written_per_lane_is_each_iterations_own() -> None:
    # pypto-lib's greedy_sample: a block makes a row, writes its own number into it and stores
    # it; in lanes the one tile made for all must become one per iteration first
    def kernel(x, y, z):  # noqa: ANN001
        for h in pl.spmd(H):
            row = pl.create_tensor([1, 32], dtype=pl.FP32)  # in the block's scope: a tile
            row[:, :] = pl.full([1, 32], dtype=pl.FP32, value=0.0)
            pl.write(row, [0, 0], pl.read(x, [h, 0]))  # a number per lane
            y[h:h + 1, :] = row
            grid = pl.full([H, 32], dtype=pl.FP32, value=0.0)
            grid[h:h + 1, :] = x[h:h + 1, :]  # a window per lane
            z[h:h + 1, :] = pl.col_sum(grid)  # its own row only: the others are zero

    x = RNG.standard_normal((H, 32)).astype(np.float32)
    run = both(kernel, inputs={"x": x},
               outputs={"y": ((H, 32), pl.FP32), "z": ((H, 32), pl.FP32)})
    assert list(run.lane_loops.values()) == ["lanes"], run.lane_loops
    want = np.zeros((H, 32), np.float32)
    want[:, 0] = x[:, 0]
    np.testing.assert_array_equal(run.outputs["y"], want)
    np.testing.assert_array_equal(run.outputs["z"], x)


def test_a_lane_value_kept_past_its_loop_is_seen_in_every_argument_kind() -> None:
    from lowering.tile import core, ops_lanes
    from lowering.tile.dtypes import as_dtype
    from lowering.tile.lanes import lane_array

    fp32 = as_dtype("FP32")
    plain = core.Tile(np.zeros((2, 4), np.float32), fp32, None, 1, ("k.py", 1))
    laned = core.Tile(lane_array(np.zeros((3, 2, 4), np.float32)), fp32, None, 2, ("k.py", 2))
    per = Lanes(np.array([1, 2, 3]))
    ops_lanes.check_outside("ok", (plain, [2, 4], (0, 8), None, 1.5, "s"), {"v": [1, 2]})
    for args, kwargs in [((laned,), {}), ((plain, [0, per]), {}), ((plain, [[per]]), {}),
                         ((slice(per, 9),), {}), ((plain,), {"valid_shape": [per, 4]}),
                         (((laned, 1),), {})]:
        with pytest.raises(LaneEscape, match="after the loop"):
            ops_lanes.check_outside("op", args, kwargs)
