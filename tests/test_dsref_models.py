"""Both models and every stage against the independent oracle, bitwise; jit == eager."""

import dataclasses
import re

import jax
import ml_dtypes
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise

import dsref
from dsref.model import STAGES
from dsref.run import range_inputs

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"
BF16 = np.dtype(ml_dtypes.bfloat16)
ORACLE = {V32: oracle.v32_stages, V4: oracle.v4_stages}
CASES = {V32: ("v32-tiny", dict(batch=5)), V4: ("v4-tiny", dict(batch=3, seq=3))}


def _env(model, cfg, ins):
    """Model inputs plus every oracle stage output: the values each stage reads and writes."""
    return {**ins, **ORACLE[model](cfg, ins)}


@pytest.fixture(scope="module", params=[V32, V4])
def case(request):
    model = request.param
    cfg_name, kw = CASES[model]
    cfg = dsref.config(cfg_name)
    ins = dsref.make_inputs(model, cfg, seed=11, **kw)
    return model, cfg, ins, _env(model, cfg, ins)


def test_model_equals_oracle_bitwise(case):
    model, cfg, ins, env = case
    outs = dsref.run(model, cfg, ins)
    assert set(outs) == set(dsref.get_model(model).output_specs(cfg, 1))
    for name, got in outs.items():
        assert_bitwise(got, env[name], name)


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_equals_oracle_bitwise(stage):
    """Each stage alone, fed the oracle's upstream values (teacher-forced)."""
    st = STAGES[stage]
    cfg_name, kw = CASES[st.model]
    cfg = dsref.config(cfg_name)
    env = _env(st.model, cfg, dsref.make_inputs(st.model, cfg, seed=5, **kw))
    outs = dsref.run_stage(stage, cfg, *(env[a] for a in st.inputs))
    assert len(outs) == len(st.outputs)
    for name, got in zip(st.outputs, outs, strict=True):
        assert_bitwise(got, env[name], f"{stage}.{name}")


def test_fp32_intermediates_equal_oracle_bitwise():
    """bf16 rounding hides 1-ulp fp32 drift: compare inv_rms itself, both variance forms."""
    from dsref.numerics import x64
    from dsref.rmsnorm import inv_rms

    v = np.random.default_rng(2).standard_normal((64, 1536)).astype(np.float32) * 3
    for variance in ("mean", "mul_inv"):
        with x64():
            got = np.asarray(jax.jit(lambda a, var=variance: inv_rms(a, eps=1e-6, variance=var))(
                v.astype(np.float64)))
        assert_bitwise(got.astype(np.float32), oracle.inv_rms(v, 1e-6, variance), variance)


@pytest.mark.parametrize("model", [V32, V4])
def test_jit_equals_eager_on_tie_rich_inputs(model):
    cfg_name, kw = CASES[model]
    cfg = dsref.config(cfg_name)
    ins = dsref.make_inputs(model, cfg, seed=3, ties=True, **kw)
    first = "normed" if model == V32 else "tok"
    x = ins["hidden_states"] if model == V32 else ins["x"].reshape(-1, cfg.hidden)
    w = ins["input_rms_weight"] if model == V32 else ins["norm_w"]
    pre = oracle.f32(w) * (oracle.f32(x) * oracle.inv_rms(x))
    ties = oracle.rb(pre, "rne") != oracle.rb(pre, "rhaz")
    assert ties.mean() > 0.3, "inputs are not tie-rich"
    jitted = dsref.run(model, cfg, ins)
    eager = dsref.run(model, cfg, ins, jit=False)
    env = _env(model, cfg, ins)
    for name in jitted:
        assert_bitwise(jitted[name], eager[name], f"jit vs eager {name}")
        assert_bitwise(jitted[name], env[name], f"jit vs oracle {name}")
    stage = STAGES["input_rmsnorm" if model == V32 else "attn_norm"]
    rhaz = dsref.with_variants(cfg, cast="rhaz")
    (got,) = dsref.run_stage(stage.name, rhaz, *(ins[a] for a in stage.inputs))
    assert_bitwise(got, oracle.rms_norm(x, w, cast="rhaz").reshape(got.shape), f"{first} rhaz")
    assert (got != env[first]).mean() > 0.3  # ties-away moved the ties


def test_rope_pos0_is_identity_and_last_position_rotates():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=3, seed=0)
    assert ins["seq_lens"][0] == 1 and ins["seq_lens"][-1] == cfg.max_seq
    outs = dsref.run(V32, cfg, ins)
    q = oracle.v32_stages(cfg, ins)["q"].reshape(3, cfg.heads, cfg.head_dim)
    q_pe = outs["q_pe_out"].reshape(3, cfg.heads, cfg.rope)
    assert_bitwise(q_pe[0], q[0, :, cfg.nope:], "pos 0 is the identity")
    assert (q_pe[-1] != q[-1, :, cfg.nope:]).mean() > 0.5  # pos MAX_SEQ-1 rotates


