"""Multi-device programs (``pypto.language.distributed``) on the tile emulator: our own 2- and
4-rank kernels with hand-derived answers, and planted defects (a missing notify, an
unsynchronised remote store, an order-dependent wait, two ranks writing one host element)
that the checks must name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowering.tile import distributed as pld
from lowering.tile import pl
from lowering.tile.distributed import AtomicType, NotifyOp, WaitCmp, run_host

N = 64
ADD, GE = NotifyOp.AtomicAdd, WaitCmp.Ge


def _on(r, fn, *args):
    """``fn(*args, device=r)`` as a host program writes it."""
    pld.launch(fn, args, {"device": r})


def _rows(world, seed=0):
    """Integer-valued fp32 rows (every sum below is exact)."""
    return np.random.default_rng(seed).integers(-50, 50, (world, 1, N)).astype(np.float32)


def _run(host, world, x, out_shape, **kw):
    return run_host(host, world=world, inputs={"x": x},
                    outputs={"y": (out_shape, pl.FP32)}, name="t", **kw)


def _fails(run, check="race"):
    return [f.message for f in run.findings if f.check == check and f.severity == "fail"]


# -- kernels -------------------------------------------------------------------------------------


def _barrier(sig, me, n, expected=1, skip_notify_from=None):
    for p in range(n):
        if p != me and me != skip_notify_from:
            pld.notify(sig, p, [me, 0], 1, op=ADD)
    for p in range(n):
        if p != me:
            pld.wait(sig, [p, 0], expected, cmp=GE)


def _allreduce_chip(x, y, data, sig, me, n, skip_notify_from=None):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="allreduce"):
        pl.store(pl.load(x, [0, 0], [1, N]), [0, 0], data)
        _barrier(sig, me, n, skip_notify_from=skip_notify_from)
        acc = pl.load(data, [0, 0], [1, N])
        for p in range(n):
            if p != me:
                acc = pl.add(acc, pld.remote_load(data, p, [0, 0], [1, N]))
        pl.store(acc, [0, 0], y)


def _allreduce_host(skip_notify_from=None):
    def host(x, y):
        n = pld.world_size()
        dbuf = pld.alloc_window_buffer([1, N], dtype=pl.FP32)
        sbuf = pld.alloc_window_buffer(n * 4)
        for r in pl.range(n):
            data = pld.window(dbuf, [1, N], dtype=pl.FP32)
            sig = pld.window(sbuf, [n, 1], dtype=pl.INT32)
            _on(r, _allreduce_chip, x[r], y[r], data, sig, r, n, skip_notify_from)

    return host


def _ring_chip(x, y, win, sig, me, n):
    """Put my row into the next rank's window; after the signal, my window holds the
    previous rank's row."""
    nxt = (me + 1) % n
    pld.put(win, nxt, x, chunk_rows=1, chunk_cols=16, pipeline=True)
    pld.notify(sig, nxt, [0, 0], 1, op=ADD)
    pld.wait(sig, [0, 0], 1, cmp=GE)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy_out"):
        pl.store(pl.load(win, [0, 0], [1, N]), [0, 0], y)


def _gather_chip(x, y, win, sig, me, n):
    """All-gather: my row into row ``me`` of every rank's window, barrier, copy out."""
    for p in range(n):
        pld.put(win, p, x, [me, 0], [0, 0], [1, N])
    _barrier(sig, me, n)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy_out"):
        pl.store(pl.load(win, [0, 0], [n, N]), [0, 0], y)


def _get_chip(x, y, win, sig, me, n):
    """Stage my row in my window, barrier, then TGET the previous rank's window."""
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="stage"):
        pl.store(pl.load(x, [0, 0], [1, N]), [0, 0], win)
    _barrier(sig, me, n)
    pld.get(y, (me - 1) % n, win)


def _window_host(chip, rows):
    def host(x, y):
        n = pld.world_size()
        wbuf = pld.alloc_window_buffer([rows(n), N], dtype=pl.FP32)
        sbuf = pld.alloc_window_buffer([n, 1], dtype=pl.INT32)
        for r in pl.range(n):
            win = pld.window(wbuf, [rows(n), N], dtype=pl.FP32)
            sig = pld.window(sbuf, [n, 1], dtype=pl.INT32)
            _on(r, chip, x[r], y[r], win, sig, r, n)

    return host


