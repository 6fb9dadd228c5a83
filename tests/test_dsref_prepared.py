"""dsref.prepare: resident weights and caches — the same bits as the oracle, call after call."""

import ml_dtypes
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise

import dsref
from dsref.numerics import dot, idot, resident_weight, x64

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"


def _step_inputs(model, ins):
    return {k: ins[k] for k in dsref.get_model(model).step_inputs}


def test_v32_decode_loop_equals_oracle_step_by_step():
    """Four decode steps: every output and the caches equal the oracle chained over the same
    steps; cache rows no step wrote stay bit-identical; the caller's caches are untouched."""
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=4, seed=3, ties=True)
    ins["seq_lens"] = np.array([1, 17, 40, cfg.max_seq - 3], np.int32)  # the last one fills up
    initial = {k: ins[k].copy() for k in ("kv_cache", "pe_cache")}
    p = dsref.prepare(V32, cfg, ins)
    env = dict(ins)
    rng = np.random.default_rng(5)
    written = set()
    for step in range(4):
        lens = np.asarray(ins["seq_lens"]) + step
        h = rng.standard_normal(ins["hidden_states"].shape).astype(ml_dtypes.bfloat16)
        outs = p(hidden_states=h, seq_lens=lens.astype(np.int32))
        env.update(hidden_states=h, seq_lens=lens.astype(np.int32))
        want = oracle.v32_stages(cfg, env)
        env.update(kv_cache=want["kv_cache"], pe_cache=want["pe_cache"])
        assert set(outs) == {"qr_out", "q_nope_out", "q_pe_out", "kv_a_out"}
        for name, got in outs.items():
            assert_bitwise(got, want[name], f"step {step} {name}")
        written |= {b * cfg.max_seq + int(lens[b]) - 1 for b in range(4)}
    state = p.state()
    for name in ("kv_cache", "pe_cache"):
        assert_bitwise(state[name], env[name], name)
        keep = np.setdiff1d(np.arange(state[name].shape[0]), sorted(written))
        assert_bitwise(state[name][keep], initial[name][keep], f"{name} rows not written")
        assert_bitwise(ins[name], initial[name], f"caller's {name}")
    assert p.calls == 4


@pytest.mark.parametrize("model,cfg_name,kw", [(V32, "v32-tiny", dict(batch=3)),
                                                (V4, "v4-tiny", dict(batch=2, seq=3))])
def test_prepared_equals_run_bitwise(model, cfg_name, kw):
    cfg = dsref.config(cfg_name)
    ins = dsref.make_inputs(model, cfg, seed=8, **kw)
    want = dsref.run(model, cfg, ins)
    p = dsref.prepare(model, cfg, ins)
    got = p(_step_inputs(model, ins))
    for name, g in {**got, **p.state()}.items():
        assert_bitwise(g, want[name], name)


def test_fp32_accumulate_prepared_within_the_fp32_bound_of_run():
    """The fp32-accumulate variant has no defined order: the resident [out, in] weight may sum
    in another order than run()'s [in, out] one. Each prepared output lies inside the
    any-order fp32 bound of its stage, evaluated on the prepared call's own upstream outputs."""
    from lowering.pipeline import judge_observed

    cfg = dsref.with_variants(dsref.config("v32-tiny"), accumulate="fp32")
    ins = dsref.make_inputs(V32, cfg, batch=3, seed=2)
    got = dsref.prepare(V32, cfg, ins)(_step_inputs(V32, ins))
    judged = [o for j in judge_observed(V32, cfg, ins, got) for o in j.outputs]
    assert {o.name for o in judged} == set(got)
    assert all(o.ok and o.preset == "bound" for o in judged if o.name in (
        "qr_out", "kv_a_out")), [(o.name, o.message) for o in judged]
    assert all(o.ok for o in judged), [(o.name, o.message) for o in judged]


