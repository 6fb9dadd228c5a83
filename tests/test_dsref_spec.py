"""The spec registry: every stage, helper op and model has a complete, renderable spec."""

import json

import pytest

import dsref
from dsref.config import MODEL_VARIANTS, VARIANTS
from dsref.model import MODELS, STAGES
from dsref.spec import KINDS

ALL = dsref.spec_names()
JSON_KEYS = {"name", "kind", "model", "summary", "formula", "dtype_flow", "shapes", "sources",
             "divergences", "variants", "semantics"}
OPS = {"rms_norm", "inv_rms", "rope", "quant_int8", "proj_bf16", "proj_f32", "proj_int8",
       "cache_write", "to_bf16", "r32", "fp8_qdq", "head_norm_bf16", "rope_interleave"}
# primitives each helper op's jaxpr must show (the rounding point, or the scatter of a cache write)
OP_PRIMITIVES = {name: ("reduce_precision",) for name in OPS} | {"cache_write": ("scatter",)}
OP_PRIMITIVES["proj_int8"] = ("dot_general", "reduce_precision")
OP_PRIMITIVES["to_bf16"] = ("reduce_precision[exponent_bits=8 mantissa_bits=7]",)
OP_PRIMITIVES["r32"] = ("reduce_precision[exponent_bits=8 mantissa_bits=23]",)
OP_PRIMITIVES["rope_interleave"] = ("mul",)  # a gather and a sign flip: nothing to round


def test_registry_covers_every_stage_op_and_model():
    assert set(dsref.spec_names("stage")) == set(STAGES)
    assert set(dsref.spec_names("model")) == set(MODELS)
    assert set(dsref.spec_names("op")) == OPS
    assert sorted(ALL) == sorted(sum((dsref.spec_names(k) for k in KINDS), []))


@pytest.mark.parametrize("name", ALL)
def test_spec_content(name):
    s = dsref.spec(name)
    assert s.name == name and s.kind in KINDS
    assert len(s.summary) > 20 and s.formula.strip()
    assert len(s.dtype_flow) >= 2
    assert all(st.step and st.dtype and st.rounding for st in s.dtype_flow)
    assert any(t in st.dtype for st in s.dtype_flow for t in ("bf16", "fp32", "int8"))
    assert s.sources and all(src.repo and src.file and src.function for src in s.sources)
    if s.kind != "op":  # the variants listed apply to the model
        assert {v.name for v in s.variants} <= set(MODEL_VARIANTS[s.model])
    for v in s.variants:
        assert v.values == VARIANTS[v.name] and v.default == VARIANTS[v.name][0]
        assert v.source and v.effect


@pytest.mark.parametrize("name", ALL)
def test_spec_renders_text_json_markdown(name):
    s = dsref.spec(name)
    text = s.to_text()
    assert text.startswith(name) and "Formula:" in text and "Dtype flow:" in text
    assert s.sources[0].repo in text and str(s) == text
    d = json.loads(s.to_json())
    assert set(d) == JSON_KEYS and d["shapes"] is None
    assert d["dtype_flow"][0] == {"step": s.dtype_flow[0].step, "dtype": s.dtype_flow[0].dtype,
                                  "rounding": s.dtype_flow[0].rounding}
    assert d["sources"][0]["repo"] == s.sources[0].repo
    md = s._repr_markdown_()
    assert md.startswith(f"### `{name}`") and "**Dtype flow**" in md and "| step | dtype | rounding |" in md