# -- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_allreduce_every_rank_holds_the_sum(world):
    x = _rows(world)
    run = _run(_allreduce_host(), world, x, (world, 1, N))
    assert run.ok, run.summary()
    want = np.broadcast_to(x.sum(axis=0), x.shape)  # integer-valued: exact in any order
    np.testing.assert_array_equal(run.outputs["y"], want)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_put_moves_each_row_to_the_next_rank(world):
    x = _rows(world, 1)
    run = _run(_window_host(_ring_chip, lambda n: 1), world, x, (world, 1, N))
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], np.roll(x, 1, axis=0))
    # the chunked, pipelined put stages through two [1, 16] fp32 tiles (budget accounting)
    assert not run.failures


@pytest.mark.parametrize("world", [2, 4])
def test_allgather_every_rank_holds_every_row(world):
    x = _rows(world, 2)
    run = _run(_window_host(_gather_chip, lambda n: n), world, x, (world, world, N))
    assert run.ok, run.summary()
    for r in range(world):
        np.testing.assert_array_equal(run.outputs["y"][r], x[:, 0, :])


def test_get_reads_the_previous_ranks_window():
    x = _rows(4, 3)
    run = _run(_window_host(_get_chip, lambda n: 1), 4, x, (4, 1, N))
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], np.roll(x, 1, axis=0))


def test_atomic_put_and_shared_counter_sum_into_rank_0():
    """Every rank adds its row into rank 0's window (AtomicType.Add) and bumps one shared
    cell there; rank 0 waits for all n - 1 peers (the cell sums their notifies)."""
    world = 4
    x = _rows(world, 4)

    def leaf(x, acc, sig, me):
        pld.put(acc, 0, x, atomic=AtomicType.Add)
        pld.notify(sig, 0, [0, 0], 1, op=ADD)

    def root(x, y, acc, sig, n):
        pld.put(acc, 0, x, atomic=AtomicType.Add)
        pld.wait(sig, [0, 0], n - 1, cmp=GE)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy_out"):
            pl.store(pl.load(acc, [0, 0], [1, N]), [0, 0], y)

    def host(x, y):
        n = pld.world_size()
        abuf = pld.alloc_window_buffer([1, N], dtype=pl.FP32)
        sbuf = pld.alloc_window_buffer([1, 1], dtype=pl.INT32)
        for r in pl.range(n):
            acc = pld.window(abuf, [1, N], dtype=pl.FP32)
            sig = pld.window(sbuf, [1, 1], dtype=pl.INT32)
            if r == 0:
                _on(r, root, x[r], y, acc, sig, n)
            else:
                _on(r, leaf, x[r], acc, sig, r)

    run = _run(host, world, x, (1, N))
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], x.sum(axis=0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_interleavings_give_the_same_answer(seed):
    x = _rows(4, 5)
    run = _run(_allreduce_host(), 4, x, (4, 1, N), schedule_seed=seed)
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], np.broadcast_to(x.sum(axis=0), x.shape))


# -- planted defects -----------------------------------------------------------------------------


def test_missing_notify_is_a_deadlock_naming_ranks_cells_and_expected_values():
    with pytest.raises(pld.Deadlock) as e:
        _run(_allreduce_host(skip_notify_from=1), 2, _rows(2), (2, 1, N))
    msg = str(e.value)
    assert "rank 0 waits at" in msg and "test_pl_distributed.py" in msg
    assert "sbuf[1, 0] of rank 0 >= 1 (it holds 0)" in msg  # rank 1 never notified rank 0
    assert "ranks [1] have finished" in msg


def test_deadlock_with_every_rank_waiting_names_each():
    def chip(sig, me):
        pld.wait(sig, [0, 0], 1, cmp=GE)  # nobody notifies

    def host(x, y):
        buf = pld.alloc_window_buffer([1, 1], dtype=pl.INT32)
        for r in pl.range(pld.world_size()):
            _on(r, chip, pld.window(buf, [1, 1], dtype=pl.INT32), r)

    with pytest.raises(pld.Deadlock) as e:
        _run(host, 2, _rows(2), (1,))
    assert "rank 0 waits" in str(e.value) and "rank 1 waits" in str(e.value)


