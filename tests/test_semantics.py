"""Named semantics: every known divergence is a variant, presets bundle them, each preset's
chain is bit-identical to the independent numpy oracle, and the new rounding blocks (FP8
e4m3 quantise-dequantise, the bf16 per-head norm) agree with brute force."""

import jax
import ml_dtypes
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise

import dsref
from dsref.config import MODEL_VARIANTS, SEMANTICS, VARIANTS
from dsref.numerics import x64
from dsref.quant import fp8_qdq_blocks
from dsref.rmsnorm import head_norm_bf16

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"
TINY = {V32: ("v32-tiny", dict(batch=16)), V4: ("v4-tiny", dict(batch=3, seq=2))}
BF16 = ml_dtypes.bfloat16
PRESET_CASES = [(m, n) for m in (V32, V4) for n in dsref.semantics_names(m)]


@pytest.mark.parametrize("model,name", PRESET_CASES, ids=str)
def test_every_preset_chain_is_bitwise_the_oracle(model, name):
    cfg_name, kw = TINY[model]
    cfg = dsref.config(cfg_name, semantics=name)
    ins = dsref.make_inputs(model, cfg, seed=5, **kw)
    got = dsref.run(model, cfg, ins)
    want = oracle.chain(model, cfg, ins)
    for k, v in got.items():
        assert_bitwise(v, want[k], f"{name}: {k}")


def test_with_semantics_sets_every_variant_and_refuses_other_models():
    cfg = dsref.config("v32-tiny", cast="rhaz", rope_layout="interleaved")
    pr = dsref.with_semantics(cfg, "pypto-lib-pr134")
    indexer = {"index_input": "normed", "index_score": "relu", "index_weights": "bf16",
               "attn_scale": "yarn", "q_latent": "bf16", "attn_probs": "bf16"}  # ds32's
    assert dsref.variant_values(pr) == {"rmsnorm": "ds32", "variance": "mul_inv", "cast": "rhaz",
                                        "accumulate": "exact", "rope_layout": "half",
                                        "q_norm_input": "fp32", **indexer}
    assert dsref.semantics_of(pr) == "pypto-lib-pr134"
    # HEAD's decode_front.py is PR #134 in scope 1, with an indexer and attention of its own
    head = dsref.variant_values(dsref.with_semantics(cfg, "pypto-lib-head"))
    assert head == {**dsref.variant_values(pr), "index_input": "hidden",
                    "index_score": "reduce_q", "index_weights": "fp32", "attn_scale": "plain",
                    "q_latent": "fp32", "attn_probs": "exact"}
    assert dsref.semantics_of(dsref.with_semantics(cfg, "ds32")) == "ds32"
    assert dsref.semantics_of(cfg) is None
    # --variant on top of --semantics
    on_top = dsref.config("v32-tiny", semantics="pypto-lib-pr134", cast="rne")
    assert on_top.cast == "rne" and on_top.q_norm_input == "fp32"
    with pytest.raises(ValueError, match="'cann' does not apply to v32.decode_front"):
        dsref.with_semantics(cfg, "cann")
    with pytest.raises(ValueError, match="semantics: expected one of"):
        dsref.config("v4-tiny", semantics="nope")


def test_presets_cite_public_sources_and_use_real_variants():
    for sem in SEMANTICS.values():
        assert sem.sources and sem.variants
        for src in sem.sources:
            assert "../" not in src and not src.endswith(".md")
            assert src.split(" ")[0].count("/") == 1  # owner/repo first
        for model, values in sem.variants.items():
            for k, v in values.items():
                assert k in MODEL_VARIANTS[model] and v in VARIANTS[k] and v != VARIANTS[k][0]
    v4 = SEMANTICS["deepseek-v4-official"].variants[V4]
    assert v4 == {"proj_out": "bf16", "q_head_norm": "bf16", "rope_preround": True,
                  "kv_nope_fp8": True, "rope_table_dtype": "fp32"}
    assert SEMANTICS["pypto-lib-head"].variants[V4]["qr_prequant_round"] is False
    assert "fp8" in SEMANTICS["deepseek-v4-official"].unmodelled.lower()


def test_official_v4_tables_are_fp32_inputs():
    cfg = dsref.config("v4-tiny", semantics="deepseek-v4-official")
    ins = dsref.make_inputs(V4, cfg, batch=2, seq=1, seed=0)
    assert ins["rope_cos"].dtype == np.float32 and ins["rope_sin"].dtype == np.float32
    base = dsref.make_inputs(V4, dsref.config("v4-tiny"), batch=2, seq=1, seed=0)
    assert not np.array_equal(ins["rope_cos"], base["rope_cos"].astype(np.float32))
    assert np.array_equal(ins["rope_cos"].astype(BF16), base["rope_cos"])
    with pytest.raises(dsref.InputError, match="rope_cos: expected dtype float32"):
        dsref.run(V4, cfg, base)


