"""Control flow, placement, task ids, annotations and dynamic dims of the emulated ``pl``:
each construct with a known answer (numpy written here), and the check it carries planted."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lowering import pypto_compat
from lowering.tile import pl, run_kernel
from lowering.tile.control import TaskId
from lowering.tile.core import DslError, DynamicDimMismatch, DynamicDimUnbound
from lowering.tile.findings import KernelDefect

RNG_SEED = 11  # RNG restarts from it for every test (conftest.py)
RNG = np.random.default_rng(RNG_SEED)
CG = pl.Level.CORE_GROUP


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def races(run) -> list[str]:  # noqa: ANN001
    return [f.message for f in run.by_check("race")]


# -- dynamic dims ----------------------------------------------------------------------------------

T = pl.dynamic("T")


@pl.jit
def scale_rows_dyn(x: pl.Tensor[[T, 32], pl.FP32], y: pl.Out[pl.Tensor[[T, 32], pl.FP32]]):
    for r in pl.spmd(T // 2, name_hint="rows"):  # a pl.dynamic dim is an int once bound
        y[2 * r:2 * r + 2, :] = pl.mul(x[2 * r:2 * r + 2, :], 3.0)


def test_dynamic_dim_binds_from_annotations_and_is_a_value() -> None:
    x = f32(6, 32)
    r = run_kernel(scale_rows_dyn, inputs={"x": x}, outputs={"y": ((6, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(3))


def test_dynamic_dim_mismatch_names_both_tensors() -> None:
    with pytest.raises(DynamicDimMismatch) as e:
        run_kernel(scale_rows_dyn, inputs={"x": f32(6, 32)}, outputs={"y": ((4, 32), pl.FP32)})
    msg = str(e.value)
    assert "dynamic dim T" in msg and "'x'" in msg and "'y'" in msg and "6" in msg and "4" in msg


@pl.jit
def bound_by_call(a: pl.Tensor, b: pl.Out[pl.Tensor]):
    M = pl.dynamic("M")
    a.bind_dynamic(0, M)
    b.bind_dynamic(0, M)
    with pl.at(level=CG, name_hint="copy"):
        for i in pl.range(M):
            b[i:i + 1, :] = pl.add(a[i:i + 1, :], 1.0)


def test_bind_dynamic_consistent_and_mismatch() -> None:
    a = f32(3, 32)
    r = run_kernel(bound_by_call, inputs={"a": a}, outputs={"b": ((3, 32), pl.FP32)})
    assert r.ok, r.summary()
    np.testing.assert_array_equal(r.outputs["b"], a + np.float32(1))
    with pytest.raises(DynamicDimMismatch, match=r"tensor 'b'.*size 5 but dim 0 of tensor 'a'"):
        run_kernel(bound_by_call, inputs={"a": a}, outputs={"b": ((5, 32), pl.FP32)})
    assert issubclass(DynamicDimMismatch, KernelDefect)


def test_dynamic_dim_used_before_binding_raises() -> None:
    N = pl.dynamic("N_UNBOUND")

    def kernel(x):  # noqa: ANN001
        for _ in pl.range(N):
            pass

    with pytest.raises(DynamicDimUnbound, match="N_UNBOUND"):
        run_kernel(kernel, inputs={"x": f32(2, 8)}, outputs={})


def test_annotation_shape_and_dtype_are_checked() -> None:
    @pl.jit
    def k(x: pl.Tensor[[4, 32], pl.FP32], n: pl.Scalar[pl.INT32], y: pl.Out[pl.Tensor[[4, 32],
                                                                                     pl.FP32]]):
        with pl.at(level=CG, name_hint="c"):
            y[:, :] = pl.mul(x[:, :], float(n))

    x = f32(4, 32)
    r = run_kernel(k, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)}, kwargs={"n": 2})
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(2))
    with pytest.raises(DslError, match="parameter 'x' of k: expected pl.Tensor\\[\\[4, 32\\]"):
        run_kernel(k, inputs={"x": f32(5, 32)}, outputs={"y": ((4, 32), pl.FP32)},
                   kwargs={"n": 2})
    with pytest.raises(DslError, match="parameter 'x' of k: expected dtype FP32"):
        run_kernel(k, inputs={"x": x.astype(np.float16)}, outputs={"y": ((4, 32), pl.FP32)},
                   kwargs={"n": 2})
    with pytest.raises(DslError, match="parameter 'n' of k: expected a scalar"):
        run_kernel(k, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)}, kwargs={"n": x})


# -- pl.spmd ---------------------------------------------------------------------------------------


@pl.jit
def spmd_with_form(x, y, *, rows: int):
    with pl.spmd(x.shape[0] // rows, name_hint="blocks", allow_early_resolve=True,
                 sync_start=False, optimizations=[pl.split(pl.SplitMode.NONE)]) as tid:
        b = pl.tile.get_block_idx()
        assert b == pl.get_block_idx() == pl.tensor.get_block_idx()
        n = pl.tile.get_block_num()
        y[b * rows:(b + 1) * rows, :] = pl.add(pl.mul(x[b * rows:(b + 1) * rows, :], float(b)),
                                               float(n))
    return tid


def test_spmd_with_form_runs_every_block_and_binds_a_task_id() -> None:
    x = f32(8, 32)
    got = {}

    def kernel(x, y):  # noqa: ANN001
        got["tid"] = spmd_with_form(x, y, rows=2)

    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((8, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    want = x * np.repeat(np.arange(4, dtype=np.float32), 2)[:, None] + np.float32(4)
    np.testing.assert_array_equal(r.outputs["y"], want)
    assert isinstance(got["tid"], TaskId)
    # each block is an in-core scope named by name_hint: its tiles are budgeted
    assert r.budget.get("blocks", "Vec").shape["a2a3"] > 0


def test_spmd_loop_form_budgets_blocks_without_pl_at() -> None:
    def kernel(x, y):  # noqa: ANN001
        for i in pl.spmd(2, name_hint="big_rows"):
            y[i * 192:(i + 1) * 192, :] = pl.mul(x[i * 192:(i + 1) * 192, :], 2.0)

    x = f32(384, 256)  # [192, 256] fp32 = 192 KiB per tile: over a2a3's 184 KiB Vec
    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((384, 256), pl.FP32)})
    [f] = r.by_check("budget")
    assert f.scope == "big_rows" and "Vec needs 196608 B" in f.message
    ok = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((384, 256), pl.FP32)},
                    platform="a5")
    assert ok.ok and not ok.findings, ok.summary()
    np.testing.assert_array_equal(ok.outputs["y"], x * 2)


def test_spmd_blocks_are_race_checked() -> None:
    def kernel(x, y, *, bug: bool):  # noqa: ANN001
        for i in pl.spmd(4, name_hint="rows"):
            dst = 0 if bug else i
            y[dst:dst + 1, :] = x[i:i + 1, :]

    x = f32(4, 32)
    bad = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                     kwargs={"bug": True})
    [msg] = races(bad)
    assert "pl.spmd loop 'i'" in msg and "i=0 writes y[0, 0:32]" in msg and "i=1" in msg
    good = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                      kwargs={"bug": False})
    assert good.ok and not good.findings, good.summary()


def test_spmd_blocks_setting_one_flag_to_the_same_bits_is_a_warning_not_a_race() -> None:
    """Several blocks store one ready flag unordered (pypto-lib's qwen3_14b decode_layer_a8w8
    sets kv_ready[b] from every KV head's block): with the same bits the outcome is one, so
    the finding is a warning; with bits that differ by block it is a race, a FAIL."""
    def kernel(x, ready, *, per_block: bool):  # noqa: ANN001
        for i in pl.spmd(4, name_hint="heads"):
            pl.tensor.write(ready, [i // 2], (i + 1) if per_block else 1)

    x = f32(4, 32)
    same = run_kernel(kernel, inputs={"x": x}, outputs={"ready": ((2,), pl.INT32)},
                      kwargs={"per_block": False})
    assert same.ok, same.summary()
    [w] = [f for f in same.findings if f.check == "race"]
    assert w.severity == "warning" and "unordered writes of the same bits" in w.message
    assert "i=0 writes ready[0]" in w.message and "i=1" in w.message
    np.testing.assert_array_equal(same.outputs["ready"], [1, 1])
    differ = run_kernel(kernel, inputs={"x": x}, outputs={"ready": ((2,), pl.INT32)},
                        kwargs={"per_block": True})
    [msg] = races(differ)
    assert not differ.ok and "same bits" not in msg and "i=0 writes ready[0]" in msg


def test_spmd_block_reusing_a_previous_blocks_tile_is_a_race() -> None:
    def kernel(x, y, *, carry: bool):  # noqa: ANN001
        acc = None
        for i in pl.spmd(3, name_hint="carry"):
            row = x[i:i + 1, :]
            acc = pl.add(acc, row) if (carry and acc is not None) else row
            y[i:i + 1, :] = acc

    x = f32(3, 32)
    bad = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)},
                     kwargs={"carry": True})
    msgs = races(bad)
    assert msgs and all("by an earlier iteration of pl.spmd loop 'i'" in m for m in msgs)
    assert "made at test_pl_scopes.py" in msgs[0] and "used in iteration i=1" in msgs[0]
    good = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)},
                      kwargs={"carry": False})
    assert good.ok and not good.findings, good.summary()


def test_spmd_checks_and_unmodelled_keywords() -> None:
    def deps_in_loop_form(x):  # noqa: ANN001
        for _ in pl.spmd(2, deps=[pl.system.task_dummy(deps=[])]):
            pass

    with pytest.raises(DslError, match="only in the `with pl.spmd"):
        run_kernel(deps_in_loop_form, inputs={"x": f32(2, 8)}, outputs={})

    def predicate(x):  # noqa: ANN001
        pl.spmd(2, predicate=True)

    with pytest.raises(NotImplementedError, match="predicate"):
        run_kernel(predicate, inputs={"x": f32(2, 8)}, outputs={})

    def undecorated_with(x):  # noqa: ANN001
        with pl.spmd(2):
            pass

    with pytest.raises(NotImplementedError, match="decorated with @pl.jit"):
        run_kernel(undecorated_with, inputs={"x": f32(2, 8)}, outputs={})


@pl.jit.inline
def with_return_inside(x):
    with pl.spmd(2):
        return x


def test_spmd_with_form_the_rewrite_refuses_says_why() -> None:
    with pytest.raises(NotImplementedError, match="`return` in its body"):
        run_kernel(lambda x: with_return_inside(x), inputs={"x": f32(2, 8)}, outputs={})


@pl.jit
def spmd_submit_kernel(x, y):
    @pl.jit.incore
    def one_row(x, y):
        b = pl.tile.get_block_idx()
        y[b:b + 1, :] = pl.neg(x[b:b + 1, :])
        return y

    out, tid = pl.spmd_submit(one_row, x, pl.no_dep(y), core_num=x.shape[0])
    assert out is y and isinstance(tid, TaskId)


def test_spmd_submit_runs_the_kernel_per_block() -> None:
    x = f32(3, 32)
    r = run_kernel(spmd_submit_kernel, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], -x)
    assert r.budget.get("one_row", "Vec") is not None


@pl.jit.incore
def negate_row(x, y):
    b = pl.tile.get_block_idx()
    y[b:b + 1, :] = pl.neg(x[b:b + 1, :])
    return y


@pl.jit
def spmd_submit_self_kernel(x, y):
    if False:  # pypto-lib's idiom: a plain call that makes the JIT specialise the kernel
        negate_row(x, y)
    out, tid = pl.spmd_submit(self.negate_row, x, pl.no_dep(y),  # noqa: F821 - the program
                              core_num=x.shape[0])
    return out


@pl.jit
def spmd_submit_self_unknown(x, y):
    pl.spmd_submit(self.no_such_kernel, x, y, core_num=2)  # noqa: F821


def test_self_in_a_jit_body_is_its_program() -> None:
    """``pl.spmd_submit(self.kernel, ...)`` in a ``@pl.jit`` function (pypto-lib HEAD's
    deepseek_v4_pro/moe.py): ``self`` is the program pypto builds, its methods the module's
    kernels; a name it lacks says so."""
    x = f32(3, 32)
    r = run_kernel(spmd_submit_self_kernel, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], -x)
    with pytest.raises(AttributeError, match="self.no_such_kernel in @pl.jit "
                                             "spmd_submit_self_unknown: its module has no"):
        run_kernel(spmd_submit_self_unknown, inputs={"x": x}, outputs={"y": ((3, 32), pl.FP32)})


def test_a_jit_kernel_names_its_parameters_in_order() -> None:
    """pypto's ``JITFunction._param_names()`` (mtp decode_fwd_mtp.py orders its specs by it)."""
    assert spmd_submit_self_kernel._param_names() == ["x", "y"]
    assert exchange._param_names() == ["x", "part", "y", "barrier", "extra"]


# -- pl.system.syncall -------------------------------------------------------------------------------


@pl.jit
def exchange(x, part, y, *, barrier: bool, extra: bool):
    for c in pl.spmd(2, name_hint="swap", sync_start=True):
        scale = 2.0
        part[c:c + 1, :] = pl.mul(x[c:c + 1, :], scale)
        if barrier:
            pl.system.syncall(core_type="mix")
        if extra and c == 0:
            pl.system.syncall(core_type="mix")
        other = 1 - c
        scale = 10.0
        y[c:c + 1, :] = pl.add(part[other:other + 1, :], pl.mul(part[c:c + 1, :], scale))


def test_syncall_orders_the_phases_of_all_blocks() -> None:
    x = f32(2, 32)
    kw = {"inputs": {"x": x}, "outputs": {"part": ((2, 32), pl.FP32), "y": ((2, 32), pl.FP32)}}
    r = run_kernel(exchange, kwargs={"barrier": True, "extra": False}, **kw)
    assert r.ok and not r.findings, r.summary()
    p = x * np.float32(2)
    np.testing.assert_array_equal(r.outputs["y"], p[::-1] + p * np.float32(10))
    shuffled = run_kernel(exchange, kwargs={"barrier": True, "extra": False},
                          permute_parallel=True, seed=5, **kw)
    np.testing.assert_array_equal(shuffled.outputs["y"], r.outputs["y"])
    # no barrier: block 0 reads part[1] that block 1 writes -> a race
    bad = run_kernel(exchange, kwargs={"barrier": False, "extra": False}, **kw)
    [msg] = races(bad)
    assert "tensor 'part'" in msg and "c=0 writes part[0, 0:32]" in msg
    assert "c=1 reads part[0, 0:32]" in msg
    # a barrier only some blocks reach: the device hangs
    with pytest.raises(DslError, match=r"blocks \[0\] wait at pl.system.syncall #2 but blocks "
                                        r"\[1\] have ended"):
        run_kernel(exchange, kwargs={"barrier": True, "extra": True}, **kw)


def test_syncall_outside_a_rewritten_spmd_body_raises() -> None:
    def kernel(x):  # noqa: ANN001
        for _ in pl.spmd(2):
            pl.system.syncall()

    with pytest.raises(NotImplementedError, match="pl.system.syncall"):
        run_kernel(kernel, inputs={"x": f32(2, 8)}, outputs={})
    with pytest.raises(NotImplementedError, match="soft"):
        run_kernel(lambda x: pl.system.syncall(mode="soft"), inputs={"x": f32(2, 8)},
                   outputs={})


# -- pl.at, scopes, hints, task ids --------------------------------------------------------------------


@pl.jit(auto_scope=False)
def ordered(x, y, w):
    tids = pl.array.create(2, pl.TASK_ID)
    with pl.scope():
        with pl.at(level=CG, name_hint="first", deps=[None], allow_early_resolve=True,
                   no_dep_args=[y], optimizations=[pl.cross_core_slot(slot_num=4)]) as t0:
            y[:, :] = pl.mul(x[:, :], 2.0)
        tids[0] = t0
    gate = pl.system.task_dummy(deps=[tids, None])
    with pl.manual_scope():
        with pl.cluster():
            with pl.at(level=CG, name_hint="second", deps=[gate]) as t1:
                w[:, :] = pl.add(y[:, :], 1.0)
    tids[1] = t1
    return finish(tids[1])


@pl.jit.inline
def finish(tid: pl.Scalar[pl.TASK_ID]):
    return tid


def test_scopes_and_task_ids_run_in_program_order() -> None:
    x = f32(4, 32)
    r = run_kernel(ordered, inputs={"x": x},
                   outputs={"y": ((4, 32), pl.FP32), "w": ((4, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["w"], x * 2 + 1)


def test_runtime_scope_rules() -> None:
    @pl.jit
    def auto_in_auto_scope_fn(x):  # noqa: ANN001
        with pl.scope():
            pass

    with pytest.raises(DslError, match="auto_scope=False"):
        run_kernel(auto_in_auto_scope_fn, inputs={"x": f32(2, 8)}, outputs={})

    @pl.jit(auto_scope=False)
    def nested_manual(x):  # noqa: ANN001
        with pl.manual_scope(), pl.manual_scope():
            pass

    with pytest.raises(DslError, match="nested"):
        run_kernel(nested_manual, inputs={"x": f32(2, 8)}, outputs={})

    @pl.jit(auto_scope=False)
    def scope_in_core(x):  # noqa: ANN001
        with pl.at(level=CG, name_hint="k"), pl.scope():
            pass

    with pytest.raises(DslError, match="in-core scope 'k'"):
        run_kernel(scope_in_core, inputs={"x": f32(2, 8)}, outputs={})

    with pytest.raises(TypeError, match="auto_scope"):
        pl.jit.incore(auto_scope=False)
    with pytest.raises(DslError, match="valid identifier"):
        run_kernel(lambda x: pl.at(level=CG, name_hint="not ok"), inputs={"x": f32(2, 8)},
                   outputs={})
    with pytest.raises(ValueError, match="slot_num"):
        pl.cross_core_slot(slot_num=0)


def test_task_id_parameters_are_checked() -> None:
    with pytest.raises(DslError, match="expected a task id"):
        run_kernel(lambda x: finish(3), inputs={"x": f32(2, 8)}, outputs={})


def test_incore_function_is_its_own_scope_and_inline_runs_in_the_callers() -> None:
    @pl.jit.incore
    def k_incore(x, y):  # noqa: ANN001
        y[:, :] = pl.exp(x[:, :])

    @pl.jit.inline
    def k_inline(x, y):  # noqa: ANN001
        y[:, :] = pl.neg(x[:, :])

    @pl.jit
    def entry(x, y, z):  # noqa: ANN001
        k_incore(x, y)
        with pl.at(level=CG, name_hint="outer"):
            k_inline(x, z)

    x = f32(4, 32)
    r = run_kernel(entry, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32),
                                                    "z": ((4, 32), pl.FP32)})
    assert r.ok, r.summary()
    assert r.budget.get("k_incore", "Vec") is not None and r.budget.get("outer", "Vec")
    assert r.budget.get("k_inline", "Vec") is None
    np.testing.assert_array_equal(r.outputs["z"], -x)


def test_tiles_outside_every_in_core_scope_are_budgeted() -> None:
    def kernel(x, y):  # noqa: ANN001
        y[:, :] = pl.mul(x[:, :], 2.0)

    r = run_kernel(kernel, inputs={"x": f32(4, 32)}, outputs={"y": ((4, 32), pl.FP32)})
    assert r.budget.get("(outside in-core scopes)", "Vec").shape["a2a3"] == 512


@pl.jit
def scale_node(buf: pl.Tensor[[2, 8, 256], pl.FP32], y: pl.Out[pl.Tensor[[8, 256], pl.FP32]]):
    win = pl.slice(buf, [1, 8, 256], [1, 0, 0])  # GM views outside every scope: no tile
    flat = pl.reshape(win, [8, 256])
    for c in pl.parallel(0, 256, 64):
        with pl.at(level=CG, name_hint="scale"):
            y[:, c:c + 64] = pl.mul(pl.slice(flat, [8, 64], [0, c]), 2.0)


def test_gm_slice_and_reshape_outside_scopes_are_views_not_tiles() -> None:
    """pypto keeps ``tensor.slice`` / ``tensor.reshape`` outside an in-core scope as GM views
    (a 512 KiB window of a V3.2 ``combine_buf`` is not an on-chip tile): nothing is budgeted
    outside, each scope budgets only the window it loads."""
    buf = f32(2, 8, 256)
    r = run_kernel(scale_node, inputs={"buf": buf}, outputs={"y": ((8, 256), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], buf[1] * np.float32(2))
    assert r.budget.get("(outside in-core scopes)", "Vec") is None
    # the [8, 64] load, its buffer reused by the product (same shape and dtype): not [8, 256]
    assert r.budget.get("scale", "Vec").shape["a2a3"] == 8 * 64 * 4


def _store_through_view(*, rows: int, same_cols: bool):
    @pl.jit
    def kernel(x: pl.Tensor[[8, 256], pl.FP32], y: pl.Out[pl.Tensor[[3, 8, 256], pl.FP32]]):
        for i in pl.parallel(rows):
            view = pl.reshape(y[1], [2, 4, 256])  # int index drops the axis; then a reshape
            c = 0 if same_cols else 64 * i
            with pl.at(level=CG, name_hint="put"):
                view[1, :, c:c + 64] = pl.add(x[4:8, c:c + 64], 1.0)
    return kernel


def test_stores_through_gm_views_land_in_the_base_and_are_checked_there() -> None:
    """A store through a window + reshape view writes the base tensor's elements (y[1, 4:8]);
    coverage, and the race between two iterations storing one box through their own views,
    are named in the base's coordinates."""
    x = f32(8, 256)
    outs = {"y": ((3, 8, 256), pl.FP32)}
    r = run_kernel(_store_through_view(rows=4, same_cols=False), inputs={"x": x}, outputs=outs)
    np.testing.assert_array_equal(r.outputs["y"][1, 4:8], x[4:8] + np.float32(1))
    assert np.isnan(r.outputs["y"][1, :4]).all() and np.isnan(r.outputs["y"][0]).all()
    assert not races(r)
    cov = " ".join(f.message for f in r.by_check("coverage"))
    assert "(5120 elements)" in cov, cov  # 3·8·256 less the 4·256 stored through the view
    r = run_kernel(_store_through_view(rows=2, same_cols=True), inputs={"x": x}, outputs=outs)
    assert races(r) and "overlap y[1, 4:8, 0:64]" in races(r)[0], races(r)


# -- split_aiv ---------------------------------------------------------------------------------------


def test_split_aiv_none_runs_both_lanes_and_checks_them() -> None:
    def kernel(x, y, *, bug: bool):  # noqa: ANN001
        with pl.at(level=CG, name_hint="lanes"):
            for lane in pl.split_aiv(2, mode=pl.SplitMode.NONE):
                assert lane == pl.tile.get_subblock_idx()
                r0 = 0 if bug else 2 * lane
                y[r0:r0 + 2, :] = pl.aiv_shard(pl.mul(x[2 * lane:2 * lane + 2, :], 5.0))

    x = f32(4, 32)
    r = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                   kwargs={"bug": False})
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(5))
    bad = run_kernel(kernel, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)},
                     kwargs={"bug": True})
    assert any("pl.split_aiv loop 'lane'" in m for m in races(bad))
    with pytest.raises(ValueError):
        pl.split_aiv(4, mode=pl.SplitMode.NONE)
    with pytest.raises(DslError, match="aiv_shard outside"):
        run_kernel(lambda x: pl.aiv_shard(x), inputs={"x": f32(2, 8)}, outputs={})