def test_rope_tables_with_differing_halves_read_each_half():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=4, seed=1, tables="adversarial")
    r = cfg.rope // 2
    assert not np.array_equal(ins["rope_cos"][1:, :r], ins["rope_cos"][1:, r:])
    outs = dsref.run(V32, cfg, ins)
    env = oracle.v32_stages(cfg, ins)
    for name in ("q_pe_out", "pe_cache"):
        assert_bitwise(outs[name], env[name], name)
    swapped = dict(ins, rope_cos=np.concatenate([ins["rope_cos"][:, :r]] * 2, axis=1))
    assert not np.array_equal(dsref.run(V32, cfg, swapped)["q_pe_out"], outs["q_pe_out"])


def test_v4_never_reads_the_upper_table_columns():
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=2, seq=3, seed=2, tables="adversarial")
    assert np.isnan(ins["rope_cos"][:, cfg.rope // 2:].astype(np.float32)).all()
    outs = dsref.run(V4, cfg, ins)
    env = oracle.v4_stages(cfg, ins)
    for name in ("q", "kv"):
        assert not np.isnan(outs[name].astype(np.float32)).any()
        assert_bitwise(outs[name], env[name], name)


@pytest.mark.parametrize("t", [1, 7, 9, 15, 17, 24])
def test_v4_any_token_count(t):
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=t, seq=1, seed=t)
    outs = dsref.run(V4, cfg, ins)
    env = oracle.v4_stages(cfg, ins)
    for name, got in outs.items():
        assert got.shape[0] == t
        assert_bitwise(got, env[name], name)


def test_cache_rows_not_written_stay_bit_identical():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(V32, cfg, batch=4, seed=4)
    sentinel = np.array(-3.25, np.float32).astype(dsref.inputs.BF16)
    ins["kv_cache"] = np.full_like(ins["kv_cache"], sentinel)
    ins["pe_cache"] = np.full_like(ins["pe_cache"], sentinel)
    outs = dsref.run(V32, cfg, ins)
    rows = np.arange(4) * cfg.max_seq + ins["seq_lens"] - 1
    other = np.setdiff1d(np.arange(4 * cfg.max_seq), rows)
    for name in ("kv_cache", "pe_cache"):
        assert_bitwise(outs[name][other], ins[name][other], f"{name} untouched rows")
        assert (outs[name][rows] != sentinel).all()
    assert ins["kv_cache"] is not outs["kv_cache"]


def test_int32_accumulator_above_2_24_rounds_to_nearest_even():
    """V4 Pro: K = 1536 products of 127·127 exceed 2**24; f32(acc) must round RNE."""
    cfg = dsref.config("v4-pro")
    rng = np.random.default_rng(0)
    k = cfg.q_lora
    qr = np.full((4, k), 127, np.int8)
    qr[:, :3] = rng.integers(-128, 128, (4, 3))
    w = np.full((k, 32), 127, np.int8)
    w[:5] = rng.integers(-128, 128, (5, 32))
    acc = qr.astype(np.int64) @ w.astype(np.int64)
    assert acc.min() > 2**24 and (acc % 2).any()  # odd values above 2**24 must round
    qr_scale = np.full((4, 1), 1.0, np.float32)
    w_scale = np.full((32,), 1.0, np.float32)
    (qf,) = dsref.run_stage("qproj_matmul", cfg, qr, qr_scale, w, w_scale)
    assert_bitwise(qf, acc.astype(np.int32).astype(np.float32), "qf")
    assert (qf.astype(np.int64) != acc).any()  # rounding did happen


def test_same_seed_same_bits_and_seed_changes_values():
    cfg = dsref.config("v4-tiny")
    a = dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=9)
    b = dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=9)
    c = dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=10)
    for name in a:
        assert_bitwise(a[name], b[name], name)
    assert not np.array_equal(a["x"], c["x"])


def test_inputs_have_pypto_lib_names_shapes_dtypes():
    for model, (cfg_name, kw) in CASES.items():
        cfg = dsref.config(cfg_name)
        ins = dsref.make_inputs(model, cfg, seed=0, **kw)
        specs = dsref.get_model(model).input_specs(cfg, kw["batch"], kw.get("seq", 1))
        assert list(ins) == list(specs) or set(ins) == set(specs)
        for name, spec in specs.items():
            assert ins[name].shape == spec.shape and ins[name].dtype == spec.dtype, name


def test_v4_weights_are_per_channel_int8():
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=1, seed=0)
    codes, scale = ins["wq_b"], ins["wq_b_scale"]
    assert np.abs(codes.astype(np.int32)).max(axis=0).min() == 127  # each channel uses its range
    w = codes.astype(np.float32) * scale
    assert 0.5 < w.std() * np.sqrt(cfg.q_lora) < 2.0  # ~ 1/sqrt(fan_in)