# ---- PR #134's q_norm: variance of the fp32 qr ------------------------------------------------


def test_pr134_q_norm_moves_about_one_percent_of_qr_out_at_full_dims():
    """The documented divergence (~0.9% of qr_out), now a selectable variant. QL = 1536."""
    cfg = dsref.config("v32")
    ins = dsref.make_inputs(V32, cfg, batch=8, seed=0)
    (normed,) = dsref.run_stage("input_rmsnorm", cfg, ins["hidden_states"], ins["input_rms_weight"])
    pr = dsref.with_variants(cfg, q_norm_input="fp32")
    (qr32,) = dsref.run_stage("q_lora_proj", pr, normed, ins["wq_a"])
    (qr_bf,) = dsref.run_stage("q_lora_proj", cfg, normed, ins["wq_a"])
    assert qr32.dtype == np.float32 and qr_bf.dtype == BF16
    assert np.array_equal(qr32.astype(BF16), qr_bf)  # same sum, rounded once to bf16 later
    (a,) = dsref.run_stage("q_lora_rmsnorm", cfg, qr_bf, ins["q_norm_weight"])
    (b,) = dsref.run_stage("q_lora_rmsnorm", pr, qr32, ins["q_norm_weight"])
    moved = (a != b).mean()
    assert 0.002 < moved < 0.03, moved
    want = oracle.q_lora_rmsnorm(pr, {"qr_raw": qr32, "q_norm_weight": ins["q_norm_weight"]})
    assert_bitwise(b, want["qr_out"], "qr_out")


# ---- FP8 e4m3 quantise-dequantise (kv_nope_fp8) ------------------------------------------------


def _fp8(v: np.ndarray) -> np.ndarray:
    with x64():
        return np.asarray(jax.jit(fp8_qdq_blocks)(np.asarray(v, np.float32).astype(np.float64)))


def test_fp8_qdq_agrees_with_the_oracle_on_edge_blocks():
    rng = np.random.default_rng(0)
    rows = [
        rng.standard_normal(128) * 10.0 ** rng.uniform(-3, 2),
        np.zeros(128),  # amax floor 1e-4: scale 2**-22, codes 0
        np.full(128, 1.75 * 2.0**-3) * np.sign(rng.standard_normal(128)),  # amax/448 a power of 2
        np.concatenate([np.full(64, 448.0), np.linspace(-3, 3, 64)]),
        rng.standard_normal(128) * 1e-6,  # below the floor: e4m3 subnormals and zeros
        np.concatenate([[-0.0], rng.standard_normal(127)]),
    ]
    x = np.stack(rows).astype(np.float32).astype(BF16).astype(np.float32)
    got = _fp8(x)
    want = oracle.fp8_qdq(x).astype(np.float64)
    assert_bitwise(got, want, "fp8_qdq")
    assert np.all(got[1] == 0)
    # the power-of-two block keeps its scale 2**-11 (amax/448 = 2**-11 exactly): codes 0.875·2**-1·2**11
    assert np.all(np.abs(got[2]) == 1.75 * 2.0**-3)


def test_fp8_scale_formulas_agree_for_every_bf16_amax():
    """Official: 2**ceil(log2(f32(amax · f32(1/448)))) from the fp32 bits; the brief's
    2**ceil(log2(amax / 448)) in exact arithmetic: equal for every positive bf16 amax ≥ 1e-4."""
    words = np.arange(0x0001, 0x7F80, dtype=np.uint16)  # every positive finite bf16
    amax = words.view(BF16).astype(np.float32)
    amax = amax[amax >= np.float32(1e-4)]
    bits = (amax * np.float32(1 / 448)).astype(np.float32).view(np.uint32)
    official = ((bits >> 23) & 0xFF).astype(np.int64) - 127 + ((bits & 0x7FFFFF) != 0)
    # the smallest k with 448·2**k >= amax, by exact float64 comparisons (448·2**k is exact)
    a64 = amax.astype(np.float64)
    k = np.ceil(np.log2(a64 / 448)).astype(np.int64)
    k = np.where(np.ldexp(448.0, k) < a64, k + 1, k)
    k = np.where(np.ldexp(448.0, k - 1) >= a64, k - 1, k)
    assert np.all(np.ldexp(448.0, k) >= a64) and np.all(np.ldexp(448.0, k - 1) < a64)
    assert np.array_equal(official, k)