@pytest.mark.parametrize("mode", ["UP_DOWN", "LEFT_RIGHT"])
def test_split_aiv_halving_modes_hand_each_lane_its_half(mode: str) -> None:
    """``pl.aiv_shard`` in a data-parallel region is the lane's half of the cube value (rows
    for UP_DOWN, columns for LEFT_RIGHT), as pypto-lib's V4 ``lm_head.py`` stores it; a lane
    that stores its half at the other lane's place races (and leaves a half unwritten)."""
    up = mode == "UP_DOWN"

    def kernel(a, b, y, *, bug: bool):  # noqa: ANN001
        with pl.at(level=CG, name_hint="mm"):
            acc = pl.matmul(a[:, :], b[:, :], out_dtype=pl.FP32)
            for lane in pl.split_aiv(2, mode=getattr(pl.SplitMode, mode)):
                half = pl.mul(pl.aiv_shard(acc), 2.0)
                at = 0 if bug else lane
                if up:
                    y[8 * at:8 * at + 8, :] = half
                else:
                    y[:, 16 * at:16 * at + 16] = half

    a, b = f32(16, 32).astype(ml_dtypes.bfloat16), f32(32, 32).astype(ml_dtypes.bfloat16)
    want = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32) * np.float32(2)
    kw = {"inputs": {"a": a, "b": b}, "outputs": {"y": ((16, 32), pl.FP32)}}
    r = run_kernel(kernel, kwargs={"bug": False}, **kw)
    assert r.ok and not r.findings, r.summary()
    np.testing.assert_array_equal(r.outputs["y"], want)
    bad = run_kernel(kernel, kwargs={"bug": True}, **kw)
    assert races(bad) and bad.by_check("coverage"), bad.summary()
    with pytest.raises(NotImplementedError, match="aic_gather"):
        run_kernel(lambda a, b, y: [pl.aic_gather(a[:, :]) for _ in
                                    pl.split_aiv(2, mode=pl.SplitMode.UP_DOWN)],
                   kwargs={}, **kw)