def test_config_is_frozen_and_variants_validated():
    cfg = dsref.config("v32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="rope_table.*does not apply"):
        dsref.with_variants(cfg, rope_table="element")
    with pytest.raises(ValueError, match="rmsnorm"):
        dsref.with_variants(cfg, rmsnorm="layer")
    assert dsref.config_names() == ["v32", "v32-tiny", "v4-flash", "v4-pro", "v4-tiny"]


# -- stage ranges: MODEL[A:B] ------------------------------------------------------------------

RANGES = {V32: [("q_lora_proj", "q_head_proj"), (None, "kv_a_proj"), ("kv_rmsnorm", None)],
          V4: [("attn_norm", "attn_norm"), ("qr_proj_matmul", None), (None, "qr_quant")]}


@pytest.mark.parametrize("model", [V32, V4])
def test_stage_ranges_equal_oracle_bitwise(model):
    """A stage range run on its own, fed the oracle's values of its inputs (intermediates
    included), gives the oracle's values of its outputs, bitwise; its inputs are what no
    earlier stage of the range makes, its outputs what leaves it."""
    cfg_name, kw = CASES[model]
    cfg = dsref.config(cfg_name)
    ins = dsref.make_inputs(model, cfg, seed=5, **kw)
    env = _env(model, cfg, ins)
    for start, stop in RANGES[model]:
        name = dsref.range_name(model, start, stop)
        m = dsref.get_model(name)
        given = {n: ins[n] if n in ins else env[n] for n in m.input_names}  # caches as given
        outs = dsref.run(name, cfg, given)
        assert set(outs) == set(m.output_names)
        for n, got in outs.items():
            assert_bitwise(got, env[n], f"{name}: {n}")
        # its own inputs: the whole model's, carried through the stages before it
        made = dsref.make_inputs(name, cfg, seed=5, **kw)
        assert tuple(made) == m.input_names
        for n, got in made.items():
            assert_bitwise(got, given[n], f"make_inputs({name}): {n}")


def test_range_inputs_take_what_the_range_reads():
    """``range_inputs`` needs only the whole model's inputs a range reads (scope 1's for a
    range within it, not the sparse stages' caches) and still names a missing one or an
    unknown one."""
    cfg = dsref.config("v32-tiny")
    whole = dsref.make_inputs(V32, cfg, batch=2, seed=1)
    name = f"{V32}[q_lora_proj:kv_a_proj]"
    reads = dsref.model.base_reads(dsref.get_model(name))
    assert "hidden_states" in reads and "wq_b" in reads and "k_cache_idx" not in reads
    part = {n: whole[n] for n in reads}
    got, want = range_inputs(name, cfg, part), range_inputs(name, cfg, whole)
    assert got.keys() == want.keys()
    for n in got:
        assert_bitwise(got[n], want[n], n)
    with pytest.raises(dsref.InputError, match="wq_a: missing input"):
        range_inputs(name, cfg, {n: v for n, v in part.items() if n != "wq_a"})
    with pytest.raises(dsref.InputError, match="wq_z: unknown input"):
        range_inputs(name, cfg, {**part, "wq_z": part["wq_a"]})


def test_stage_range_names_and_boundaries():
    assert dsref.range_name(V4, "qr_proj_matmul") == "v4.qkv_proj_rope[qr_proj_matmul:]"
    assert dsref.range_name(V4, None, "qr_quant") == "v4.qkv_proj_rope[:qr_quant]"
    assert dsref.range_name(V4, "attn_norm", "attn_norm") == "v4.qkv_proj_rope[attn_norm]"
    assert dsref.range_name(V4, "attn_norm", "kv_rms_rope") == V4
    m = dsref.get_model("v4.qkv_proj_rope[qr_proj_matmul:kv_rms_rope]")
    assert m.name == "v4.qkv_proj_rope[qr_proj_matmul:]" and m.family == V4
    assert m.input_names == ("tok", "wq_a", "gamma_cq", "wq_b", "wq_b_scale", "rope_cos",
                             "rope_sin", "wkv", "gamma_ckv")
    assert m.output_names == ("qr", "qr_scale", "q", "kv")
    assert dsref.get_model(f"{V4}[attn_norm]").output_names == ("tok",)
    # a prefix ends in the values it makes that none of its stages reads
    assert dsref.get_model(f"{V32}[:q_lora_rmsnorm]").output_names == ("qr_out",)
    caches = dsref.get_model(f"{V32}[kv_rmsnorm:decode_cache_write]")
    assert caches.inouts == ("kv_cache", "pe_cache")
    assert dsref.get_model(f"{V32}[kv_rmsnorm:]").inouts == (
        "kv_cache", "pe_cache", "k_cache_idx", "dispatch_buf")
    assert dsref.get_model(f"{V4}[qr_proj_matmul:]").input_specs(
        dsref.config("v4-tiny"), 2, 3)["tok"] == dsref.model.TensorSpec((6, 1536), BF16)
    for bad, msg in [(f"{V4}[qr_rms:attn_norm]", "'qr_rms' comes after 'attn_norm'"),
                     (f"{V4}[nope:]", "start: expected a stage of v4.qkv_proj_rope"),
                     (f"{V4}[]", "expected MODEL"), ("v5.x[attn_norm]", "model: expected one of")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            dsref.get_model(bad)