def _store_then_read(barrier):
    """Rank 0 remote-stores into rank 1's window; rank 1 reads it (after a barrier or not)."""

    def chip(x, y, win, sig, me, n):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="push"):
            if me == 0:
                pld.remote_store(pl.load(x, [0, 0], [1, N]), win, 1, [0, 0])
        if barrier:
            _barrier(sig, me, n)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="pull"):
            pl.store(pl.load(win, [0, 0], [1, N]), [0, 0], y)

    return _window_host(chip, lambda n: 1)


def test_unsynchronised_remote_store_is_a_race_naming_window_ranks_and_lines():
    x = _rows(2, 6)
    bad = _fails(_run(_store_then_read(False), 2, x, (2, 1, N)))
    assert len(bad) == 1
    assert "race on window 'wbuf' of rank 1: rank 0 writes wbuf[0, 0:64]" in bad[0]
    assert "rank 1 reads wbuf[0, 0:64]" in bad[0] and "test_pl_distributed.py:" in bad[0]
    good = _run(_store_then_read(True), 2, x, (2, 1, N))
    assert good.ok, good.summary()
    np.testing.assert_array_equal(good.outputs["y"][1], x[0])


def _store_valid_tail(valid):
    """Rank 0 stores a [1, N] tile with ``valid`` valid columns at column N/2 of rank 1's
    window (pypto-lib's V4 ``lm_head.py`` pushes its ragged last vocab tile this way)."""

    def chip(x, y, win, sig, me, n):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="push"):
            if me == 0:
                t = pl.load(x, [0, 0], [1, N], valid_shape=[1, valid])
                pld.remote_store(t, win, 1, [0, N // 2])
        _barrier(sig, me, n)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="pull"):
            pl.store(pl.load(win, [0, 0], [1, N]), [0, 0], y)

    return _window_host(chip, lambda n: 1)


def test_remote_store_moves_the_valid_box_only():
    """Only the valid box is stored (it fits: N/2 columns at N/2); a fully valid [1, N] tile
    at the same offset runs past the window: out of bounds."""
    from lowering.tile.findings import OutOfBounds

    x = _rows(2, 7)
    good = _run(_store_valid_tail(N // 2), 2, x, (2, 1, N))
    np.testing.assert_array_equal(good.outputs["y"][1][0, N // 2:], x[0][0, :N // 2])
    assert not _fails(good), good.summary()
    with pytest.raises(OutOfBounds):
        _run(_store_valid_tail(N), 2, x, (2, 1, N))


def test_remote_store_overlapping_the_peers_own_write_is_a_race():
    def chip(x, y, win, sig, me, n):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="w"):
            t = pl.load(x, [0, 0], [1, N])
            pl.store(t, [0, 0], win)  # my own window ...
            pld.remote_store(t, win, 1 - me, [0, 0])  # ... and my peer's, no barrier
            pl.store(t, [0, 0], y)

    bad = _fails(_run(_window_host(chip, lambda n: 1), 2, _rows(2), (2, 1, N)))
    assert bad and "writes wbuf[0, 0:64]" in bad[0] and "rank 0" in bad[0] and "rank 1" in bad[0]


def test_wait_satisfied_only_by_the_order_the_ranks_ran_in_fails():
    """Rank 1 adds 1 to rank 0's cell, blocks on rank 2, then takes the 1 back; rank 0's
    wait sees the 1 only because the scheduler ran it while rank 1 was blocked."""

    def chip(sig, me):
        if me == 0:
            pld.wait(sig, [0, 0], 1, cmp=GE)
        elif me == 1:
            pld.notify(sig, 0, [0, 0], 1, op=ADD)
            pld.wait(sig, [1, 0], 1, cmp=GE)
            pld.notify(sig, 0, [0, 0], -1, op=ADD)
        else:
            pld.notify(sig, 1, [1, 0], 1, op=ADD)

    def host(x, y):
        buf = pld.alloc_window_buffer([3, 1], dtype=pl.INT32)
        for r in pl.range(3):
            _on(r, chip, pld.window(buf, [3, 1], dtype=pl.INT32), r)

    bad = _fails(_run(host, 3, _rows(3), (1,)))
    assert len(bad) == 1 and "rank 0's pld.system.wait" in bad[0]
    assert "only because of the order the ranks ran in" in bad[0] and "add up to 0" in bad[0]


def test_credit_reset_after_the_barrier_is_not_flagged():
    """The tp_group_barrier pattern: barrier(1), barrier(2), then each rank subtracts 2 from
    its own cells; a second round on the same signal starts from zero again."""

    def chip(sig, me, n):
        for _round in range(2):
            _barrier(sig, me, n, 1)
            _barrier(sig, me, n, 2)
            for p in range(n):
                if p != me:
                    pld.notify(sig, me, [p, 0], -2, op=ADD)

    def host(x, y):
        n = pld.world_size()
        buf = pld.alloc_window_buffer([n, 1], dtype=pl.INT32)
        for r in pl.range(n):
            _on(r, chip, pld.window(buf, [n, 1], dtype=pl.INT32), r, n)

    run = _run(host, 4, _rows(4), (1,))
    assert not _fails(run) and not [f for f in run.findings if f.check == "race"]


def test_a_wait_on_credits_already_consumed_is_a_vacuous_wait_warning():
    def chip(sig, me, n):
        _barrier(sig, me, n, 1)
        _barrier(sig, me, n, 1)  # the cells still hold 1: the second barrier orders nothing

    def host(x, y):
        buf = pld.alloc_window_buffer([2, 1], dtype=pl.INT32)
        for r in pl.range(2):
            _on(r, chip, pld.window(buf, [2, 1], dtype=pl.INT32), r, 2)

    run = _run(host, 2, _rows(2), (1,))
    warn = [f.message for f in run.warnings if f.check == "race"]
    assert len(warn) == 2 and all("orders nothing new" in w for w in warn)  # once per rank


def test_two_ranks_writing_one_host_element_race_and_coverage_is_per_rank():
    def chip(x, y, me):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="w"):
            pl.store(pl.load(x, [0, 0], [1, N]), [0, 0], y)  # both ranks: all of y

    def host(x, y):
        for r in pl.range(2):
            _on(r, chip, x[r], y, r)

    run = _run(host, 2, _rows(2), (1, N))
    bad = _fails(run)
    assert len(bad) == 1 and "ranks 0 and 1 both map y[0, 0:64] (y and y) and both write" in bad[0]

    def host2(x, y):
        for r in pl.range(2):
            _on(r, lambda x, y, me: pl.store(pl.load(x, [0, 0], [1, N // 2]), [0, 0], y), x[r],
                y[r], r)

    run = _run(host2, 2, _rows(2), (2, 1, N), zero_outputs=False)
    cov = _fails(run, "coverage")
    assert len(cov) == 2 and "kernel 't rank 0'" in cov[0] and "'y[0, 0:1, 0:64]'" in cov[0]
    assert "cols 32..63" in cov[0]


def test_a_finding_every_rank_reports_alike_is_kept_once_naming_the_ranks():
    def chip(x, y, me):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="big"):
            big = pl.full([256, 256], pl.FP32, 1.0)  # 256 KiB of Vec on every rank
            pl.store(pl.add(pl.slice(big, [1, N], [0, 0]), pl.load(x, [0, 0], [1, N])),
                     [0, 0], y)

    def host(x, y):
        for r in pl.range(3):
            _on(r, chip, x[r], y[r], r)

    run = _run(host, 3, _rows(3), (3, 1, N))
    budget = _fails(run, "budget")
    assert len(budget) == 1 and budget[0].startswith("kernel 't ranks 0, 1, 2', scope 'big'")
    np.testing.assert_array_equal(run.outputs["y"], _rows(3) + 1)


# -- contract violations and what is not modelled --------------------------------------------------


def _one_rank(chip, *extra):
    def host(x, y):
        buf = pld.alloc_window_buffer([2, 1], dtype=pl.INT32)
        for r in pl.range(pld.world_size()):
            _on(r, chip, x[r], pld.window(buf, [2, 1], dtype=pl.INT32), *extra)

    return _run(host, 2, _rows(2), (1,))


def test_contract_violations_are_kernel_defects():
    with pytest.raises(pld.DistributedDefect, match="peer 2 is not a rank of the world"):
        _one_rank(lambda x, sig: pld.notify(sig, 2, [0, 0], 1, op=ADD))
    with pytest.raises(pld.DistributedDefect, match="needs a window-bound"):
        _one_rank(lambda x, sig: pld.notify(x, 0, [0, 0], 1, op=ADD))
    with pytest.raises(pld.DistributedDefect, match="host-only"):
        _one_rank(lambda x, sig: pld.world_size())
    with pytest.raises(pld.DistributedDefect, match="not a pld.NotifyOp"):
        _one_rank(lambda x, sig: pld.notify(sig, 0, [0, 0], 1, op=7))
    from lowering.tile.findings import OutOfBounds

    with pytest.raises(OutOfBounds):
        _one_rank(lambda x, sig: pld.wait(sig, [2, 0], 1, cmp=GE))


def test_what_is_not_modelled_raises_naming_it_and_the_line():
    with pytest.raises(NotImplementedError, match=r"pld\.tensor\.allreduce .*test_pl_distri"):
        _one_rank(lambda x, sig: pld.tensor.allreduce(sig))
    with pytest.raises(NotImplementedError, match=r"pld\.system\.defer_wait"):
        _one_rank(lambda x, sig: pld.system.defer_wait(sig, [0, 0], 1, cmp=GE))
    with pytest.raises(NotImplementedError, match="a tile among its offsets"):
        _one_rank(lambda x, sig: pld.notify(sig, 0, [pl.full([1, 1], dtype=pl.INT32, value=0),
                                                     0], 1, op=ADD))
    # an element subscript (an int per axis) is pypto's tensor.read: a scalar, a valid offset
    _one_rank(lambda x, sig: pld.notify(sig, 0, [sig[1, 0], 0], 1, op=ADD))

    def host(x, y):  # a window given to rank 0 only: a comm domain smaller than the world
        buf = pld.alloc_window_buffer([1, 1], dtype=pl.INT32)
        _on(0, lambda s: None, pld.window(buf, [1, 1], dtype=pl.INT32))

    with pytest.raises(NotImplementedError, match="comm domains smaller than the world"):
        _run(host, 2, _rows(2), (1,))
    with pytest.raises(NotImplementedError, match="outside a multi-device run"):
        pld.world_size()


# -- a pypto-lib file end to end (lowering.harness) ------------------------------------------------

TOY = Path(__file__).parent / "pypto_lib_mini" / "models" / "toy"


def test_a_host_program_file_runs_end_to_end_on_its_device_ids():
    pytest.importorskip("torch")
    from lowering.harness import PASS, run_file

    res = run_file(TOY / "allgather.py")
    assert res.verdict == PASS, res.reason
    (case,) = res.cases
    assert [(o.name, o.ok, o.diff.shape) for o in case.outputs] == [("y", True, (2, 2, 64))]
    assert case.outputs[0].diff.differ_ratio == 0.0


def test_a_files_missing_notify_is_a_fail_and_an_unmodelled_config_a_cannot_run(tmp_path):
    pytest.importorskip("torch")
    from lowering.harness import CANNOT_RUN, FAIL, run_file

    src = (TOY / "allgather.py").read_text()
    planted = src.replace("        if peer != me:\n            pld.system.notify(",
                          "        if peer != me and me == 0:\n            pld.system.notify(")
    assert planted != src
    (tmp_path / "deadlock.py").write_text(planted)
    res = run_file(tmp_path / "deadlock.py")
    assert res.verdict == FAIL and "Deadlock" in res.reason
    assert "rank 0 waits at deadlock.py:26 for sig_buf[1, 0] of rank 0 >= 1 (it holds 0)" \
        in res.reason  # rank 1 never notifies
    (tmp_path / "workers.py").write_text(src.replace("num_sub_workers=0", "num_sub_workers=2"))
    res = run_file(tmp_path / "workers.py")
    assert res.verdict == CANNOT_RUN and "num_sub_workers=2" in res.reason


def test_a_host_programs_specs_bind_by_name_not_by_position(tmp_path):
    """pypto-lib's L3 runner orders the specs by the host program's parameter names."""
    pytest.importorskip("torch")
    from lowering.harness import PASS, run_file

    src = (TOY / "allgather.py").read_text()
    swapped = src.replace("    return [TensorSpec(\"x\"", "    return [*reversed([TensorSpec(\"x\"")
    swapped = swapped.replace("is_output=True)]", "is_output=True)])]")
    assert swapped.count("reversed") == 1 and "is_output=True)])]" in swapped
    (tmp_path / "swapped.py").write_text(swapped)
    res = run_file(tmp_path / "swapped.py")
    assert res.verdict == PASS, res.reason



# -- lanes on the ranks ------------------------------------------------------------------------------

ROWS = 8


def _lanes_both(host, world, x, out_shape, monkeypatch, **kw):
    """The program run with lanes and with LOWERING_LANES=0: the same bits and findings."""
    on = _run(host, world, x, out_shape, **kw)
    with monkeypatch.context() as m:
        m.setenv("LOWERING_LANES", "0")
        off = _run(host, world, x, out_shape, **kw)
    assert on.outputs["y"].tobytes() == off.outputs["y"].tobytes()
    assert [str(f) for f in on.findings] == [str(f) for f in off.findings]
    assert not any(how == "lanes" for how in off.lane_loops.values())
    return on


def _double_swap_add_chip(x, y, win, sig, me, n):
    """Doubled rows of x into my window (a pl.parallel loop), a barrier, my peer's window into
    y (pld.tensor.get), then y += x row by row (another pl.parallel loop)."""
    for i in pl.parallel(ROWS):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="double"):
            pl.store(pl.mul(pl.load(x, [i, 0], [1, N]), 2.0), [i, 0], win)
    _barrier(sig, me, n)
    pld.get(y, (me + 1) % n, win)
    for i in pl.parallel(ROWS):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="add"):
            pl.store(pl.add(pl.load(y, [i, 0], [1, N]), pl.load(x, [i, 0], [1, N])), [i, 0], y)


def test_a_ranks_parallel_loops_run_in_lanes_with_the_bits_of_one_at_a_time(monkeypatch):
    world = 3
    x = np.random.default_rng(8).integers(-50, 50, (world, ROWS, N)).astype(np.float32)
    run = _lanes_both(_window_host(_double_swap_add_chip, lambda n: ROWS), world, x,
                      (world, ROWS, N), monkeypatch)
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], 2 * np.roll(x, -1, axis=0) + x)
    assert sorted(run.lane_loops.values()) == ["lanes", "lanes"], run.lane_loops


def _ping(sig, peer, me):
    """A notify the loop body's own source does not show."""
    pld.notify(sig, peer, [me, 0], 1, op=ADD)


@pytest.mark.parametrize("hidden", [False, True])
def test_a_cross_rank_op_in_a_loop_body_runs_that_loop_one_iteration_at_a_time(
        monkeypatch, hidden):
    """A notify per iteration: each is its own epoch, in the iterations' order. Read from
    the body's source before the loop starts; where a helper hides it, met at run time (the
    program starts again)."""

    def chip(x, y, win, sig, me, n):
        for i in pl.parallel(ROWS):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="stage"):
                pl.store(pl.load(x, [i, 0], [1, N]), [i, 0], win)
            pld.notify(sig, 1 - me, [me, 0], 1, op=ADD)
        pld.wait(sig, [1 - me, 0], ROWS, cmp=WaitCmp.Eq)
        pld.get(y, 1 - me, win)

    def hiding_chip(x, y, win, sig, me, n):
        for i in pl.parallel(ROWS):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="stage"):
                pl.store(pl.load(x, [i, 0], [1, N]), [i, 0], win)
            _ping(sig, 1 - me, me)
        pld.wait(sig, [1 - me, 0], ROWS, cmp=WaitCmp.Eq)
        pld.get(y, 1 - me, win)

    x = np.random.default_rng(9).integers(-50, 50, (2, ROWS, N)).astype(np.float32)
    run = _lanes_both(_window_host(hiding_chip if hidden else chip, lambda n: ROWS), 2, x,
                      (2, ROWS, N), monkeypatch)
    assert run.ok, run.summary()
    np.testing.assert_array_equal(run.outputs["y"], x[::-1])
    (how,) = run.lane_loops.values()
    if hidden:
        assert how.startswith("one at a time: pld.system.notify (test_pl_distributed.py:"), how
    else:
        assert how.startswith("one at a time: line ") and "pld.notify(), a cross-rank op" in how


