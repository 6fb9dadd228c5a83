"""Input validation (one clear error naming the tensor) and the RoPE tables."""

import math
import re

import ml_dtypes
import numpy as np
import pytest

import dsref
from dsref.config import YarnRope
from dsref.inputs import rope_freqs, rope_tables, yarn_correction_range

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"


@pytest.fixture(scope="module")
def v32():
    cfg = dsref.config("v32-tiny")
    return cfg, dsref.make_inputs(V32, cfg, batch=3, seed=0)


@pytest.fixture(scope="module")
def v4():
    cfg = dsref.config("v4-tiny")
    return cfg, dsref.make_inputs(V4, cfg, batch=2, seq=2, seed=0)


def _run_err(model, cfg, ins) -> str:
    with pytest.raises(dsref.InputError) as e:
        dsref.run(model, cfg, ins)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_and_unknown_names(v32):
    cfg, ins = v32
    ins2 = {k: v for k, v in ins.items() if k != "wq_b"}
    assert _run_err(V32, cfg, ins2).startswith("wq_b: missing input")
    assert _run_err(V32, cfg, {**ins, "wq_c": ins["wq_b"]}).startswith("wq_c: unknown input")


def test_wrong_shape_names_expected_and_got(v32):
    cfg, ins = v32
    msg = _run_err(V32, cfg, {**ins, "wq_a": ins["wq_a"][:, :-1]})
    assert msg == f"wq_a: expected shape [{cfg.hidden}, {cfg.q_lora}], got [{cfg.hidden}, {cfg.q_lora - 1}]"


def test_wrong_dtype(v4):
    cfg, ins = v4
    msg = _run_err(V4, cfg, {**ins, "wq_b": ins["wq_b"].astype(np.int32)})
    assert msg == "wq_b: expected dtype int8, got int32"
    msg = _run_err(V4, cfg, {**ins, "x": ins["x"].astype(np.float32)})
    assert msg == "x: expected dtype bfloat16, got float32"


@pytest.mark.parametrize("bad", [0, -1, "max+1"])
def test_seq_lens_out_of_range(v32, bad):
    cfg, ins = v32
    sl = ins["seq_lens"].copy()
    sl[1] = cfg.max_seq + 1 if bad == "max+1" else bad
    msg = _run_err(V32, cfg, {**ins, "seq_lens": sl})
    assert msg == (f"seq_lens: expected 1 <= seq_lens[b] <= MAX_SEQ={cfg.max_seq}, "
                   f"got seq_lens[1]={sl[1]}")


@pytest.mark.parametrize("name,value", [("hidden_states", np.nan), ("input_rms_weight", np.inf),
                                        ("kv_cache", -np.inf), ("wq_b", -np.nan), ("pe_cache", np.inf)])
def test_non_finite_inputs_rejected(v32, name, value):
    cfg, ins = v32
    a = ins[name].copy()
    a.reshape(-1)[5] = value
    msg = _run_err(V32, cfg, {**ins, name: a})
    assert msg.startswith(f"{name}: expected finite values, got")


def test_a_non_finite_bf16_anywhere_is_found():
    """The finiteness check reads bf16 in chunks: an Inf or NaN in the first, at a chunk's
    edge, or as the very last element is found; the largest finite values are not flagged.
    The oracle: isfinite of the exactly widened fp32 values."""
    from dsref.run import FINITE_CHUNK, _all_finite

    n = 2 * FINITE_CHUNK + 7
    big = np.full(n, 3.0e38, dtype=np.float32).astype(ml_dtypes.bfloat16)  # max finite bf16
    big[::2] = -big[::2]
    assert _all_finite(big) and np.isfinite(big.astype(np.float32)).all()
    for where in (0, FINITE_CHUNK - 1, FINITE_CHUNK, 2 * FINITE_CHUNK, n - 1):
        for bad in (np.inf, -np.inf, np.nan):
            a = big.copy()
            a[where] = bad
            assert not _all_finite(a) and not np.isfinite(a.astype(np.float32)).all(), where
    assert _all_finite(np.zeros(0, ml_dtypes.bfloat16))