def _aligned_copy(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A copy of ``a`` starting on an ``align``-byte boundary (XLA CPU may alias such arrays)."""
    buf = np.empty(a.nbytes + align, np.uint8)
    off = (-buf.ctypes.data) % align
    out = buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_caller_changing_its_arrays_after_prepare_changes_nothing():
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=4)
    ins = {k: _aligned_copy(v) for k, v in ins.items()}
    p = dsref.prepare(V4, cfg, ins)
    want = dsref.run(V4, cfg, ins)
    for k, v in ins.items():
        if k not in p.model.step_inputs:
            v[...] = np.zeros((), v.dtype)
    got = p(_step_inputs(V4, ins))
    for name, g in got.items():
        assert_bitwise(g, want[name], name)


def test_v4_takes_any_token_count_per_call():
    """No caches, so batch and seq may change per call; each call equals the oracle."""
    cfg = dsref.config("v4-tiny")
    first = dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=6)
    p = dsref.prepare(V4, cfg, first)
    for batch, seq in ((2, 2), (1, 5), (3, 1)):
        ins = dsref.make_inputs(V4, cfg, batch=batch, seq=seq, seed=batch)
        got = p(_step_inputs(V4, ins))
        want = oracle.v4_stages(cfg, {**first, **_step_inputs(V4, ins)})
        for name, g in got.items():
            assert_bitwise(g, want[name], f"B={batch} S={seq} {name}")
    bad = {**_step_inputs(V4, ins), "rope_cos": ins["rope_cos"][:2]}
    with pytest.raises(dsref.InputError, match=r"rope_cos: expected shape \[3, 32\], got \[2, 32\]"):
        p(bad)


def test_state_is_a_copy():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=2, seed=1)
    p = dsref.prepare(V32, cfg, ins)
    s = p.state()
    s["kv_cache"][:] = 0
    assert_bitwise(p.state()["kv_cache"], ins["kv_cache"], "kv_cache")


@pytest.mark.parametrize("bad,match", [
    (dict(hidden_states=np.zeros((3, 1536), ml_dtypes.bfloat16)),
     r"hidden_states: expected shape \[2, 1536\]"),
    (dict(hidden_states=np.zeros((2, 1536), np.float32)), r"hidden_states: expected dtype bfloat16"),
    (dict(wq_a=np.zeros((1536, 1024), ml_dtypes.bfloat16)),
     r"wq_a: unknown per-call input of v32.decode_front \(weights and caches are resident\)"),
    (dict(seq_lens=np.array([1, 65], np.int32)), r"seq_lens: expected 1 <= seq_lens\[b\] <= MAX_SEQ=64"),
])
def test_bad_activations_get_one_line_errors_and_leave_the_caches(bad, match):
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=2, seed=1)
    p = dsref.prepare(V32, cfg, ins)
    acts = {**_step_inputs(V32, ins), **bad}
    with pytest.raises(dsref.InputError, match=match) as e:
        p(acts)
    assert "\n" not in str(e.value)
    assert p.calls == 0
    assert_bitwise(p.state()["pe_cache"], ins["pe_cache"], "pe_cache")


def test_prepare_validates_the_weights():
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=1, seq=2, seed=1)
    ins["wq_a"] = ins["wq_a"].copy()
    ins["wq_a"][3, 4] = np.inf
    with pytest.raises(dsref.InputError, match=r"wq_a: expected finite values, got inf at index \[3, 4\]"):
        dsref.prepare(V4, cfg, ins)


def test_resident_weight_dots_equal_stored_weight_dots():
    """Transposed and pre-widened: the same exact products and sums, bitwise."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 300)).astype(ml_dtypes.bfloat16)
    w = (rng.standard_normal((300, 70)) * 0.05).astype(ml_dtypes.bfloat16)
    qa = rng.integers(-128, 128, (5, 300)).astype(np.int8)
    qw = rng.integers(-128, 128, (300, 70)).astype(np.int8)
    with x64():
        rw = resident_weight(w)
        assert rw.t.shape == (70, 300) and rw.t.dtype == np.float64
        assert_bitwise(np.asarray(dot(a, rw)), np.asarray(dot(a, w)), "exact dot")
        want = oracle.matmul32(a, w).astype(np.float64)
        assert_bitwise(np.asarray(dot(a, rw)), want, "vs the oracle")
        assert resident_weight(w, "fp32").t.dtype == ml_dtypes.bfloat16
        rq = resident_weight(qw)
        assert rq.t.dtype == np.int8
        want = (qa.astype(np.int64) @ qw.astype(np.int64)).astype(np.float64)
        assert_bitwise(np.asarray(idot(qa, rq)), want, "idot")