def test_an_error_in_a_ranks_loop_is_the_one_at_a_time_runs_error(monkeypatch):
    from lowering.tile.findings import OutOfBounds

    def chip(x, y, win, sig, me, n):
        for i in pl.parallel(ROWS):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="far"):
                pl.store(pl.load(x, [2 * i, 0], [1, N]), [i, 0], y)  # rows 8.. do not exist

    x = np.zeros((2, ROWS, N), np.float32)
    with pytest.raises(OutOfBounds) as on:
        _run(_window_host(chip, lambda n: ROWS), 2, x, (2, ROWS, N))
    monkeypatch.setenv("LOWERING_LANES", "0")
    with pytest.raises(OutOfBounds) as off:
        _run(_window_host(chip, lambda n: ROWS), 2, x, (2, ROWS, N))
    assert str(on.value) == str(off.value) and "reads 8:9" in str(on.value)  # i = 4


def test_a_cross_rank_race_after_a_lane_loop_is_the_one_at_a_time_runs_finding(monkeypatch):
    """_store_then_read without its barrier, after a loop in lanes on every rank."""

    def chip(x, y, win, sig, me, n):
        for i in pl.parallel(ROWS):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="copy"):
                pl.store(pl.load(x, [i, 0], [1, N]), [i, 0], y)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="push"):
            if me == 0:
                pld.remote_store(pl.load(x, [0, 0], [1, N]), win, 1, [0, 0])
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="pull"):
            pl.load(win, [0, 0], [1, N])

    x = _rows(2, 10).repeat(ROWS, axis=1)
    run = _lanes_both(_window_host(chip, lambda n: 1), 2, x, (2, ROWS, N), monkeypatch)
    bad = _fails(run)
    assert len(bad) == 1 and "rank 0 writes wbuf[0, 0:64]" in bad[0], bad
    assert list(run.lane_loops.values()) == ["one at a time: a cross-rank race"]