# -- carried values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["range", "parallel", "pipeline"])
def test_init_values_and_yield_carry_values(kind: str) -> None:
    def kernel(x, s, m):  # noqa: ANN001
        with pl.at(level=CG, name_hint="acc"):
            s0 = pl.full([1, 32], pl.FP32, 0.0)
            m0 = pl.full([1, 32], pl.FP32, -1e30)
            it = {"range": pl.range, "parallel": pl.parallel}.get(kind)
            loop = (it(x.shape[0], init_values=(s0, m0)) if it else
                    pl.pipeline(x.shape[0], stage=2, init_values=(s0, m0)))
            for i, (acc_s, acc_m) in loop:
                row = x[i:i + 1, :]
                if i == 0:  # an if-yield before the loop's own yield is overridden by it
                    pl.yield_(row, row)
                out_s, out_m = pl.yield_(pl.add(acc_s, row), pl.maximum(acc_m, row))
            s[:, :] = out_s
            m[:, :] = out_m

    x = f32(5, 32)
    r = run_kernel(kernel, inputs={"x": x}, outputs={"s": ((1, 32), pl.FP32),
                                                     "m": ((1, 32), pl.FP32)})
    assert r.ok and not r.findings, r.summary()
    want = np.zeros(32, np.float32)
    for row in x:
        want = want + row
    np.testing.assert_array_equal(r.outputs["s"][0], want)
    np.testing.assert_array_equal(r.outputs["m"][0], x.max(axis=0))