def test_a_floor_scale_would_be_caught():
    """Planted bug: ``2**floor(log2(·))`` (codes up to 2x over 448, clamped) moves elements."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 64)) * 3).astype(np.float32).astype(BF16).astype(np.float32)
    amax = np.abs(x).max(axis=1, keepdims=True)
    s = np.ldexp(np.float32(1), np.floor(np.log2(amax / 448)).astype(int)).astype(np.float32)
    bad = (np.clip(x / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * s)
    assert (bad.astype(BF16).astype(np.float64) != _fp8(x)).any()


# ---- the official per-head q norm in bf16 arithmetic (q_head_norm) -----------------------------


def test_head_norm_bf16_is_bitwise_the_oracle_and_differs_from_fp32():
    rng = np.random.default_rng(1)
    q = (rng.standard_normal((6, 4, 512)) * 3).astype(np.float32).astype(BF16)
    with x64():
        got = np.asarray(jax.jit(lambda v: head_norm_bf16(v, eps=1e-6))(
            q.astype(np.float64)))
    want = oracle.head_norm_bf16(q.astype(np.float32), 1e-6, "mean", "rne").astype(np.float64)
    assert_bitwise(got, want, "head_norm_bf16")
    fp32 = oracle.bf16(q.astype(np.float32) * oracle.inv_rms(q, 1e-6)).astype(np.float64)
    moved = (got != fp32).mean()
    assert 0.01 < moved < 0.9, moved  # three extra bf16 roundings move some elements
    # HD = 512: torch's CUDA mean (sum · (1/N)) and CPU mean (sum / N) agree
    with x64():
        mul = np.asarray(head_norm_bf16(q.astype(np.float64), eps=1e-6, variance="mul_inv"))
    assert np.array_equal(mul, got)


def test_official_v4_stages_differ_from_pr332_where_the_code_says():
    cfg = dsref.config("v4-tiny")
    off = dsref.config("v4-tiny", semantics="deepseek-v4-official")
    ins = dsref.make_inputs(V4, off, batch=2, seq=2, seed=4)
    a = dsref.run(V4, cfg, {**ins, "rope_cos": ins["rope_cos"].astype(BF16),
                            "rope_sin": ins["rope_sin"].astype(BF16)})
    b = dsref.run(V4, off, ins)
    for k in ("q", "kv", "qr"):  # (qr_scale: a row's amax rarely moves)
        assert not np.array_equal(a[k], b[k]), k
    kv_nope = b["kv"][:, : off.nope].astype(np.float32).reshape(-1, 64)
    amax = np.abs(kv_nope).max(axis=1, keepdims=True)
    s = np.ldexp(np.float32(1), np.ceil(np.log2(np.maximum(amax, 1e-4) / 448)).astype(int))
    codes = kv_nope / s
    assert np.array_equal(codes, codes.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))


# ---- the dsref command line ---------------------------------------------------------------------


def test_dsref_list_and_spec_print_presets_with_sources(capsys):
    from dsref.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SEMANTICS:
        assert f"  {name} [" in out
    assert "deepseek-ai/DeepSeek-V4-Flash · inference/model.py" in out
    assert "models/deepseek_v3_2/decode_front.py" in out
    assert main(["spec", "v4.qkv_proj_rope"]) == 0
    out = capsys.readouterr().out
    assert "Named semantics (--semantics NAME):" in out and "deepseek-v4-official [" in out
    assert main(["spec", "q_lora_rmsnorm"]) == 0
    out = capsys.readouterr().out
    assert "pypto-lib-pr134 [" in out and "q_norm_input" in out and "cann [" not in out


def test_dsref_run_takes_semantics_and_variants(capsys):
    from dsref.cli import main

    assert main(["run", "v32.decode_front", "--config", "v32-tiny", "--batch", "2",
                 "--semantics", "pypto-lib-pr134"]) == 0
    assert "semantics=pypto-lib-pr134" in capsys.readouterr().out
    assert main(["run", "v32.decode_front", "--config", "v32-tiny", "--batch", "2",
                 "--semantics", "pypto-lib-pr134", "--variant", "cast=rne"]) == 0
    assert "semantics=custom" in capsys.readouterr().out
    assert main(["run", "v32.decode_front", "--config", "v32-tiny", "--semantics", "cann"]) == 2
    assert "does not apply to v32.decode_front" in capsys.readouterr().err


def test_dsref_spec_and_golden_follow_semantics(capsys, tmp_path):
    from dsref.cli import main

    assert main(["spec", "q_lora_proj", "--semantics", "pypto-lib-pr134", "--json"]) == 0
    d = __import__("json").loads(capsys.readouterr().out)
    assert d["shapes"]["outputs"]["qr_raw"]["dtype"] == "float32"  # PR #134's fp32 qr
    assert main(["spec", "q_lora_proj", "--json"]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["shapes"] is None
    assert main(["golden", "v32.decode_front", "--config", "v32-tiny", "--batch", "2", "--seed",
                 "0", "--out", str(tmp_path), "--semantics", "pypto-lib-pr134", "--quiet"]) == 0
    g = dsref.load_golden(tmp_path)
    assert g.meta["semantics"] == "pypto-lib-pr134" and g.meta["variants"]["q_norm_input"] == "fp32"