def test_v4_nan_only_allowed_in_unread_table_columns(v4):
    cfg, ins = v4
    r = cfg.rope
    cos = ins["rope_cos"].copy()
    cos[:, r // 2:] = np.nan
    dsref.run(V4, cfg, {**ins, "rope_cos": cos})  # columns R/2.. are never read
    cos[0, 0] = np.nan
    assert _run_err(V4, cfg, {**ins, "rope_cos": cos}).startswith("rope_cos: expected finite")
    element = dsref.with_variants(cfg, rope_table="element")
    cos = ins["rope_cos"].copy()
    cos[:, -1] = np.nan  # element tables read every column
    assert _run_err(V4, element, {**ins, "rope_cos": cos}).startswith("rope_cos: expected finite")


def test_wrong_config_type_and_unknown_model(v32):
    cfg, ins = v32
    with pytest.raises(dsref.InputError, match="expects a V4Config"):
        dsref.run(V4, cfg, ins)
    with pytest.raises(ValueError, match="model: expected one of"):
        dsref.make_inputs("v5.attn", cfg, batch=1)
    with pytest.raises(ValueError, match="config: expected one of"):
        dsref.config("v33")


def test_caches_in_rows_are_not_mutated(v32):
    cfg, ins = v32
    before = {k: v.copy() for k, v in ins.items()}
    dsref.run(V32, cfg, ins)
    for k in ins:
        assert np.array_equal(before[k].view(np.uint8), ins[k].view(np.uint8)), k


# ---- RoPE tables --------------------------------------------------------------------------


def test_yarn_correction_ranges_match_semantics():
    v32 = dsref.config("v32")
    assert yarn_correction_range(64, v32.rope_params) == (10, 23)
    v4 = dsref.config("v4-flash")
    assert yarn_correction_range(64, v4.compressed_rope) == (15, 25)
    assert v32.rope_params.yarn and v4.compressed_rope.yarn and not v4.swa_rope.yarn


def test_freqs_known_values():
    plain = rope_freqs(64, YarnRope(theta=10000.0))
    assert plain[0] == 1.0 and plain.dtype == np.float32
    np.testing.assert_allclose(plain[1], 10000 ** (-2 / 64), rtol=1e-6)
    yarn = rope_freqs(64, dsref.config("v32").rope_params)
    # below the correction range: extrapolated (unchanged); above: interpolated (/ factor)
    assert np.array_equal(yarn[:11], plain[:11])  # ramp = 0 up to low = 10
    np.testing.assert_allclose(yarn[23:], plain[23:] / 40, rtol=1e-6)
    assert np.all(yarn[11:23] < plain[11:23]) and np.all(yarn[11:23] > plain[11:23] / 40)


def test_tables_duplicate_halves_and_use_fp32_angles():
    p = dsref.config("v32").rope_params
    cos, sin = rope_tables(np.array([0, 1, 4095]), 64, p)
    assert cos.dtype == np.float32 and cos.shape == (3, 64)
    assert np.array_equal(cos[:, :32], cos[:, 32:]) and np.array_equal(sin[:, :32], sin[:, 32:])
    assert np.all(cos[0] == 1) and np.all(sin[0] == 0)
    angle = np.float32(4095) * rope_freqs(64, p)  # an fp32 product, then exact trig rounded once
    want = np.array([math.cos(float(a)) for a in angle], np.float32)
    assert np.array_equal(cos[2, :32], want)


def test_tables_agree_with_official_precompute_freqs_cis_in_torch():
    """The official ds32 formula run in torch: freqs bitwise, cos/sin within 1 fp32 ulp."""
    torch = pytest.importorskip("torch", reason="torch extra not installed")
    p = dsref.config("v32").rope_params
    dim, seqlen = 64, 4096
    freqs = 1.0 / (p.theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low, high = yarn_correction_range(dim, p)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    smooth = 1 - ramp
    freqs = freqs / p.factor * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(seqlen), freqs)
    cis = torch.polar(torch.ones_like(angles), angles)
    np.testing.assert_array_equal(rope_freqs(dim, p), freqs.numpy())
    cos, sin = rope_tables(np.arange(seqlen), dim, p)
    for ours, theirs in ((cos[:, :32], cis.real.numpy()), (sin[:, :32], cis.imag.numpy())):
        ulp = np.abs(ours.view(np.int32).astype(np.int64) - theirs.view(np.int32).astype(np.int64))
        assert ulp[np.sign(ours) == np.sign(theirs)].max() <= 1


def test_v4_tables_are_bf16_rows_per_token_and_element_layout():
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(V4, cfg, batch=2, seq=3, seed=1)
    assert ins["rope_cos"].dtype == ml_dtypes.bfloat16 and ins["rope_cos"].shape == (6, cfg.rope)
    assert np.all(ins["rope_cos"][0].astype(np.float32) == 1)  # token 0 sits at position 0
    el = dsref.make_inputs(V4, dsref.with_variants(cfg, rope_table="element"), batch=2, seq=3, seed=1)
    h = cfg.rope // 2
    assert np.array_equal(el["rope_cos"][:, 0::2], ins["rope_cos"][:, :h])
    assert np.array_equal(el["rope_cos"][:, 1::2], ins["rope_cos"][:, :h])


def test_dims_too_big_for_memory_are_refused_before_any_work(monkeypatch):
    import dsref.inputs as inputs

    monkeypatch.setattr(inputs, "available_memory", lambda: 2**30)
    with pytest.raises(dsref.InputError, match=r"batch=4096 seq=1: v32.decode_front at v32 has "
                                               r"\d+\.\d GiB of inputs .* 1\.0 GiB available"):
        dsref.make_inputs("v32.decode_front", dsref.config("v32"), batch=4096)
    monkeypatch.setattr(inputs, "available_memory", lambda: None)  # unknown: no guess
    assert dsref.make_inputs("v32.decode_front", dsref.config("v32-tiny"), batch=2)


def test_a_config_is_given_by_object_or_by_name_and_anything_else_is_named():
    by_name = dsref.make_inputs("v32.decode_front", "v32-tiny", batch=2, seed=3)
    by_cfg = dsref.make_inputs("v32.decode_front", dsref.config("v32-tiny"), batch=2, seed=3)
    assert by_name.keys() == by_cfg.keys()
    assert all(np.array_equal(by_name[k], by_cfg[k]) for k in by_cfg)
    with pytest.raises(ValueError, match=r"^config: v32.decode_front expects a V32Config \(or "
                                         r"its name\), got 'v4-tiny'$"):
        dsref.make_inputs("v32.decode_front", "v4-tiny", batch=2)
    with pytest.raises(ValueError, match=r"expects a V32Config \(or its name\), got int$"):
        dsref.make_inputs("v32.decode_front", 3, batch=2)


def test_v4_seq_past_the_rope_tables_is_refused():
    cfg = dsref.config("v4-tiny")
    with pytest.raises(dsref.InputError, match=rf"seq={cfg.max_pos + 1}: above v4-tiny's max_pos"):
        dsref.make_inputs("v4.qkv_proj_rope", cfg, batch=1, seq=cfg.max_pos + 1)


def test_normals_are_drawn_by_quantile_and_caches_rolled_per_entry(tmp_path):
    """INPUTS_VERSION 2: 16 random bits pick one of 65536 equiprobable N(0, 1) quantiles
    (checked against known quantiles and moments); each batch entry's cache block is one
    random block rolled by its own number of rows, so no row equals the same row of another
    entry's block; a golden records the version."""
    from dsref import inputs as di

    q = di._quantiles()
    assert q.shape == (65536,) and (np.diff(q) > 0).all()
    assert np.array_equal(q[:32768], -q[32768:][::-1])  # symmetric
    assert abs(q[int(0.975 * 65536)] - 1.959964) < 1e-3  # P(Z < 1.959964) = 0.975
    assert abs(q[-1] - 4.33) < 0.01  # the 1 - 1/131072 quantile: the largest value drawn
    z = di._normal(np.random.default_rng(0), (1_000_000,))
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs("v32.decode_front", cfg, batch=4, seed=0)
    blocks = ins["kv_cache"].reshape(4, cfg.max_seq, -1)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not (blocks[a] == blocks[b]).all(axis=1).any(), (a, b)
    d = tmp_path / "g"
    dsref.write_golden(d, "v32.decode_front", "v32-tiny", batch=2, seed=0)
    assert dsref.load_golden(d).meta["inputs_version"] == di.INPUTS_VERSION == 2


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32, np.int8])
def test_chunked_draws_are_the_one_draw_they_stand_for(dtype):
    """The bits of INPUTS_VERSION 2, written out plainly: all the uint16s of one draw of
    ``ceil(n / 4)`` PCG64 outputs, each indexing the table. The generator draws and looks up in
    chunks; across chunk boundaries and a tail that is not a multiple of 4 it must give the
    same bits, in aligned storage. The cache and dispatch blocks are np.roll's rolls."""
    from dsref import inputs as di
    from dsref.run import HOST_ALIGN

    table = (di._quantiles() * 3.0).astype(np.float32).astype(dtype)
    shape = (3, di.DRAW_CHUNK - 1)  # 3 chunks less 3 elements: two boundaries and a tail
    n = math.prod(shape)
    raw = np.random.default_rng(5).bit_generator.random_raw(-(-n // 4))
    want = table[raw.astype("<u8").view("<u2")[:n]].reshape(shape)
    got = di._draw(np.random.default_rng(5), table, shape)
    assert got.dtype == table.dtype and got.ctypes.data % HOST_ALIGN == 0
    assert got.tobytes() == want.tobytes()

    rng = np.random.default_rng(6)
    block = rng.standard_normal((4, 32)).astype(ml_dtypes.bfloat16)
    shifts = np.array([1, 31, 0, 7])
    for axis in (0, 1):
        ks = shifts % block.shape[axis]
        want = np.stack([np.roll(block, int(k), axis=axis) for k in ks])
        assert di._rolled(block, ks, axis=axis).tobytes() == want.tobytes()
    rows = di._cache(np.random.default_rng(7), 3, 16, 8)
    blk = di._normal(np.random.default_rng(7), (16, 8), dtype=ml_dtypes.bfloat16)
    rng = np.random.default_rng(7)
    di._normal(rng, (16, 8), dtype=ml_dtypes.bfloat16)
    want = np.concatenate([np.roll(blk, int(s), axis=0) for s in rng.permutation(16)[:3]])
    assert rows.tobytes() == want.tobytes()


def test_given_seq_lens_change_only_seq_lens():
    cfg = dsref.config("v32-tiny")
    drawn = dsref.make_inputs("v32.decode_front", cfg, batch=3, seed=4)
    given = dsref.make_inputs("v32.decode_front", cfg, batch=3, seed=4, seq_lens=[64, 2, 1])
    assert given["seq_lens"].dtype == np.int32 and given["seq_lens"].tolist() == [64, 2, 1]
    for name, a in drawn.items():
        if name != "seq_lens":
            assert np.array_equal(a.view(np.uint8), given[name].view(np.uint8)), name
    ranged = dsref.make_inputs("v32.decode_front[sparse_attn]", cfg, batch=3, seed=4,
                               seq_lens=[64, 2, 1])
    assert ranged["seq_lens"].tolist() == [64, 2, 1]


@pytest.mark.parametrize("seq_lens,why", [([1, 2], "expected 3 integers"),
                                          ([0, 1, 1], "must lie in [1, 64]"),
                                          ([1, 1, 65], "must lie in [1, 64]"),
                                          ([1.0, 1.0, 1.0], "expected 3 integers")])
def test_given_seq_lens_are_checked(seq_lens, why):
    with pytest.raises(dsref.InputError, match=re.escape(why)):
        dsref.make_inputs("v32.decode_front", dsref.config("v32-tiny"), batch=3,
                          seq_lens=seq_lens)
    with pytest.raises(dsref.InputError, match="V4 inputs have no per-entry"):
        dsref.make_inputs("v4.qkv_proj_rope", dsref.config("v4-tiny"), batch=1, seq_lens=[1])


def test_large_inputs_are_aligned_so_a_run_takes_them_without_a_copy():
    """make_inputs' weights and caches sit on 64-byte boundaries, which XLA CPU takes as they
    are (a one-shot dsref.run copied ~180 MB per call before); an unaligned or strided array is
    copied into an aligned buffer first, with the same values."""
    from dsref.run import HOST_ALIGN, to_device

    ins = dsref.make_inputs("v32.decode_front", "v32-tiny", batch=2, seed=0)
    for name in ("wq_a", "wq_b", "wkv_a", "kv_cache", "pe_cache", "w_latent_to_v"):
        assert ins[name].ctypes.data % HOST_ALIGN == 0, name
    w = ins["wq_b"]
    assert to_device(w).unsafe_buffer_pointer() == w.ctypes.data
    raw = np.zeros(w.nbytes + 8, np.uint8)
    shifted = raw[8:].view(w.dtype).reshape(w.shape)  # 8 bytes off an aligned base
    shifted[...] = w
    for a in (shifted, np.asfortranarray(w)):
        d = to_device(a)
        assert d.unsafe_buffer_pointer() != a.ctypes.data
        assert np.asarray(d).view(np.uint16).tobytes() == w.view(np.uint16).tobytes()