def test_carried_values_must_be_yielded_with_one_type() -> None:
    def no_yield(x):  # noqa: ANN001
        for _i, (_a,) in pl.range(2, init_values=(0,)):
            pass

    with pytest.raises(DslError, match="without pl.yield_"):
        run_kernel(no_yield, inputs={"x": f32(2, 8)}, outputs={})

    def retyped(x):  # noqa: ANN001
        with pl.at(level=CG, name_hint="t"):
            for _i, (a,) in pl.range(2, init_values=(pl.full([1, 8], pl.FP32, 0.0),)):
                pl.yield_(pl.reshape(a, [8, 1]))

    with pytest.raises(DslError, match="changes type"):
        run_kernel(retyped, inputs={"x": f32(2, 8)}, outputs={})
    with pytest.raises(TypeError):
        pl.unroll(4, init_values=(1,))
    with pytest.raises(TypeError, match="chunk"):
        pl.parallel(4, chunk=2)


# -- arrays, constants, small forms ---------------------------------------------------------------------


def test_arrays() -> None:
    seen = {}

    def kernel(x):  # noqa: ANN001
        a = pl.array.create(3, pl.INT8)
        seen["zero"] = a[2]
        a[0] = 200  # wraps to the dtype
        seen["wrapped"] = a[0]
        b = pl.array.update_element(a, 1, 7)  # functional: a is unchanged
        seen["b1"], seen["a1"] = b[1], a[1]
        t = pl.array.create(2, pl.TASK_ID)
        seen["invalid"] = t[0]
        with pytest.raises(KernelDefect):
            a[3] = 1
        with pytest.raises(TypeError):
            t[0] = 5
        with pl.at(level=CG, name_hint="c"):
            c = pl.array.create(2, pl.INT32)
            with pytest.raises(DslError, match="read before any write"):
                c[0]  # noqa: B018
        with pytest.raises(DslError, match="extent"):
            pl.array.create(0, pl.INT32)

    run_kernel(kernel, inputs={"x": f32(2, 8)}, outputs={})
    assert seen["zero"] == 0 and seen["wrapped"] == -56 and (seen["b1"], seen["a1"]) == (7, 0)
    assert repr(seen["invalid"]) == "TaskId(invalid)"