def test_a_store_into_an_input_never_reaches_the_host_array_nor_another_rank():
    """Rank 0 stores into x, which every rank is given whole; rank 1 then reads x: on the
    device each rank holds its own copy, so rank 1 reads what the host gave, and the caller's
    array is as it was."""

    def writer(x, y):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="scribble"):
            pl.store(pl.full([1, N], dtype=pl.FP32, value=7.0), [0, 0], x)
            pl.store(pl.load(x, [0, 0], [1, N]), [0, 0], y)

    def reader(x, y):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="read"):
            pl.store(pl.load(x, [0, 0], [1, N]), [0, 0], y)

    def host(x, y):
        _on(0, writer, x, y[0])
        _on(1, reader, x, y[1])

    x = np.random.default_rng(12).integers(-50, 50, (1, N)).astype(np.float32)
    given = x.copy()
    run = run_host(host, world=2, inputs={"x": x}, outputs={"y": ((2, 1, N), pl.FP32)},
                   name="t", input_store="warning")
    np.testing.assert_array_equal(x, given)
    np.testing.assert_array_equal(run.outputs["y"][0], np.full((1, N), 7.0, np.float32))
    np.testing.assert_array_equal(run.outputs["y"][1], given)
    (store,) = [f for f in run.findings if "store into input tensor" in f.message]
    assert store.severity == "warning" and "rank 0" in store.message