#: stages that round nothing, and the primitive that does their work
MOVES_ONLY = {"k_idx_cache_write": "scatter", "dispatch": "scatter", "index_topk": "sort"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_jaxpr_and_shapes(name):
    s = dsref.spec(name)
    text = s.jaxpr()  # the model's tiny config
    assert text.startswith(f"let {name} = {{ lambda ;") or f"name={name}" in text
    assert MOVES_ONLY.get(name, "reduce_precision") in text  # its rounding point, or its move
    shapes = s.shapes()
    assert list(shapes["inputs"]) == list(STAGES[name].inputs)
    assert list(shapes["outputs"]) == list(STAGES[name].outputs)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_jaxpr(name):
    text = dsref.spec(name).jaxpr()
    for prim in OP_PRIMITIVES[name]:
        assert prim in text, prim


@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_jaxpr_names_every_stage(model):
    text = dsref.spec(model).jaxpr()
    for stage in MODELS[model].stages:
        assert f"name={stage}" in text


def test_shapes_follow_the_config():
    sh = dsref.spec("q_rope").shapes("v32")  # H=128, NOPE=128, ROPE=64, MAX_SEQ=4096
    assert sh["inputs"]["q"] == {"shape": [2, 128 * 192], "dtype": "bfloat16"}
    assert sh["inputs"]["rope_cos"] == {"shape": [4096, 64], "dtype": "float32"}
    assert sh["outputs"]["q_pe_out"]["shape"] == [2, 128 * 64]
    sh = dsref.spec("qr_quant").shapes("v4-flash", batch=3, seq=2)
    assert sh["outputs"] == {"qr": {"shape": [6, 1024], "dtype": "int8"},
                             "qr_scale": {"shape": [6, 1], "dtype": "float32"}}
    sh = dsref.spec("v4.qkv_proj_rope").shapes("v4-pro")
    assert sh["inputs"]["wq_b"] == {"shape": [1536, 128 * 512], "dtype": "int8"}
    assert "bf16[2,1536]" in dsref.spec("input_rmsnorm").jaxpr()  # v32-tiny: D = 1536
    assert "bf16[2,7168]" in dsref.spec("input_rmsnorm").jaxpr("v32")


def test_shapes_in_json_and_text_with_a_config():
    s = dsref.spec("kv_rmsnorm")
    d = json.loads(s.to_json("v32-tiny"))
    assert d["config"] == "v32-tiny"
    assert d["shapes"]["outputs"]["kv_normed"] == {"shape": [2, 160], "dtype": "bfloat16"}
    assert "Shapes (v32-tiny)" in s.to_text("v32-tiny")
    assert "reduce_precision" in json.loads(s.to_json(jaxpr=True))["jaxpr"]


def test_op_jaxpr_follows_the_config_variants():
    rne = dsref.spec("rms_norm").jaxpr("v32-tiny")
    hf = dsref.spec("rms_norm").jaxpr(dsref.config("v32-tiny", rmsnorm="hf"))
    assert hf.count("mantissa_bits=7") > rne.count("mantissa_bits=7")  # two bf16 roundings


def test_semantics_content_is_recorded():
    """Concrete facts of the semantics land in the specs they belong to."""
    divs = lambda n: " ".join(f"{d.who} {d.what} {d.elements}" for d in dsref.spec(n).divergences)  # noqa: E731
    assert "~0.9% of qr_out" in divs("q_lora_rmsnorm")
    assert "~22% of rows" in divs("qr_quant") and "127·(1/amax)" in divs("qr_quant")
    assert "~24% of elements" in divs("rms_norm")
    assert "cross-head race" in divs("q_head_rms_rope") and "T_TILE = T // 2" in divs("q_head_rms_rope")
    assert "FP8 e4m3" in divs("v4.qkv_proj_rope")
    assert "x + residual" in divs("input_rmsnorm")
    prequant = {v.name: v for v in dsref.spec("qr_quant").variants}["qr_prequant_round"]
    assert "~3.7% of codes" in prequant.effect and "PR #556" in prequant.source
    src = {(s.repo, s.function) for s in dsref.spec("input_rmsnorm").sources}
    assert ("deepseek-ai/DeepSeek-V3.2-Exp", "RMSNorm") in src
    assert any(s.repo == "hw-native-sys/pypto-lib" and "PR #332" in s.note
               for s in dsref.spec("qr_rms").sources)
    assert "sq = 127 / amax" in dsref.spec("qr_quant").formula
    assert "int8(fp16(int32_rne(v · sq)))" in dsref.spec("quant_int8").formula
    assert "bf16(x_lo·c_lo − x_hi·s_lo)" in dsref.spec("q_rope").formula


def test_model_spec_lists_the_stage_chain():
    s = dsref.spec("v32.decode_front")
    lines = s.formula.splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(MODELS["v32.decode_front"].stages)
    assert "decode_cache_write: (kv_normed, kv_a_out, seq_lens" in s.formula
    assert {v.name for v in s.variants} == set(MODEL_VARIANTS["v32.decode_front"])


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown name 'rmsnorm'; did you mean rms_norm"):
        dsref.spec("rmsnorm")
    with pytest.raises(ValueError, match=r"did you mean v32.decode_front"):
        dsref.spec("v32.decode")
    with pytest.raises(ValueError, match=r"known names: input_rmsnorm"):
        dsref.spec("zzzz")


def test_config_of_another_model_is_an_error():
    with pytest.raises(ValueError, match=r"spec q_rope: config 'v4-tiny' is a v4.qkv_proj_rope config"):
        dsref.spec("q_rope").jaxpr("v4-tiny")
    with pytest.raises(ValueError, match="config: expected one of"):
        dsref.spec("q_rope").shapes("v5")


def test_docs_semantics_md_is_the_registry_rendered(capsys):
    """docs/semantics.md, the contract a user reads, is `dsref spec all --markdown` verbatim:
    every stage, op, model, variant and named semantics, each with its sources."""
    from pathlib import Path

    from dsref.cli import main
    from dsref.spec import contract_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "semantics.md").read_text()
    text = contract_markdown()
    assert doc == text, "docs/semantics.md is stale: dsref spec all --markdown > docs/semantics.md"
    for name in ALL:
        assert f"### `{name}`" in text
    for key in VARIANTS:
        assert f"| `{key}` |" in text
    for sem in dsref.SEMANTICS:
        assert f"| `{sem}` |" in text
    assert main(["spec", "all", "--markdown"]) == 0
    assert capsys.readouterr().out == text
    assert main(["spec", "all"]) == 2
    assert "only with --markdown" in capsys.readouterr().err
    assert main(["spec", "q_rope", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("### `q_rope` (stage, `v32.decode_front`)")


def test_a_stage_range_has_a_spec_of_its_own():
    s = dsref.spec("v4.qkv_proj_rope[qr_proj_matmul:]")
    assert s.kind == "model" and s.model == "v4.qkv_proj_rope"
    assert "inputs tok, wq_a, gamma_cq" in s.summary and "tok is also x / x_normed" in s.summary
    assert s.formula.startswith("qr_proj_matmul: qr32 = tok @ wq_a")
    assert s.formula.count("\n") >= 6 and "kv_rms_rope:" in s.formula
    shapes = s.shapes("v4-tiny", batch=3)
    assert shapes["inputs"]["tok"] == {"shape": [3, 1536], "dtype": "bfloat16"}
    assert set(shapes["outputs"]) == {"q", "kv", "qr", "qr_scale"}
    assert "name=qr_proj_matmul" in s.jaxpr() and "name=attn_norm" not in s.jaxpr()
    one = dsref.spec("v4.qkv_proj_rope[attn_norm]")
    assert any("rmsnorm.py" in src.file for src in one.sources)
    assert [v.name for v in one.variants] == [v.name for v in dsref.spec("attn_norm").variants]