def test_const_unroll_static_assert_prefetch() -> None:
    assert pl.const(1.1, pl.BF16) == 1.1015625 and pl.const(3, pl.INT8) == 3
    with pytest.raises(DslError):
        pl.const(300, pl.INT8)
    got = []

    def kernel(x):  # noqa: ANN001
        got.extend(pl.unroll(1, 7, 2))
        pl.static_assert(len(got) == 3, "three")
        ctx = pl.prefetch.make_context()
        ev = pl.prefetch.async_prefetch(pl.reshape(x, [1, 16]), ctx)
        assert pl.prefetch.wait(ev, pl.prefetch.session(ctx))
        with pytest.raises(DslError, match="flat"):
            pl.prefetch.async_prefetch(x, ctx)
        pl.static_assert(False, "planted")

    with pytest.raises(KernelDefect, match="planted"):
        run_kernel(kernel, inputs={"x": f32(2, 8)}, outputs={})
    assert got == [1, 3, 5]


def test_pypto_language_names() -> None:
    with pypto_compat.installed(force=True) as lang:
        assert lang.jit.host is not None and lang.Scalar[lang.TASK_ID].dtype.name == "TASK_ID"
        assert repr(lang.Array[4, lang.INT32]) == "pl.Array[4, pl.INT32]"
        assert lang.SplitMode.NONE == 0 and lang.AtomicType.Add == 1
        with pytest.raises(pypto_compat.UnsupportedAPI, match="was removed from pypto"):
            lang.auto_chunk  # noqa: B018
        with pytest.raises(pypto_compat.UnsupportedAPI, match="pl.system.bar_v"):
            lang.system.bar_v  # noqa: B018


# -- a pypto-lib style file through the harness -------------------------------------------------------


def test_v4_style_file_through_the_harness() -> None:
    pytest.importorskip("torch")
    from pathlib import Path

    from lowering.harness import FAIL, PASS, run_file

    path = Path(__file__).parent / "pypto_kernels" / "scopes" / "v4_style.py"
    ok = run_file(path)
    assert ok.verdict == PASS, ok.reason
    [case] = ok.cases
    assert case.outputs[0].ok and not [f for f in case.findings if f.severity == "fail"]
    assert any(b["scope"] == "proj_split_k" for b in case.budget)
    plain = run_file(path, env={"SCOPES_BUG": "plain"})
    assert plain.verdict == FAIL
    msgs = [f.message for f in plain.cases[0].findings if f.check == "race"]
    assert msgs and "pl.spmd loop 'block'" in msgs[0] and "tensor 'y'" in msgs[0]
    dyn = run_file(path, env={"SCOPES_BUG": "dyn"})
    assert dyn.verdict == FAIL and "DynamicDimMismatch" in dyn.reason
    assert "tensor 'y'" in dyn.reason and "tensor 'x'" in dyn.reason


def test_program_incore_function_is_a_scope() -> None:
    from lowering.pypto_compat import language as lpl

    @lpl.program
    class Prog:
        @lpl.function(type=lpl.FunctionType.InCore)
        def scale(self, x, y):  # noqa: ANN001
            y[:, :] = pl.mul(x[:, :], 4.0)

        @lpl.function(type=lpl.FunctionType.Orchestration)
        def main(self, x, y):  # noqa: ANN001
            self.scale(x, y)

    x = f32(4, 32)
    r = run_kernel(Prog().main, inputs={"x": x}, outputs={"y": ((4, 32), pl.FP32)})
    assert r.ok and r.budget.get("scale", "Vec") is not None, r.summary()
    assert r.budget.get("(outside in-core scopes)", "Vec") is None
    np.testing.assert_array_equal(r.outputs["y"], x * np.float32(4))


# -- manual scopes: dependencies only from deps= -------------------------------------------------------


@pl.jit(auto_scope=False)
def two_stage(x, mid, y, *, linked: bool):
    with pl.manual_scope():
        with pl.spmd(2, name_hint="produce") as t0:
            b = pl.tile.get_block_idx()
            mid[b:b + 1, :] = pl.mul(x[b:b + 1, :], 2.0)
        gate = pl.system.task_dummy(deps=[t0] if linked else [])
        with pl.at(level=CG, name_hint="consume", deps=[gate]):
            y[:, :] = pl.add(mid[:, :], 1.0)


def test_manual_scope_needs_a_deps_path_between_conflicting_tasks() -> None:
    x = f32(2, 32)
    kw = {"inputs": {"x": x}, "outputs": {"mid": ((2, 32), pl.FP32), "y": ((2, 32), pl.FP32)}}
    good = run_kernel(two_stage, kwargs={"linked": True}, **kw)
    assert good.ok and not good.findings, good.summary()
    np.testing.assert_array_equal(good.outputs["y"], x * 2 + 1)
    bad = run_kernel(two_stage, kwargs={"linked": False}, **kw)
    [msg] = races(bad)
    assert "task 'produce'" in msg and "writes mid[0, 0:32]" in msg
    assert "later task 'consume'" in msg and "reads mid[0:2, 0:32]" in msg and "no deps=" in msg


R = pl.dynamic("R")  # module level: annotations are strings, evaluated in the module


def test_dynamic_dims_bind_per_call_of_a_decorated_function() -> None:
    @pl.jit.inline
    def double(a: pl.Tensor[[R, 32], pl.FP32], b: pl.Tensor[[R, 32], pl.FP32]):
        with pl.at(level=CG, name_hint="d"):
            for i in pl.range(R):  # R is this call's size
                b[i:i + 1, :] = pl.mul(a[i:i + 1, :], 2.0)

    def kernel(x, y, u, v):  # noqa: ANN001
        double(x, y)  # R = 2
        double(u, v)  # R = 3: a second specialization, not a clash

    x, u = f32(2, 32), f32(3, 32)
    r = run_kernel(kernel, inputs={"x": x, "u": u},
                   outputs={"y": ((2, 32), pl.FP32), "v": ((3, 32), pl.FP32)})
    assert r.ok, r.summary()
    np.testing.assert_array_equal(r.outputs["v"], u * 2)
    with pytest.raises(DynamicDimMismatch, match="parameter 'b' of double"):  # within one call
        run_kernel(lambda x, y: double(x, y), inputs={"x": x},
                   outputs={"y": ((3, 32), pl.FP32)})
