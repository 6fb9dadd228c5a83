"""The queryable spec: what every stage, helper op and model computes, and where it comes from.

``dsref.spec(name)`` returns a :class:`Spec` for a stage (``q_rope``), a helper op
(``rms_norm``) or a model (``v32.decode_front``): summary, formula in plain math, dtype flow
with every rounding point, shapes for a config, public sources, the known
divergences of other implementations (measured against their code) and the variants that
apply. Looking a spec up does no JAX work; :meth:`Spec.jaxpr` and :meth:`Spec.shapes` trace.

Notation: ``f32(v)`` widen to fp32 (exact); ``bf16(v)`` round fp32 → bf16, RNE
unless ``cast="rhaz"``; ``sum`` the exact sum rounded once to fp32; ``@`` products summed
exactly and rounded once to fp32 (int32 for int8, exact); every other fp32 op one correctly
rounded IEEE operation, in the order written. eps = 1e-6.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from dsref.config import (
    MODEL_VARIANTS,
    SEMANTICS,
    VARIANTS,
    Config,
    Semantics,
    config,
    config_names,
    semantics_names,
)
from dsref.model import MODELS, STAGES, get_model
from dsref.numerics import x64

KINDS = ("stage", "op", "model")


@dataclass(frozen=True)
class Source:
    """An implementation the spec follows: repository, file, function, and what is taken."""

    repo: str
    file: str
    function: str
    note: str = ""


@dataclass(frozen=True)
class Divergence:
    """How another implementation differs, who does it, and roughly how many elements move."""

    who: str
    what: str
    elements: str


@dataclass(frozen=True)
class Step:
    """One step of the dtype flow: a tensor or operation, its dtype, its rounding."""

    step: str
    dtype: str
    rounding: str


@dataclass(frozen=True)
class Variant:
    """A named semantic variant (a config field): values, default, source and effect."""

    name: str
    source: str
    effect: str

    @property
    def values(self) -> tuple[Any, ...]:
        return VARIANTS[self.name]

    @property
    def default(self) -> Any:
        return VARIANTS[self.name][0]


# ---------------------------------------------------------------------------------------------
# Sources, divergences and variants
# ---------------------------------------------------------------------------------------------

_DS32_REPO, _DS32_FILE = "deepseek-ai/DeepSeek-V3.2-Exp", "inference/model.py"
DS32_RMSNORM = Source(_DS32_REPO, _DS32_FILE, "RMSNorm", "ds32: weight applied in fp32, one rounding")
DS32_ROPE = Source(_DS32_REPO, _DS32_FILE, "apply_rotary_emb", "ds32: interleaved pairs")
DS32_FREQS = Source(_DS32_REPO, _DS32_FILE, "precompute_freqs_cis", "RoPE tables, YaRN")
DS32_MLA = Source(_DS32_REPO, _DS32_FILE, "MLA.forward", "ds32: Linear outputs are bf16")
V4_OFFICIAL = Source("deepseek-ai/DeepSeek-V4-Flash", "inference/model.py",
                     "Attention.forward, RMSNorm, apply_rotary_emb",
                     "the model the V4 kernels implement (preset deepseek-v4-official)")
V4_OFFICIAL_QUANT = Source("deepseek-ai/DeepSeek-V4-Flash", "inference/kernel.py",
                           "act_quant_kernel (inplace, round_scale), fast_round_scale",
                           "FP8 e4m3 quantise-dequantise, ue8m0 scale 2^ceil(log2(amax·f32(1/448)))")
PR134_HEAD = Source("hw-native-sys/pypto-lib", "models/deepseek_v3_2/decode_front.py",
                    "Stage 1.3 q_norm", "HEAD: variance of qr_fp32, normalises bf16(qr) "
                    "(variant q_norm_input=fp32)")
PR134 = Source("hw-native-sys/pypto-lib", "models/deepseek/v3_2/deepseek_v3_2_decode_front.py",
               "decode front, scope 1",
               "PR #134 kernel and its torch golden: layout, tensor names, half RoPE")
PR332 = Source("hw-native-sys/pypto-lib", "models/deepseek/v4-flash/qkv_proj_rope.py",
               "qkv_proj_rope", "PR #332 kernel and its torch golden: default V4 semantics")
HEAD_RMSNORM = Source("hw-native-sys/pypto-lib", "models/deepseek_v4_*/rmsnorm.py", "rms_norm",
                      "HEAD 634e77bd: attn_norm is its own kernel, x [T, D] -> x_normed, with a "
                      "bf16 norm_w (widened to fp32 exactly); run it as v4.qkv_proj_rope[attn_norm]")
HEAD_QKV = Source("hw-native-sys/pypto-lib", "models/deepseek_v4_*/qkv_proj_rope.py",
                  "qkv_proj_rope", "HEAD 634e77bd: starts from the normalised token, named x "
                  "[T, D]: v4.qkv_proj_rope[qr_proj_matmul:]")
HEAD_ROPE_IL = Source("hw-native-sys/pypto-lib", "models/deepseek_v4_flash_*/rope_interleave.py",
                      "rope_interleave", "HEAD 634e77bd: the half tables expanded once per "
                      "layer, the sign folded into sin")
PR556 = Source("hw-native-sys/pypto-lib", "models/deepseek/v4-flash/qkv_proj_rope.py",
               "qkv_proj_rope", "after PR #556: qr quantised from fp32")
HF_V3 = Source("huggingface/transformers",
               "src/transformers/models/deepseek_v3/modeling_deepseek_v3.py", "DeepseekV3RMSNorm",
               "two-rounding RMSNorm (variant rmsnorm=hf)")
CANN = Source("hicann/cann-recipes-infer", "mla_prolog reference", "mla_prolog",
              "CANN: qr quantised from fp32, bf16 before RoPE, element-wise tables")
PINNING = Source("dsref", "dsref/numerics.py", "Pinning the rounding points",
                 "values carried in float64, reduce_precision after every fp32 op")

# V3.2 scopes 2-4: the indexer, top-k and sparse MLA attention
_HEAD_V32_FILE = "models/deepseek_v3_2/decode_front.py"
HEAD_V32_S2 = Source("hw-native-sys/pypto-lib", _HEAD_V32_FILE, "scope 2, Stage 2.1-2.8",
                     "HEAD 634e77bd kernel: indexer q/k, LayerNorm, half RoPE, Hadamard as a bf16 "
                     "matrix, fp32 weights, k_cache_idx write, heads reduced into one query")
HEAD_V32_S3 = Source("hw-native-sys/pypto-lib", _HEAD_V32_FILE, "scope 3, Stage 3.0-3.4",
                     "HEAD 634e77bd kernel: scores, sort32 + mrgsort (stable), top-k padded with "
                     "INT32_MIN")
HEAD_V32_S4 = Source("hw-native-sys/pypto-lib", _HEAD_V32_FILE, "scope 4",
                     "HEAD 634e77bd kernel: absorbed q_nope (fp32), online fp32 softmax, V "
                     "projection, dispatch")
HEAD_V32_GOLDEN = Source("hw-native-sys/pypto-lib", _HEAD_V32_FILE, "golden_decode_front_scope1234",
                         "HEAD 634e77bd torch golden of scopes 1-4")
DS32_INDEXER = Source(_DS32_REPO, _DS32_FILE, "Indexer.forward",
                      "ds32 @ 3b99a53: [rope | nope] split, k_norm, rotate_activation, FP8 q / k, "
                      "fp8_index, topk(min(index_topk, end_pos))")
DS32_LAYERNORM = Source(_DS32_REPO, _DS32_FILE, "LayerNorm",
                        "F.layer_norm(x.float(), weight, bias, eps=1e-6).type_as(x): bf16 out")
DS32_HADAMARD = Source(_DS32_REPO, _DS32_FILE, "rotate_activation",
                       "fast_hadamard_transform.hadamard_transform(x, scale=ID^-0.5), bf16 in / out")
DS32_MLA_DECODE = Source(_DS32_REPO, _DS32_FILE, "MLA.forward (decode branch), softmax_scale",
                         "absorbed q_nope (bf16 einsum), YaRN softmax_scale, fp32 softmax, bf16 "
                         "probabilities")
DS32_FP8_INDEX = Source(_DS32_REPO, "inference/kernel.py", "fp8_index",
                        "Σ_h relu(q8_h · k8_t) · w_h, then · k_scale[t]")
DS32_ACT_QUANT = Source(_DS32_REPO, "inference/kernel.py", "act_quant",
                        "e4m3, ue8m0 scale per 128-block (one per indexer head row)")
DS32_ROPE_FIX = Source("vllm-project/vllm", "PR #28968", "[DeepSeek] Fix DeepSeek V3.2 Rope Embedding",
                       "DeepSeek's Nov 2025 fix: the indexer RoPE is not interleaved (half; also "
                       "sglang #13531, vllm-ascend #4641)")

DIV_PR134_QNORM = Divergence(
    "pypto-lib PR #134 kernel", "q_norm variance taken from the fp32 qr while normalising bf16(qr) "
    "(variant q_norm_input=fp32)", "~0.9% of qr_out")
DIV_PR134_CAST = Divergence(
    "pypto-lib PR #134 kernel", "default pl.cast mode ties away from zero everywhere (variant cast=rhaz)",
    "exact bf16 ties only")
DIV_PR134_VAR = Divergence(
    "pypto-lib PR #134 kernel", "variance as sum·(1/N) instead of mean (variant variance=mul_inv)",
    "last fp32 ulp of the variance on 55% / 33% of rows for N = 7168 / 1536; never for powers of two")
DIV_PR134_DEAD = Divergence(
    "pypto-lib PR #134 kernel",
    "dead writes of rotated q back into a local buffer; two batch loops re-reading seq_lens",
    "none (no effect on values)")
DIV_PR332_GOLDEN = Divergence(
    "pypto-lib PR #332 torch golden", "127.0 / amax computed as 127·(1/amax) (two roundings; "
    "variant qr_scale_form=mul_recip)",
    "qr_scale 1 fp32 ulp off the kernel's true division on ~22% of rows")
DIV_PR332_RACE = Divergence(
    "pypto-lib PR #332 kernel",
    "per-head temporaries q_rot_even_bf16 / q_rot_odd_bf16 created inside pl.parallel(H) without "
    "a head dimension: cross-head race", "data-dependent (any head's rope part)")
DIV_PR332_TTILE = Divergence(
    "pypto-lib PR #332 kernel", "T_TILE = T // 2 silently drops the last row when T is odd",
    "the last token row when T is odd")
DIV_PR332_ZERO = Divergence(
    "pypto-lib PR #332 kernel", "the select-matmul re-interleave turns −0.0 into +0.0",
    "negative zeros of the rope part (equal under −0.0 == +0.0)")
DIV_V4_OFFICIAL = Divergence(
    "official DeepSeek-V4 inference/model.py",
    "bf16 wq_a / wkv outputs (variant proj_out=bf16), per-head q RMSNorm in bf16 arithmetic "
    "(q_head_norm=bf16), bf16 rounding before RoPE (rope_preround), FP8 e4m3 quantise-dequantise "
    "of kv's nope dims (kv_nope_fp8), fp32 cos/sin (rope_table_dtype=fp32): preset "
    "deepseek-v4-official", "see each variant")
DIV_V4_FP8_PROJ = Divergence(
    "official DeepSeek-V4 checkpoint (config dtype fp8)",
    "FP8 block-quantised projections (wq_a, wq_b, wkv as FP8 GEMMs): a different scheme from "
    "the W8A8 int8 qr / wq_b path; documented, not emulated", "not quantified")
DIV_HF_NORM = Divergence(
    "HF transformers DeepseekV3", "two-rounding RMSNorm bf16(w_bf16 · bf16(x·r)) (variant rmsnorm=hf)",
    "~24% of elements, by 1 bf16 ulp")
DIV_HF_ROPE = Divergence(
    "HF transformers DeepseekV3", "bf16 tables and bf16 rotation arithmetic, output left de-interleaved",
    "not quantified")
DIV_DS32_RESIDUAL = Divergence(
    "official DeepSeek-V3.2 inference/model.py",
    "normalises the fp32 sum x + residual; the pypto-lib kernel takes the already-rounded bf16 sum",
    "none at layer 0; other layers not quantified")

_HEAD_K = "pypto-lib HEAD decode_front.py kernel"
_HEAD_G = "pypto-lib HEAD torch golden (golden_decode_front_scope1234)"
_DS32_O = "official DeepSeek-V3.2-Exp inference"
_NOT_MEASURED = "— (read from the code, not measured)"
DIV_HEAD_CAST = Divergence(
    _HEAD_K, "pl.cast without mode ties away from zero at every bf16 rounding (variant cast=rhaz)",
    "exact bf16 ties only")
DIV_DS32_FP8_GEMM = Divergence(
    _DS32_O, "wq_b / wk are FP8 GEMMs on act_quant(x, 128, ue8m0) inputs (config dtype fp8), bf16 "
    "out: a different scheme, documented, not emulated", _NOT_MEASURED)
DIV_DS32_INDEX_FP8 = Divergence(
    _DS32_O, "FP8 indexer: q and k after the Hadamard through act_quant (e4m3, ue8m0 scale per "
    "128-block), k cache float8_e4m3fn plus an fp32 k_scale_cache, q_scale folded into the weights, "
    "scores by fp8_index (· k_scale[t]): a different scheme, not a variant; dsref keeps bf16 q, k "
    "and cache", "all scores (not quantified)")
DIV_HEAD_INDEX_INPUT = Divergence(
    _HEAD_K + " (and its golden)", "wk_idx and weights_proj read the raw pre-norm hidden_states, "
    "not the normed token (variant index_input=hidden)", "all of k_idx / idx_weights")
DIV_DS32_LAYERNORM = Divergence(
    _DS32_O + " LayerNorm", "F.layer_norm: 1 / sqrt as one rsqrt, mean and variance in the "
    "library's order", _NOT_MEASURED)
DIV_HEAD_GOLDEN_LN = Divergence(
    _HEAD_G, "k LayerNorm by torch.rsqrt(var + eps), one rounding, not 1 / sqrt", _NOT_MEASURED)
DIV_DS32_IDX_ROPE = Divergence(
    _DS32_O + " @ 3b99a53", "indexer RoPE interleaved (pairs x[2i], x[2i+1]); DeepSeek's later fix "
    "(vLLM PR #28968) makes it half, as the kernel and dsref (whatever rope_layout says)",
    "every rotated dim (read from the code, not measured)")
DIV_HEAD_GOLDEN_IDX_ROUND = Divergence(
    _HEAD_G, "indexer RoPE output not rounded to bf16; the Hadamard multiplies that fp32 value by "
    "f32(hadamard)", _NOT_MEASURED)
DIV_DS32_HADAMARD = Divergence(
    _DS32_O + " rotate_activation", "exact FWHT with fp32 scale ID^-0.5; the kernel (and dsref) "
    "multiply by a bf16 matrix input: bf16(2^-3.5) = 0.08837890625, relative −1.07e-4 from the exact "
    "scale, so bf16(H/√128) is not the official transform (an fp32 matrix would be)", _NOT_MEASURED)
DIV_HEAD_WEIGHTS = Divergence(
    _HEAD_K, "weights kept fp32: (x @ bf16(weights_proj)) · f32(IH^-0.5·ID^-0.5) (variant "
    "index_weights=fp32); the official rounds x @ Wp to bf16 and scales by IH^-0.5 in bf16; "
    "weights_proj is an fp32 input here, a bf16 parameter there", "all of idx_weights")
DIV_HEAD_REDUCE_Q = Divergence(
    _HEAD_K, "no per-head ReLU; heads collapsed before scoring: q_red = bf16(Σ_h w_h·q_h), score = "
    "q_red·k_t (variant index_score=reduce_q)", "all scores")
DIV_HEAD_QRED_ORDER = Divergence(
    _HEAD_K, "q_red summed over the heads sequentially, one fp32 rounding per add, where dsref sums "
    "exactly and rounds once", "— (within the sum's rounding; not measured)")
DIV_HEAD_GOLDEN_QRED = Divergence(
    _HEAD_G, "q_red kept fp32, never rounded to bf16, and scored in fp32; the top-k set "
    "can differ near rank TOPK", _NOT_MEASURED)
DIV_DS32_TOPK = Divergence(
    _DS32_O + " Indexer.forward", "returns exactly min(TOPK, ctx) int64 indices (torch.topk, tie "
    "order unspecified), no padding; one start_pos for the batch. dsref and the kernel: TOPK int32 "
    "slots, INT32_MIN = −2147483648 past min(TOPK, ctx), ties by position ascending",
    "the padding slots (none when ctx ≥ TOPK)")
DIV_HEAD_GOLDEN_TOPK = Divergence(
    _HEAD_G, "torch.topk(sorted=True): tie order unspecified, the kernel's sort is stable",
    "equal scores only (the set too, at rank TOPK)")
DIV_HEAD_Q_LATENT = Divergence(
    _HEAD_K, "q_nope @ w_q_nope_to_latent kept fp32 (variant q_latent=fp32); the official einsum "
    "output is bf16", "all of q_latent")
DIV_HEAD_ATTN_SCALE = Divergence(
    _HEAD_K, "attention scale (NOPE+R)^-0.5 = 0.0721688 without YaRN's mscale² (variant "
    "attn_scale=plain); the official 192^-0.5·mscale² = 0.1352338, mscale = 0.1·ln 40 + 1",
    "all scores")
DIV_HEAD_SOFTMAX = Divergence(
    _HEAD_K, "online fp32 softmax in slot order (m' = max(m, s), α = exp(m − m'), β = exp(s − m'), "
    "l = α·l + β, o = o·α + kv·β, one rounding per op), ctx = o / l, probabilities never bf16 "
    "(variant attn_probs=exact: dsref's exact softmax mean, rounded once)",
    "— (the recurrence differs within rounding; not measured)")
DIV_DS32_SOFTMAX = Divergence(
    _DS32_O + " MLA.forward", "softmax over all t < end_pos with a −inf mask off the top-k (the same "
    "set), fp32 exp and sums each rounded where dsref rounds the exact quotient once; then bf16 "
    "probabilities and a bf16 p @ kv GEMM", "— (within fp32 rounding before the bf16 one; not measured)")
DIV_HEAD_GOLDEN_QPE = Divergence(
    _HEAD_G, "q_pe in the scores is the fp32 RoPE output, not rounded to bf16", _NOT_MEASURED)
DIV_HEAD_GOLDEN_CTX = Divergence(
    _HEAD_G, "ctx_latent not rounded to bf16 before W_uv: fp32 matmul with f32(w_latent_to_v)",
    _NOT_MEASURED)
DIV_HEAD_TEST_SPEC = Divergence(
    "pypto-lib HEAD decode_front.py build_tensor_specs", "kv_cache / pe_cache start at zero (every "
    "selected row but the current one has kv = 0, score 0), hadamard_q / hadamard_k and the rope "
    "tables are random, not a Hadamard matrix or cos / sin", "none (inputs only; weak coverage)")
DIV_HEAD_GOLDEN_DISPATCH = Divergence(
    _HEAD_G, "dispatch_buf.zero_() before the writes; the kernel leaves other entries untouched",
    "every unwritten entry of a non-zero dispatch_buf (none with the spec's zero init)")
DIV_DS32_NO_DISPATCH = Divergence(
    _DS32_O + " MLA.forward", "no dispatch: the V output goes on to wo", "— (no counterpart)")

V_RMSNORM = Variant("rmsnorm", "HF transformers modeling_deepseek_v3.py DeepseekV3RMSNorm",
                    "hf: bf16(bf16(w) · bf16(x·inv_rms(x))), two roundings; ~24% of elements move 1 ulp")
V_VARIANCE = Variant("variance", "pypto-lib kernels (PR #134, PR #332)",
                     "mul_inv: variance = sum·f32(1/N); differs from sum/N in the last fp32 ulp for "
                     "N = 7168 / 1536 on 55% / 33% of rows, never for powers of two")
V_CAST = Variant("cast", "PyPTO's default pl.cast mode, used by the PR #134 kernel",
                 "rhaz: every bf16 rounding ties away from zero (moves exact ties only)")
V_ACCUMULATE = Variant("accumulate", "dsref/numerics.py: fp32 sums and dots",
                       "fp32: XLA's native fp32-accumulated dot, order unspecified (faster, not bitwise "
                       "portable; ~90% of a bf16 matmul's fp32 results differ from the exact rounding)")
V_ROPE_LAYOUT = Variant("rope_layout", "ds32 inference/model.py apply_rotary_emb",
                        "interleaved: pair i = (x[2i], x[2i+1]) instead of halves (x[i], x[i+R/2])")
V_PREQUANT = Variant("qr_prequant_round", "pypto-lib after PR #556 and CANN mla_prolog",
                     "False: quantise qrn from fp32 instead of bf16(qrn); changes ~3.7% of codes and "
                     "every row's scale")
V_PREROUND = Variant("rope_preround", "CANN mla_prolog",
                     "True: round the normalised value to bf16 before RoPE")
V_ROPE_TABLE = Variant("rope_table", "CANN mla_prolog",
                       "element: element j uses column j (valid tables repeat-interleaved [c0,c0,c1,c1,…])")
V_Q_NORM_INPUT = Variant(
    "q_norm_input", "pypto-lib PR #134 (and HEAD) decode_front.py, Stage 1.3 q_norm",
    "fp32: q_lora_proj leaves qr in fp32; q_lora_rmsnorm takes the variance of the fp32 qr and "
    "normalises bf16(qr) (~0.9% of qr_out move)")
V_PROJ_OUT = Variant(
    "proj_out", "DeepSeek-V4-Flash inference/model.py Attention.forward (Linear outputs bf16)",
    "bf16: qr32 and kv32 rounded to bf16 before q_norm / kv_norm (still stored as fp32)")
V_Q_HEAD_NORM = Variant(
    "q_head_norm", "DeepSeek-V4-Flash inference/model.py: q *= rsqrt(q.square().mean(-1) + eps)",
    "bf16: n = bf16(q·bf16(1/sqrt(bf16(bf16(mean(bf16(q²))) + eps)))) on q = bf16(qf), every "
    "tensor op rounded to bf16; the rope part rotates that bf16 n")
V_KV_NOPE_FP8 = Variant(
    "kv_nope_fp8", "DeepSeek-V4-Flash inference/model.py act_quant(kv[..., :-rd], 64, ue8m0, "
    "inplace=True); inference/kernel.py act_quant_kernel, fast_round_scale",
    "True: kv's bf16 nope dims through FP8 e4m3 per 64-column block, scale "
    "2^ceil(log2(max(amax, 1e-4)·f32(1/448))), y = bf16(e4m3(clamp(x/s, ±448))·s)")
V_QR_SCALE_FORM = Variant(
    "qr_scale_form", "pypto-lib PR #332 torch golden of qkv_proj_rope.py",
    "mul_recip: sq = 127 · f32(1/amax) (two roundings) instead of 127 / amax; qr_scale 1 fp32 "
    "ulp off on ~22% of rows, a code only where v·sq crosses a rounding boundary")
V_ROPE_TABLE_DTYPE = Variant(
    "rope_table_dtype", "DeepSeek-V4-Flash inference/model.py freqs_cis (complex64)",
    "fp32: rope_cos / rope_sin inputs in fp32 instead of bf16 (inputs only: no stage's math "
    "changes for given tables)")
V_INDEX_INPUT = Variant(
    "index_input", "pypto-lib HEAD decode_front.py Stage 2.2 k_idx, Stage 2.6 weights",
    "hidden: wk_idx and weights_proj read the raw pre-norm hidden_states instead of the normed "
    "token (all of k_idx and idx_weights move)")
V_INDEX_SCORE = Variant(
    "index_score", "pypto-lib HEAD decode_front.py Stage 2.8 head reduction, Stage 3.1 scores",
    "reduce_q: no per-head ReLU; q_red = bf16(sum over h of f32(q_h)·w_h), score = q_red @ k_t "
    "(all scores move)")
V_INDEX_WEIGHTS = Variant(
    "index_weights", "pypto-lib HEAD decode_front.py Stage 2.6 weights",
    "fp32: idx_weights = (x @ wp) · f32(IH^-0.5·ID^-0.5), no bf16 rounding of x @ wp")
V_ATTN_SCALE = Variant(
    "attn_scale", "pypto-lib HEAD decode_front.py ATTN_SCALE (scope 4)",
    "plain: scale = f32((NOPE+R)^-0.5), without YaRN's mscale² (v32: 0.0721688 instead of "
    "0.1352338)")
V_Q_LATENT = Variant(
    "q_latent", "pypto-lib HEAD decode_front.py scope 4 q_nope_latent",
    "fp32: q_nope @ w_q_nope_to_latent left in fp32 instead of rounded to bf16")
V_ATTN_PROBS = Variant(
    "attn_probs", "pypto-lib HEAD decode_front.py scope 4 online softmax (its exact limit)",
    "exact: ctx = sum_j e_j·kv_j / sum_j e_j in exact arithmetic, rounded once (probabilities "
    "never bf16); the kernel's online fp32 recurrence differs within rounding")
_VARIANTS_BY_NAME = {v.name: v for v in (V_RMSNORM, V_VARIANCE, V_CAST, V_ACCUMULATE, V_ROPE_LAYOUT,
                                          V_PREQUANT, V_PREROUND, V_ROPE_TABLE, V_Q_NORM_INPUT,
                                          V_PROJ_OUT, V_Q_HEAD_NORM, V_KV_NOPE_FP8,
                                          V_ROPE_TABLE_DTYPE, V_QR_SCALE_FORM, V_INDEX_INPUT,
                                          V_INDEX_SCORE, V_INDEX_WEIGHTS, V_ATTN_SCALE, V_Q_LATENT,
                                          V_ATTN_PROBS)}

# ---------------------------------------------------------------------------------------------
# Shared formula and dtype-flow fragments
# ---------------------------------------------------------------------------------------------

INV_RMS = ("inv_rms(v) = 1 / sqrt(sum(v·v) / N + eps)   (variance=mul_inv: sum · f32(1/N))")
_CAST = "RNE (cast=rhaz: ties away from zero)"
ROPE_HALF = (
    "half layout, h = R/2:  out[:h] = bf16(x_lo·c_lo − x_hi·s_lo),  out[h:] = bf16(x_hi·c_hi + x_lo·s_hi)\n"
    "  x_lo = f32(x[:h]), x_hi = f32(x[h:]); c = rope_cos[pos], s = rope_sin[pos]; the table halves\n"
    "  are read separately\n"
    "interleaved layout (rope_layout=interleaved): out[2i] = bf16(x_e·c_i − x_o·s_i),\n"
    "  out[2i+1] = bf16(x_e·s_i + x_o·c_i), x_e = x[2i], x_o = x[2i+1], c_i = c[i]"
)
IDX_ROPE = (
    "the first R dims rotate in the half layout (always: the indexer is not interleaved, whatever\n"
    "  rope_layout says); lo = f32(x[:R/2]), hi = f32(x[R/2:R]), c = rope_cos[pos_b], s = rope_sin[pos_b]:\n"
    "  out[:R/2] = bf16(lo·c[:R/2] − hi·s[:R/2]),  out[R/2:R] = bf16(hi·c[R/2:] + lo·s[R/2:])\n"
    "  dims R..ID pass through unchanged"
)
V4_ROPE = (
    "rope part, pairs (n_e, n_o) = (pe[2i], pe[2i+1]),\n"
    "  c_i = f32(rope_cos[t, i]), s_i = f32(rope_sin[t, i]):\n"
    "  y_e = bf16(n_e·c_i − n_o·s_i),  y_o = bf16(n_e·s_i + n_o·c_i)   (columns R/2.. never read;\n"
    "  rope_table=element: element j reads column j; rope_preround: pe = bf16(pe) first)"
)


def _rms_steps(x: str, x_dtype: str, w: str | None, w_dtype: str, n: str, out: str) -> tuple[Step, ...]:
    """Dtype flow of ``rms_norm`` (ds32) from ``x`` to the bf16 output ``out``."""
    steps = [Step(x, f"{x_dtype} in", "widened to fp32 (exact)")]
    if w:
        steps.append(Step(w, f"{w_dtype} in", "widened to fp32 (exact)"))
    steps += [
        Step("x·x", "fp32", "RNE per element"),
        Step(f"sum over {n}", "fp32", "exact sum, rounded once (RNE)"),
        Step(f"variance = sum / {n}", "fp32", "true division, RNE (variance=mul_inv: sum · f32(1/N))"),
        Step("variance + eps, sqrt, 1 / sqrt", "fp32", "RNE each; true division"),
        Step("x · inv_rms" + (", then w · (…)" if w else ""), "fp32", "RNE each"),
        Step(out, "bf16 out", _CAST),
    ]
    return tuple(steps)


def _proj_steps(x: str, w: str, out: str, rounded: bool) -> tuple[Step, ...]:
    """Dtype flow of a bf16 projection, rounded to bf16 or left in fp32."""
    steps = [
        Step(x, "bf16 in", "exact"),
        Step(w, "bf16 in", "exact"),
        Step(f"{x} @ {w}", "fp32", "products exact, summed exactly, rounded once (RNE); "
                                   "accumulate=fp32: native fp32 accumulation"),
    ]
    last = Step(out, "bf16 out", _CAST) if rounded else Step(out, "fp32 out", "no further rounding")
    return (*steps, last)


def _rope_steps(x: str, x_dtype: str, table_dtype: str, out: str) -> tuple[Step, ...]:
    return (
        Step(x, f"{x_dtype} in", "widened to fp32 (exact)"),
        Step("rope_cos, rope_sin", f"{table_dtype} in", "widened to fp32 (exact)"),
        Step("x·c, x·s", "fp32", "RNE each"),
        Step("difference / sum of products", "fp32", "RNE (no fused multiply-add)"),
        Step(out, "bf16 out", _CAST),
    )


def _v4_norm_rope_steps(v: str, gamma: str | None, out: str) -> tuple[Step, ...]:
    steps = [Step(v, "fp32 in", "exact")]
    if gamma:
        steps.append(Step(gamma, "bf16 in", "widened to fp32 (exact)"))
    steps += [
        Step("sum(v·v), variance, sqrt, 1 / sqrt", "fp32", "RNE each; sum exact, rounded once"),
        Step("n = v · inv_rms" + (f" · {gamma}" if gamma else ""), "fp32", "RNE each"),
        Step("nope part n[:NOPE]", "bf16 out", _CAST),
        Step("rope part (rope_preround=True: bf16 first)", "fp32", "products and sums RNE each"),
        Step(f"{out} rope part", "bf16 out", _CAST),
    ]
    return tuple(steps)


# ---------------------------------------------------------------------------------------------
# The Spec
# ---------------------------------------------------------------------------------------------


def _dtype(d: Any) -> str:
    return np.dtype(d).name


def _struct_dict(structs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"shape": list(v.shape), "dtype": _dtype(v.dtype)} for k, v in structs.items()}


def _tiny_config(model: str | None) -> Config:
    """The tiny preset of ``model`` (ops: ``v32-tiny``)."""
    model = model or "v32.decode_front"
    return next(config(n) for n in config_names() if n.endswith("-tiny") and config(n).model == model)


@dataclass(frozen=True)
class Spec:
    """What one stage, helper op or model computes; renders as text, JSON and Markdown."""

    name: str
    kind: str  # "stage" | "op" | "model"
    model: str | None
    summary: str
    formula: str
    dtype_flow: tuple[Step, ...]
    sources: tuple[Source, ...]
    divergences: tuple[Divergence, ...] = ()
    variants: tuple[Variant, ...] = ()
    # helper ops: cfg -> (function of stored arrays, example argument structs)
    trace: Callable[[Config], tuple[Callable, dict[str, Any]]] | None = field(
        default=None, repr=False, compare=False)

    def config(self, cfg: Config | str | None = None) -> Config:
        """``cfg`` as a Config (a preset name is looked up; None → the model's tiny preset);
        a config of another model is an error."""
        cfg = _tiny_config(self.model) if cfg is None else config(cfg) if isinstance(cfg, str) else cfg
        if self.model and cfg.model != self.model:
            expected = [n for n in config_names() if config(n).model == self.model]
            raise ValueError(f"spec {self.name}: config {cfg.name!r} is a {cfg.model} config, "
                             f"expected one of {expected}")
        return cfg

    def shapes(self, cfg: Config | str | None = None, *, batch: int = 2, seq: int = 1) -> dict:
        """``{"inputs": {name: {shape, dtype}}, "outputs": {...}}`` at ``cfg`` (ops: the
        example shapes :meth:`jaxpr` traces)."""
        cfg = self.config(cfg)
        if self.kind == "op":
            fn, args = self.trace(cfg)
            with x64():
                out = jax.eval_shape(fn, *args.values())
            outs = out if isinstance(out, tuple) else (out,)
            return {"inputs": _struct_dict(args),
                    "outputs": _struct_dict({f"out{i}": o for i, o in enumerate(outs)})}
        if self.kind == "model":
            m = get_model(self.name)
            return {"batch": batch, "seq": seq,
                    "inputs": _struct_dict(m.input_specs(cfg, batch, seq)),
                    "outputs": _struct_dict(m.output_specs(cfg, batch, seq))}
        ins, outs = _stage_structs(self.name, cfg, batch, seq)
        return {"batch": batch, "seq": seq, "inputs": _struct_dict(ins), "outputs": _struct_dict(outs)}

    def jaxpr(self, cfg: Config | str | None = None) -> str:
        """The jaxpr text (x64 scope; stages and models at batch 2, ops at example shapes)."""
        cfg = self.config(cfg)
        if self.kind == "op":
            fn, args = self.trace(cfg)
            structs = tuple(args.values())
        elif self.kind == "model":
            fn = functools.partial(get_model(self.name).fn, cfg=cfg)
            specs = get_model(self.name).input_specs(cfg, 2, 1)
            structs = ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in specs.items()},)
        else:
            fn = functools.partial(STAGES[self.name].fn, cfg=cfg)
            structs = tuple(_stage_structs(self.name, cfg, 2, 1)[0].values())
        with x64():
            return str(jax.make_jaxpr(fn)(*structs))

    def semantics(self) -> list[Semantics]:
        """The named semantics that bear on this spec: for a model, every preset applying to
        it; for a stage, those setting one of its variants off the default; ops: none."""
        if self.kind == "model":
            return [SEMANTICS[n] for n in semantics_names(self.model)]
        if self.kind == "op":
            return []
        mine = {v.name for v in self.variants}
        return [SEMANTICS[n] for n in semantics_names(self.model)
                if mine & set(SEMANTICS[n].variants[self.model])]

    def to_dict(self, cfg: Config | str | None = None) -> dict[str, Any]:
        """A stable, JSON-ready dict; ``shapes`` is included when ``cfg`` is given."""
        d: dict[str, Any] = {
            "name": self.name, "kind": self.kind, "model": self.model, "summary": self.summary,
            "formula": self.formula,
            "dtype_flow": [{"step": s.step, "dtype": s.dtype, "rounding": s.rounding}
                           for s in self.dtype_flow],
            "shapes": None if cfg is None else self.shapes(cfg),
            "sources": [{"repo": s.repo, "file": s.file, "function": s.function, "note": s.note}
                        for s in self.sources],
            "divergences": [{"who": v.who, "what": v.what, "elements": v.elements}
                            for v in self.divergences],
            "variants": [{"name": v.name, "values": list(v.values), "default": v.default,
                          "source": v.source, "effect": v.effect} for v in self.variants],
            "semantics": [_semantics_dict(x, self.model) for x in self.semantics()],
        }
        if cfg is not None:
            d["config"] = self.config(cfg).name
        return d

    def to_json(self, cfg: Config | str | None = None, *, jaxpr: bool = False) -> str:
        """:meth:`to_dict` as indented JSON, with the jaxpr text when ``jaxpr``."""
        d = self.to_dict(cfg)
        if jaxpr:
            d["jaxpr"] = self.jaxpr(cfg)
        return json.dumps(d, indent=2, ensure_ascii=False)

    def to_text(self, cfg: Config | str | None = None) -> str:
        """A terminal rendering (plain text), wrapped at 100 columns."""
        from dsref.progress import wrap

        return "\n".join(wrap(line) for line in _render(self, cfg, _TEXT).split("\n"))

    def to_markdown(self, cfg: Config | str | None = None) -> str:
        """A Markdown rendering (notebooks)."""
        return _render(self, cfg, _MARKDOWN)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_text()


@functools.cache
def _stage_env(model: str, cfg: Config, batch: int, seq: int) -> dict[str, tuple[dict, dict]]:
    """Per stage of ``model``: (input structs, output structs), by ``jax.eval_shape`` down the
    stage chain from the model's input specs."""
    m = MODELS[model]
    env = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in m.input_specs(cfg, batch, seq).items()}
    per_stage = {}
    with x64():
        for name in m.stages:
            st = STAGES[name]
            ins = {a: env[a] for a in st.inputs}
            out = jax.eval_shape(functools.partial(st.fn, cfg=cfg), *ins.values())
            outs = dict(zip(st.outputs, out if isinstance(out, tuple) else (out,), strict=True))
            per_stage[name] = (ins, outs)
            env.update(outs)
    return per_stage


def _stage_structs(stage: str, cfg: Config, batch: int, seq: int) -> tuple[dict, dict]:
    return _stage_env(STAGES[stage].model, cfg, batch, seq)[stage]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    title: Callable[[Spec], str]
    heading: Callable[[str], str]
    code: Callable[[str], str]
    item: Callable[[str], str]
    table: Callable[[list[str], list[tuple[str, ...]]], str]


def _text_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [tuple(header), *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return ("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()

    return "\n".join([line(tuple(header)), line(tuple("-" * w for w in widths)), *map(line, rows)])


def _md_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |"

    return "\n".join([line(tuple(header)), "|" + "---|" * len(header), *map(line, rows)])


_TEXT = _Style(
    title=lambda s: f"{s.name}  ({s.kind}{', ' + s.model if s.model else ''})",
    heading=lambda h: f"\n{h}:",
    code=lambda c: "\n".join("  " + ln for ln in c.splitlines()),
    item=lambda t: f"  - {t}",
    table=_text_table,
)
_MARKDOWN = _Style(
    title=lambda s: f"### `{s.name}` ({s.kind}{', `' + s.model + '`' if s.model else ''})",
    heading=lambda h: f"\n**{h}**\n",
    code=lambda c: f"```\n{c}\n```",
    item=lambda t: f"- {t}",
    table=_md_table,
)


def _render(spec: Spec, cfg: Config | str | None, st: _Style) -> str:
    parts = [st.title(spec), "", spec.summary, st.heading("Formula"), st.code(spec.formula),
             st.heading("Dtype flow"),
             st.table(["step", "dtype", "rounding"],
                      [(s.step, s.dtype, s.rounding) for s in spec.dtype_flow])]
    if cfg is not None:
        head = f"Shapes ({spec.config(cfg).name})" if spec.kind != "op" else (
            f"Example shapes of the traced op ({spec.config(cfg).name} variants; values carried "
            "in float64 on the grid the dtype flow names)")
        parts += [st.heading(head), _shape_table(spec, cfg, st)]
    parts.append(st.heading("Sources"))
    parts += [st.item(f"{s.repo} · {s.file} · {s.function}" + (f" — {s.note}" if s.note else ""))
              for s in spec.sources]
    if spec.divergences:
        parts.append(st.heading("Known divergences (other implementations)"))
        parts += [st.item(f"{d.who}: {d.what} [{d.elements}]") for d in spec.divergences]
    if spec.variants:
        parts.append(st.heading("Variants"))
        parts += [st.item(f"{v.name} ∈ {list(v.values)} (default {v.default!r}) — {v.effect}; "
                          f"source: {v.source}") for v in spec.variants]
    if spec.semantics():
        parts.append(st.heading("Named semantics (--semantics NAME)"))
        parts += [st.item(semantics_line(x, spec.model)) for x in spec.semantics()]
    return "\n".join(parts) + "\n"


def semantics_line(sem: Semantics, model: str | None = None) -> str:
    """One line: name, its variants (for ``model``, or per model), summary, sources."""
    models = [model] if model else list(sem.variants)
    sets = "; ".join(f"{m}: {_variant_text(sem.variants[m])}" for m in models if m in sem.variants)
    line = f"{sem.name} [{sets}] — {sem.summary}; sources: {' | '.join(sem.sources)}"
    return line + (f"; not modelled: {sem.unmodelled}" if sem.unmodelled else "")


def _variant_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all defaults"


def _semantics_dict(sem: Semantics, model: str | None) -> dict[str, Any]:
    return {"name": sem.name, "summary": sem.summary, "sources": list(sem.sources),
            "variants": sem.variants.get(model, {}) if model else sem.variants,
            "unmodelled": sem.unmodelled}


def _shape_table(spec: Spec, cfg: Config | str, st: _Style) -> str:
    shapes = spec.shapes(cfg)
    rows = [(io, name, str(d["shape"]), d["dtype"])
            for io in ("inputs", "outputs") for name, d in shapes[io].items()]
    return st.table(["", "tensor", "shape", "dtype"], rows)


# ---------------------------------------------------------------------------------------------
# Helper-op traces (example shapes; variant fields from the config)
# ---------------------------------------------------------------------------------------------


def _s(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, np.dtype(dtype))


_BF16 = "bfloat16"


def _trace_rms_norm(cfg: Config):
    from dsref.numerics import widen
    from dsref.rmsnorm import rms_norm

    def fn(x, w):
        return rms_norm(widen(x), widen(w), eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm,
                        cast=cfg.cast)
    return fn, {"x": _s((2, 16), _BF16), "w": _s((1, 16), np.float32)}


def _trace_inv_rms(cfg: Config):
    from dsref.numerics import widen
    from dsref.rmsnorm import inv_rms
    return (lambda v: inv_rms(widen(v), eps=cfg.eps, variance=cfg.variance)), {"v": _s((2, 16), np.float32)}


def _trace_rope(cfg: Config):
    from dsref.numerics import widen
    from dsref.rope import rope_half, rope_interleaved

    def fn(x, c, s):
        x, c, s = widen(x), widen(c), widen(s)
        return rope_half(x, c, s), rope_interleaved(x, c, s, table=getattr(cfg, "rope_table", "pair"))
    return fn, {"x": _s((2, 8), np.float32), "cos": _s((2, 8), np.float32), "sin": _s((2, 8), np.float32)}


def _trace_rope_interleave(cfg: Config):
    from dsref.rope import rope_interleave

    half = max(2, getattr(cfg, "rope", 8) // 2)
    return rope_interleave, {"cos_half": _s((2, half), np.float32),
                             "sin_half": _s((2, half), np.float32)}


def _trace_quant_int8(cfg: Config):
    from dsref.numerics import widen
    from dsref.quant import quant_int8
    return (lambda v: quant_int8(widen(v))), {"v": _s((2, 16), _BF16)}


def _trace_fp8_qdq(cfg: Config):
    from dsref.numerics import widen
    from dsref.quant import fp8_qdq_blocks
    return (lambda v: fp8_qdq_blocks(widen(v), cfg.cast)), {"v": _s((2, 128), _BF16)}


def _trace_head_norm_bf16(cfg: Config):
    from dsref.numerics import widen
    from dsref.rmsnorm import head_norm_bf16
    return (lambda q: head_norm_bf16(widen(q), eps=cfg.eps, variance=cfg.variance, cast=cfg.cast)), {
        "q": _s((2, 3, 16), _BF16)}


def _trace_proj_bf16(cfg: Config):
    from dsref.proj import proj_bf16
    return (lambda x, w: proj_bf16(x, w, accumulate=cfg.accumulate, cast=cfg.cast)), {
        "x": _s((2, 16), _BF16), "w": _s((16, 8), _BF16)}


def _trace_proj_f32(cfg: Config):
    from dsref.proj import proj_f32
    return (lambda x, w: proj_f32(x, w, accumulate=cfg.accumulate)), {
        "x": _s((2, 16), _BF16), "w": _s((16, 8), _BF16)}


def _trace_proj_int8(cfg: Config):
    from dsref.proj import proj_int8
    return proj_int8, {"qr": _s((2, 16), np.int8), "qr_scale": _s((2, 1), np.float32),
                       "w": _s((16, 8), np.int8), "w_scale": _s((1, 8), np.float32)}


def _trace_cache_write(cfg: Config):
    from dsref.cache import decode_rows, write_rows
    return (lambda cache, seq_lens, values: write_rows(cache, decode_rows(seq_lens, 4), values)), {
        "cache": _s((8, 4), _BF16), "seq_lens": _s((2,), np.int32), "values": _s((2, 4), _BF16)}


def _trace_to_bf16(cfg: Config):
    from dsref.numerics import rbf16, widen
    return (lambda v: rbf16(widen(v), cfg.cast)), {"v": _s((2, 8), np.float32)}


def _trace_r32(cfg: Config):
    from dsref.numerics import r32, widen
    return (lambda a, b: r32(widen(a) * widen(b))), {"a": _s((2, 8), np.float32), "b": _s((2, 8), np.float32)}


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"
_V32_NORM_DIVS = (DIV_PR134_VAR, DIV_PR134_CAST, DIV_HF_NORM)
_V4_ROPE_DIVS = (DIV_PR332_RACE, DIV_PR332_TTILE, DIV_PR332_ZERO, DIV_V4_OFFICIAL, DIV_HF_ROPE)


def _stage(name: str, summary: str, formula: str, flow: tuple[Step, ...], sources: tuple[Source, ...],
           divergences: tuple[Divergence, ...], variants: tuple[Variant, ...]) -> Spec:
    return Spec(name=name, kind="stage", model=STAGES[name].model, summary=summary, formula=formula,
                dtype_flow=flow, sources=sources, divergences=divergences, variants=variants)


def _v32_stages() -> list[Spec]:
    norm_vars = (V_RMSNORM, V_VARIANCE, V_CAST)
    proj_vars = (V_ACCUMULATE, V_CAST)
    return [
        _stage("input_rmsnorm", "ds32 RMSNorm of the decode token's hidden state over D.",
               f"normed = bf16(w · (x · inv_rms(x)))   x = f32(hidden_states) [B,D], w = input_rms_weight\n"
               f"{INV_RMS}, N = D",
               _rms_steps("hidden_states", "bf16", "input_rms_weight", "fp32", "D", "normed [B,D]"),
               (DS32_RMSNORM, DS32_MLA, PR134), (*_V32_NORM_DIVS, DIV_DS32_RESIDUAL), norm_vars),
        _stage("q_lora_proj", "Query down-projection; the ds32 Linear output is bf16.",
               "qr_raw = bf16(normed @ wq_a)   [B,D] @ [D,QL] -> [B,QL]\n"
               "(q_norm_input=fp32: qr_raw = normed @ wq_a, left in fp32 — PR #134's qr_fp32)",
               _proj_steps("normed", "wq_a", "qr_raw [B,QL]", True), (DS32_MLA, PR134, PR134_HEAD), (),
               (*proj_vars, V_Q_NORM_INPUT)),
        _stage("q_lora_rmsnorm", "RMSNorm of the bf16-rounded qr over QL.",
               f"qr_out = bf16(w · (x · inv_rms(x)))   x = f32(qr_raw) [B,QL] (the bf16-rounded qr),\n"
               f"  w = q_norm_weight\n{INV_RMS}, N = QL\n"
               "q_norm_input=fp32 (PR #134): qr_out = bf16(w · (bf16(qr) · inv_rms(qr))), qr = the fp32 "
               "qr_raw",
               _rms_steps("qr_raw", "bf16", "q_norm_weight", "fp32", "QL", "qr_out [B,QL]"),
               (DS32_RMSNORM, DS32_MLA, PR134, PR134_HEAD), (DIV_PR134_QNORM, *_V32_NORM_DIVS),
               (*norm_vars, V_Q_NORM_INPUT)),
        _stage("q_head_proj", "Query up-projection to all heads, head-major.",
               "q = bf16(qr_out @ wq_b)   [B,QL] @ [QL,H·(NOPE+ROPE)] -> [B,H·(NOPE+ROPE)],\n"
               "  viewed [B,H,NOPE+ROPE]",
               _proj_steps("qr_out", "wq_b", "q [B,H·(NOPE+ROPE)]", True), (DS32_MLA, PR134), (), proj_vars),
        _stage("kv_a_proj", "Joint KV down-projection (latent KL + shared rope part).",
               "kv_a_out = bf16(normed @ wkv_a)   [B,D] @ [D,KL+ROPE] -> [B,KL+ROPE]",
               _proj_steps("normed", "wkv_a", "kv_a_out [B,KL+ROPE]", True), (DS32_MLA, PR134), (),
               proj_vars),
        _stage("q_rope", "Split q per head into nope and rope parts; rotate the rope part at the "
               "decode position.",
               "q3 = q.reshape(B, H, NOPE+ROPE);  pos_b = seq_lens[b] − 1\n"
               "q_nope_out = q3[..., :NOPE] (copied, no rounding)\n"
               f"q_pe_out = rope(q3[..., NOPE:], pos_b)\n{ROPE_HALF}",
               (*_rope_steps("q3[..., NOPE:]", "bf16", "fp32", "q_pe_out [B,H·ROPE]"),
                Step("q_nope_out [B,H·NOPE]", "bf16 out", "none (copy of q3[..., :NOPE])")),
               (PR134, DS32_ROPE, DS32_FREQS), (DIV_PR134_DEAD, DIV_PR134_CAST, DIV_HF_ROPE),
               (V_ROPE_LAYOUT, V_CAST)),
        _stage("kv_rmsnorm", "RMSNorm of the latent part of kv_a_out over KL.",
               f"kv_normed = bf16(w · (x · inv_rms(x)))   x = f32(kv_a_out[:, :KL]), w = kv_norm_weight\n"
               f"{INV_RMS}, N = KL",
               _rms_steps("kv_a_out[:, :KL]", "bf16", "kv_norm_weight", "fp32", "KL", "kv_normed [B,KL]"),
               (DS32_RMSNORM, DS32_MLA, PR134), _V32_NORM_DIVS, norm_vars),
        _stage("decode_cache_write", "Write the new token's normalised latent and rotated rope key "
               "into one cache row per batch entry.",
               "row_b = b·MAX_SEQ + pos_b,  pos_b = seq_lens[b] − 1  (1 ≤ seq_lens[b] ≤ MAX_SEQ)\n"
               "kv_cache[row_b] = kv_normed[b]\n"
               f"pe_cache[row_b] = rope(kv_a_out[b, KL:], pos_b)\nevery other row bit-identical\n{ROPE_HALF}",
               (Step("kv_normed", "bf16 in", "none (stored as is)"),
                *_rope_steps("kv_a_out[:, KL:]", "bf16", "fp32", "pe_cache rows"),
                Step("other cache rows", "bf16", "bit-identical to the input")),
               (PR134, DS32_MLA, DS32_ROPE), (DIV_PR134_DEAD, DIV_PR134_CAST), (V_ROPE_LAYOUT, V_CAST)),
        _stage("q_idx_proj", "Indexer query up-projection of the normalised qr, head-major "
               "(index head h = columns h·ID .. (h+1)·ID).",
               "q_idx = bf16(qr_out @ wq_b_idx)   [B,QL] @ [QL,IH·ID] -> [B,IH·ID]",
               _proj_steps("qr_out", "wq_b_idx", "q_idx [B,IH·ID]", True),
               (HEAD_V32_S2, DS32_INDEXER, HEAD_V32_GOLDEN), (DIV_DS32_FP8_GEMM, DIV_HEAD_CAST),
               proj_vars),
        _stage("k_idx_proj", "Indexer key projection (one key head), from the normed token or, in "
               "pypto-lib HEAD, the raw hidden state.",
               "k_idx = bf16(x @ wk_idx)   [B,D] @ [D,ID] -> [B,ID]\n"
               "  x = normed (index_input=normed) | hidden_states (index_input=hidden)",
               _proj_steps("x (normed | hidden_states)", "wk_idx", "k_idx [B,ID]", True),
               (HEAD_V32_S2, DS32_INDEXER, HEAD_V32_GOLDEN),
               (DIV_HEAD_INDEX_INPUT, DIV_DS32_FP8_GEMM, DIV_HEAD_CAST), (*proj_vars, V_INDEX_INPUT)),
        _stage("k_idx_layernorm", "LayerNorm with weight and bias of the indexer key over ID "
               "(biased variance, eps 1e-6).",
               "x = f32(k_idx) [B,ID], w = k_norm_weight, bias = k_norm_bias, over ID:\n"
               "mean = sum(x) / ID   (variance=mul_inv: sum(x) · f32(1/ID))\n"
               "c = x − mean\n"
               "var = sum(c·c) / ID   (the same mean form)\n"
               "inv = 1 / sqrt(var + eps)   (sqrt and the division one rounding each)\n"
               "k_idx_normed = bf16((c · inv) · w + bias)",
               (Step("k_idx", "bf16 in", "widened to fp32 (exact)"),
                Step("k_norm_weight, k_norm_bias", "fp32 in", "exact"),
                Step("sum(x), mean", "fp32", "exact sum, once; / ID true division (mul_inv: "
                     "· f32(1/ID))"),
                Step("c = x − mean, c·c", "fp32", "RNE each"),
                Step("var = sum(c·c) / ID", "fp32", "exact sum, once; the same mean form"),
                Step("var + eps, sqrt, 1 / sqrt", "fp32", "RNE each; true division"),
                Step("(c · inv) · w + bias", "fp32", "RNE each"),
                Step("k_idx_normed [B,ID]", "bf16 out", _CAST)),
               (HEAD_V32_S2, DS32_LAYERNORM, DS32_INDEXER, HEAD_V32_GOLDEN),
               (DIV_DS32_LAYERNORM, DIV_HEAD_GOLDEN_LN, DIV_PR134_VAR, DIV_HEAD_CAST),
               (V_VARIANCE, V_CAST)),
        _stage("idx_rope", "Rotate the first R dims of every indexer query head and of the key at "
               "the decode position, always in the half layout.",
               f"pos_b = seq_lens[b] − 1; x = q_idx[b, h·ID:(h+1)·ID] for every index head h, and "
               f"x = k_idx_normed[b]:\n{IDX_ROPE}\n"
               "q_idx_rope = the rotated q_idx [B,IH·ID], k_idx_rope = the rotated k_idx_normed [B,ID]",
               (*_rope_steps("x[:R] of q_idx, k_idx_normed", "bf16", "fp32",
                             "q_idx_rope, k_idx_rope dims :R"),
                Step("dims R..ID", "bf16 out", "none (copied)")),
               (HEAD_V32_S2, DS32_INDEXER, DS32_ROPE_FIX, DS32_ROPE, HEAD_V32_GOLDEN),
               (DIV_DS32_IDX_ROPE, DIV_HEAD_GOLDEN_IDX_ROUND, DIV_HEAD_CAST), (V_CAST,)),
        _stage("idx_hadamard", "The indexer's Hadamard rotation as a right-multiplication by a bf16 "
               "matrix input, per query head and for the key.",
               "q_idx_h[b, h] = bf16(q_idx_rope[b, h] @ hadamard_q)   per index head h, [ID] @ [ID,ID]\n"
               "k_idx_h = bf16(k_idx_rope @ hadamard_k)   [B,ID] @ [ID,ID]\n"
               "(no extra scale; the official transform is H/sqrt(ID), whose bf16 form is inexact)",
               (Step("q_idx_rope, k_idx_rope", "bf16 in", "exact"),
                Step("hadamard_q, hadamard_k", "bf16 in", "exact"),
                Step("x @ H", "fp32", "products exact, summed exactly, rounded once (RNE); "
                     "accumulate=fp32: native fp32 accumulation"),
                Step("q_idx_h [B,IH·ID], k_idx_h [B,ID]", "bf16 out", _CAST)),
               (HEAD_V32_S2, DS32_HADAMARD, DS32_INDEXER, HEAD_V32_GOLDEN),
               (DIV_DS32_HADAMARD, DIV_HEAD_GOLDEN_IDX_ROUND, DIV_DS32_INDEX_FP8, DIV_HEAD_TEST_SPEC,
                DIV_HEAD_CAST), proj_vars),
        _stage("idx_weights", "Per-head indexer weights from the token, scaled by IH^-0.5 · ID^-0.5.",
               "x = normed (index_input=normed) | hidden_states (hidden);  wp = bf16(f32 weights_proj)  "
               "(an fp32 input)\n"
               "index_weights=bf16 (ds32):  idx_weights = f32(bf16(bf16(x @ wp) · f32(IH^-0.5))) · "
               "f32(ID^-0.5)\n"
               "index_weights=fp32 (pypto-lib):  idx_weights = (x @ wp) · f32(IH^-0.5 · ID^-0.5)   "
               "(the constant in double, then f32)",
               (Step("x (normed | hidden_states)", "bf16 in", "exact"),
                Step("weights_proj", "fp32 in", "to bf16: " + _CAST),
                Step("x @ wp", "fp32", "exact sum, once (accumulate=fp32: native fp32)"),
                Step("bf16: bf16(x @ wp), · f32(IH^-0.5)", "bf16", "fp32 op, then bf16, each"),
                Step("bf16: · f32(ID^-0.5)", "fp32", "RNE"),
                Step("fp32: · f32(IH^-0.5 · ID^-0.5)", "fp32", "RNE"),
                Step("idx_weights [B,IH]", "fp32 out", "no further rounding")),
               (HEAD_V32_S2, DS32_INDEXER, HEAD_V32_GOLDEN),
               (DIV_HEAD_INDEX_INPUT, DIV_HEAD_WEIGHTS, DIV_DS32_INDEX_FP8, DIV_HEAD_CAST),
               (*proj_vars, V_INDEX_INPUT, V_INDEX_WEIGHTS)),
        _stage("k_idx_cache_write", "Write the new token's indexer key into one k_cache_idx row per "
               "batch entry.",
               "row_b = b·MAX_SEQ + pos_b,  pos_b = seq_lens[b] − 1\n"
               "k_cache_idx[row_b] = k_idx_h[b]\nevery other row bit-identical",
               (Step("k_idx_h", "bf16 in", "none (stored as is)"),
                Step("other k_cache_idx rows", "bf16", "bit-identical to the input")),
               (HEAD_V32_S2, DS32_INDEXER, HEAD_V32_GOLDEN), (DIV_DS32_INDEX_FP8,), ()),
        _stage("index_score", "Indexer scores of every cached position of the entry: per-head ReLU "
               "dots weighted and summed (ds32), or one head-reduced query (pypto-lib HEAD).",
               "k_t = f32(k_cache_idx[b·MAX_SEQ + t]) [ID] (the updated cache), q_h = f32(q_idx_h[b, h]) "
               "[ID], w_h = idx_weights[b, h]:\n"
               "index_score=relu (ds32):  index_scores[b, t] = sum over h of (max(q_h @ k_t, 0) · w_h)\n"
               "  (q_h @ k_t one exact dot rounded once)\n"
               "index_score=reduce_q (pypto-lib):  q_red = bf16(sum over h of (f32(q_h) · w_h))  [ID], "
               "per dim;\n  index_scores[b, t] = q_red @ k_t\n"
               "for t < ctx_b = seq_lens[b];  index_scores[b, t] = −FLT_MAX (−3.4028234663852886e38, "
               "finite) for t ≥ ctx_b",
               (Step("q_idx_h, k_cache_idx", "bf16 in", "widened to fp32 (exact)"),
                Step("idx_weights", "fp32 in", "exact"),
                Step("relu: q_h @ k_t", "fp32", "exact dot, rounded once; max(·, 0) exact"),
                Step("relu: · w_h, sum over h", "fp32", "RNE per product; exact sum rounded once"),
                Step("reduce_q: f32(q_h) · w_h, sum over h", "fp32", "RNE per product; exact sum "
                     "rounded once"),
                Step("reduce_q: q_red", "bf16", _CAST),
                Step("reduce_q: q_red @ k_t", "fp32", "exact dot, rounded once"),
                Step("index_scores [B,MAX_SEQ]", "fp32 out", "t ≥ ctx_b: −FLT_MAX")),
               (HEAD_V32_S2, HEAD_V32_S3, DS32_INDEXER, DS32_FP8_INDEX, HEAD_V32_GOLDEN),
               (DIV_HEAD_REDUCE_Q, DIV_HEAD_QRED_ORDER, DIV_HEAD_GOLDEN_QRED, DIV_DS32_INDEX_FP8,
                DIV_HEAD_CAST), (*proj_vars, V_INDEX_SCORE)),
        _stage("index_topk", "The TOPK best-scoring cached positions of each entry, best first, "
               "padded with INT32_MIN.",
               "the positions t < ctx_b ordered by (index_scores[b, t] descending, t ascending), "
               "−0.0 == +0.0;\n"
               "topk_idx[b, j] = the j-th of them for j < n_b = min(TOPK, ctx_b);\n"
               "topk_idx[b, j] = INT32_MIN = −2147483648 for j ≥ n_b\n"
               "(a kernel that picks another of two equal scores is not wrong: the set is what matters)",
               (Step("index_scores", "fp32 in", "exact"),
                Step("order", "fp32 compares", "none (exact; −0.0 == +0.0, ties by t ascending)"),
                Step("topk_idx [B,TOPK]", "int32 out", "positions; INT32_MIN past n_b")),
               (HEAD_V32_S3, DS32_INDEXER, HEAD_V32_GOLDEN),
               (DIV_DS32_TOPK, DIV_HEAD_GOLDEN_TOPK, DIV_HEAD_GOLDEN_QRED), ()),
        _stage("q_nope_latent", "Absorb W_uk into the query: each head's nope part projected to the "
               "KL-dim latent.",
               "per head h: lat = q_nope_out[b, h·NOPE:(h+1)·NOPE] @ w_q_nope_to_latent[h]   "
               "[NOPE] @ [NOPE,KL] -> [KL]\n"
               "  (one exact dot per element, rounded once)\n"
               "q_latent[b, h·KL:(h+1)·KL] = bf16(lat), stored as fp32 values (q_latent=bf16, ds32) | "
               "lat (q_latent=fp32)",
               (Step("q_nope_out", "bf16 in", "exact"), Step("w_q_nope_to_latent", "bf16 in", "exact"),
                Step("lat", "fp32", "products exact, summed exactly, rounded once (RNE); "
                     "accumulate=fp32: native fp32 accumulation"),
                Step("q_latent=bf16: bf16(lat)", "bf16", _CAST),
                Step("q_latent [B,H·KL]", "fp32 out", "exact (q_latent=fp32: lat as is)")),
               (HEAD_V32_S4, DS32_MLA_DECODE, HEAD_V32_GOLDEN), (DIV_HEAD_Q_LATENT,),
               (*proj_vars, V_Q_LATENT)),
        _stage("sparse_attn", "Sparse MLA attention of every head over the selected cache rows; the "
               "values are the latent rows themselves.",
               "n_b = min(TOPK, ctx_b); selected rows r_j = b·MAX_SEQ + topk_idx[b, j], j < n_b "
               "(slots ≥ n_b never read)\n"
               "kv_j = f32(kv_cache[r_j]) [KL], pe_j = f32(pe_cache[r_j]) [R], ql = q_latent[b, h] [KL], "
               "qp = f32(q_pe_out[b, h]) [R]\n"
               "s_j = ((ql @ kv_j) + (qp @ pe_j)) · scale   (each @ one exact dot rounded once)\n"
               "scale = f32((NOPE+R)^-0.5 · m · m) (attn_scale=yarn, ds32), m = 0.1·ln(rope_params.factor) "
               "+ 1 when YaRN applies, else 1\n"
               "  (v32: 0.1352337788608801 before f32);  f32((NOPE+R)^-0.5) (attn_scale=plain)\n"
               "e_j = exp(s_j − max_j s_j), the softmax and the quotients below in exact arithmetic\n"
               "attn_probs=bf16 (ds32):  p_j = bf16(f32(e_j / sum_j e_j));  ctx = sum_j p_j · kv_j   "
               "(exact sum rounded once)\n"
               "attn_probs=exact (pypto-lib):  ctx = f32(sum_j e_j · kv_j / sum_j e_j)   (rounded once)\n"
               "ctx_latent[b, h·KL:(h+1)·KL] = bf16(ctx)",
               (Step("q_latent", "fp32 in", "exact"),
                Step("q_pe_out, kv_cache, pe_cache", "bf16 in", "widened to fp32 (exact)"),
                Step("topk_idx", "int32 in", "— (slots < n_b read)"),
                Step("ql @ kv_j, qp @ pe_j", "fp32", "exact dot, rounded once each"),
                Step("sum, · scale", "fp32", "RNE each"),
                Step("e_j, softmax", "exact (float64)", "none"),
                Step("attn_probs=bf16: p_j", "bf16", "fp32 RNE, then " + _CAST),
                Step("ctx", "fp32", "rounded once (the exact sum, or the exact quotient)"),
                Step("ctx_latent [B,H·KL]", "bf16 out", _CAST)),
               (HEAD_V32_S4, DS32_MLA_DECODE, HEAD_V32_GOLDEN),
               (DIV_HEAD_ATTN_SCALE, DIV_HEAD_SOFTMAX, DIV_DS32_SOFTMAX, DIV_HEAD_GOLDEN_QPE,
                DIV_HEAD_GOLDEN_CTX, DIV_HEAD_TEST_SPEC, DIV_HEAD_CAST),
               (V_CAST, V_ATTN_SCALE, V_ATTN_PROBS)),
        _stage("v_proj", "Per-head projection of the attended latent to the value dim (W_uv).",
               "per head h: attn_front[b, h·V:(h+1)·V] = bf16(ctx_latent[b, h·KL:(h+1)·KL] @ "
               "w_latent_to_v[h])   [KL] @ [KL,V]",
               _proj_steps("ctx_latent", "w_latent_to_v", "attn_front [B,H·V]", True),
               (HEAD_V32_S4, DS32_MLA_DECODE, HEAD_V32_GOLDEN), (DIV_HEAD_GOLDEN_CTX, DIV_HEAD_CAST),
               proj_vars),
        _stage("dispatch", "Write each entry's attention row into its expert-parallel node slot of "
               "dispatch_buf.",
               "dispatch_buf[(b + layer_id_t[0]) % EP, b, :] = attn_front[b]\n"
               "every other entry bit-identical",
               (Step("attn_front", "bf16 in", "none (stored as is)"),
                Step("layer_id_t", "int32 in", "—"),
                Step("other dispatch_buf entries", "bf16", "bit-identical to the input")),
               (HEAD_V32_S4, HEAD_V32_GOLDEN), (DIV_HEAD_GOLDEN_DISPATCH, DIV_DS32_NO_DISPATCH), ()),
    ]


def _v4_stages() -> list[Spec]:
    rope_vars = (V_VARIANCE, V_PREROUND, V_ROPE_TABLE, V_CAST)
    return [
        _stage("attn_norm", "ds32 RMSNorm of every token over D.",
               f"tok = bf16(w · (x · inv_rms(x)))   x = f32(x.reshape(T, D)), w = norm_w, T = B·S\n"
               f"{INV_RMS}, N = D",
               _rms_steps("x", "bf16", "norm_w", "fp32", "D", "tok [T,D]"),
               (PR332, DS32_RMSNORM, HEAD_RMSNORM), (DIV_HF_NORM, DIV_V4_OFFICIAL),
               (V_RMSNORM, V_VARIANCE, V_CAST)),
        _stage("qr_proj_matmul", "Query down-projection, left in fp32 (no bf16 rounding).",
               "qr32 = tok @ wq_a   [T,D] @ [D,QL] -> [T,QL] fp32\n"
               "(proj_out=bf16: qr32 = f32(bf16(tok @ wq_a)), the official bf16 Linear output)",
               _proj_steps("tok", "wq_a", "qr32 [T,QL]", False), (PR332, V4_OFFICIAL, HEAD_QKV),
               (DIV_V4_OFFICIAL, DIV_V4_FP8_PROJ), (V_ACCUMULATE, V_PROJ_OUT, V_CAST)),
        _stage("qr_rms", "RMSNorm of qr32 with gamma_cq; PR #332 rounds the result to bf16 before "
               "quantisation.",
               f"qrn = (qr32 · inv_rms(qr32)) · f32(gamma_cq)   over QL\n{INV_RMS}, N = QL\n"
               "qr_norm = bf16(qrn)   (qr_prequant_round=False: qr_norm = qrn, fp32)",
               (Step("qr32", "fp32 in", "exact"), Step("gamma_cq", "bf16 in", "widened to fp32 (exact)"),
                Step("sum(v·v), variance, sqrt, 1 / sqrt", "fp32", "RNE each; sum exact, rounded once"),
                Step("qrn = (v · inv_rms) · gamma", "fp32", "RNE each"),
                Step("qr_norm [T,QL]", "bf16 out", _CAST + "; qr_prequant_round=False: fp32, no rounding")),
               (PR332, PR556, CANN), (DIV_V4_OFFICIAL,), (V_VARIANCE, V_PREQUANT, V_CAST)),
        _stage("qr_quant", "Per-token symmetric int8 quantisation of the normalised qr.",
               "v = f32(qr_norm) per row t\namax = max(max|v|, 1e-4)\n"
               "sq = 127 / amax   (true fp32 division)\n"
               "qr_scale = 1 / sq   (true fp32 division)\n"
               "qr = int8(fp16(int32_rne(v · sq)))   (exact for |v·sq| ≤ 127)",
               (Step("qr_norm", "bf16 in (fp32 when qr_prequant_round=False)", "widened (exact)"),
                Step("amax", "fp32", "exact (max); floor 1e-4 (f32)"),
                Step("sq = 127 / amax", "fp32", "true division, RNE"),
                Step("qr_scale [T,1] = 1 / sq", "fp32 out", "true division, RNE"),
                Step("v · sq", "fp32", "RNE"),
                Step("int32_rne(·)", "int32", "round to nearest, ties to even"),
                Step("fp16(·)", "fp16", "RNE"),
                Step("qr [T,QL] = int8(·)", "int8 out", "truncate, saturate to [−128, 127]")),
               (PR332, PR556, CANN), (DIV_PR332_GOLDEN, DIV_V4_OFFICIAL), (V_PREQUANT, V_QR_SCALE_FORM)),
        _stage("qproj_matmul", "W8A8 query up-projection with per-token and per-channel dequant.",
               "acc = qr @ wq_b   (int32, exact)   [T,QL] @ [QL,H·HD]\n"
               "qf = (f32(acc) · qr_scale[t]) · wq_b_scale[c]",
               (Step("qr, wq_b", "int8 in", "exact"), Step("acc", "int32", "exact"),
                Step("f32(acc)", "fp32", "RNE (matters above 2**24)"),
                Step("· qr_scale[t], · wq_b_scale[c]", "fp32", "RNE each"),
                Step("qf [T,H·HD]", "fp32 out", "no further rounding")),
               (PR332,), (DIV_V4_OFFICIAL,), ()),
        _stage("q_head_rms_rope", "Per-head RMSNorm (no gamma) of qf, nope part to bf16, rope part "
               "rotated in interleaved pairs on the fp32 normalised value.",
               f"per token t and head h: v = qf[t].reshape(H, HD)[h]\n"
               f"n = v · inv_rms(v)   over HD, no gamma\n"
               f"{INV_RMS}, N = HD\nq[t, h, :NOPE] = bf16(n[:NOPE])\n{V4_ROPE}\n"
               "q_head_norm=bf16 (official V4): v = bf16(qf_h); n = bf16(v · bf16(1 / sqrt(\n"
               "  bf16(bf16(mean(bf16(v²))) + eps)))), every op's fp32 result rounded to bf16;\n"
               "  q[t, h, :NOPE] = n[:NOPE], the rope part rotates the bf16 n",
               _v4_norm_rope_steps("qf", None, "q [T,H,HD]"),
               (PR332, CANN, V4_OFFICIAL), (*_V4_ROPE_DIVS,),
               (*rope_vars, V_Q_HEAD_NORM, V_ROPE_TABLE_DTYPE)),
        _stage("kv_proj_matmul", "KV projection, left in fp32.",
               "kv32 = tok @ wkv   [T,D] @ [D,HD] -> [T,HD] fp32\n"
               "(proj_out=bf16: kv32 = f32(bf16(tok @ wkv)))",
               _proj_steps("tok", "wkv", "kv32 [T,HD]", False), (PR332, V4_OFFICIAL),
               (DIV_V4_OFFICIAL, DIV_V4_FP8_PROJ), (V_ACCUMULATE, V_PROJ_OUT, V_CAST)),
        _stage("kv_rms_rope", "RMSNorm of kv32 with gamma_ckv (applied before the rotation), nope "
               "part to bf16, rope part rotated in interleaved pairs.",
               f"n = (kv32 · inv_rms(kv32)) · f32(gamma_ckv)   over HD\n{INV_RMS}, N = HD\n"
               f"kv[t, :NOPE] = bf16(n[:NOPE])\n{V4_ROPE}\n"
               "kv_nope_fp8 (official V4): per row and 64-column block b of kv[t, :NOPE]:\n"
               "  amax = max(max|b|, 1e-4);  s = 2^ceil(log2(f32(amax · f32(1/448))))  (ue8m0)\n"
               "  b = bf16(f32(e4m3(clamp(b / s, −448, 448))) · s)   (e4m3 RNE; / s, · s exact)",
               _v4_norm_rope_steps("kv32", "gamma_ckv", "kv [T,HD]"),
               (PR332, CANN, V4_OFFICIAL, V4_OFFICIAL_QUANT),
               (DIV_PR332_ZERO, DIV_PR332_TTILE, DIV_V4_OFFICIAL, DIV_HF_ROPE),
               (*rope_vars, V_KV_NOPE_FP8, V_ROPE_TABLE_DTYPE)),
    ]


def _op(name: str, summary: str, formula: str, flow: tuple[Step, ...], sources: tuple[Source, ...],
        divergences: tuple[Divergence, ...], variants: tuple[Variant, ...], trace: Callable) -> Spec:
    return Spec(name=name, kind="op", model=None, summary=summary, formula=formula, dtype_flow=flow,
                sources=sources, divergences=divergences, variants=variants, trace=trace)


def _ops() -> list[Spec]:
    return [
        _op("rms_norm", "RMSNorm over the last axis, ds32 form (dsref.rmsnorm.rms_norm).",
            f"ds32:  y = bf16(w · (x · inv_rms(x)))   one rounding, weight applied in fp32\n"
            f"hf:    y = bf16(bf16(w) · bf16(x · inv_rms(x)))   two roundings\n{INV_RMS}",
            _rms_steps("x", "bf16 or fp32", "w", "fp32", "N", "y"), (DS32_RMSNORM, HF_V3, PINNING),
            (DIV_HF_NORM, DIV_PR134_VAR, DIV_PR134_QNORM), (V_RMSNORM, V_VARIANCE, V_CAST), _trace_rms_norm),
        _op("inv_rms", "Inverse root-mean-square over the last axis (dsref.rmsnorm.inv_rms).",
            "inv_rms(v) = 1 / sqrt(sum(v·v) / N + eps)\n"
            "  v·v RNE per element; sum exact, rounded once; / N true division (mean) or\n"
            "  · f32(1/N) (variance=mul_inv); + eps, sqrt, 1 / · each one fp32 op (not rsqrt)",
            (Step("v", "fp32", "exact"), Step("v·v", "fp32", "RNE"),
             Step("sum", "fp32", "exact, rounded once"), Step("variance", "fp32", "true division, RNE"),
             Step("+ eps, sqrt, 1 / ·", "fp32 out", "RNE each (recip(sqrt(·)), not rsqrt)")),
            (DS32_RMSNORM, PINNING), (DIV_PR134_VAR,), (V_VARIANCE,), _trace_inv_rms),
        _op("rope", "Rotary embedding on fp32 values, half or interleaved layout "
            "(dsref.rope.rope_half / rope_interleaved); callers round the result.",
            f"{ROPE_HALF}\ninterleaved, rope_table=pair: pair i reads column i (columns R/2.. unused);\n"
            "  rope_table=element: element j reads column j",
            (Step("x, c, s", "fp32", "exact"), Step("products", "fp32", "RNE each"),
             Step("difference / sum", "fp32 out", "RNE (no fused multiply-add); caller rounds to bf16")),
            (DS32_ROPE, DS32_FREQS, PR134, PR332, CANN), (DIV_HF_ROPE, DIV_PR332_ZERO),
            (V_ROPE_LAYOUT, V_ROPE_TABLE), _trace_rope),
        _op("rope_interleave", "pypto-lib HEAD's per-element RoPE tables for the interleaved "
            "rotation (dsref.rope.rope_interleave).",
            "cos_il[:, j] = cos_half[:, j >> 1]\n"
            "sin_signed[:, j] = sin_half[:, j >> 1] · sign[j],  sign = [−1, +1, −1, +1, …]\n"
            "y[j] = x[j]·cos_il[j] + x[j ^ 1]·sin_signed[j]  ==  rope interleaved, "
            "rope_table=pair, bit for bit\n"
            "  (y_e = x_e·c − x_o·s: the negation is exact; y_o = x_o·c + x_e·s: the same two "
            "rounded products)",
            (Step("cos_half, sin_half [N, R/2]", "fp32 in", "exact"),
             Step("gather j >> 1", "fp32", "exact (data movement)"),
             Step("· sign", "fp32 out", "exact (flips the sign bit)")),
            (HEAD_ROPE_IL,), (), (), _trace_rope_interleave),
        _op("quant_int8", "Per-row symmetric int8 quantisation (dsref.quant.quant_int8).",
            "amax = max(max|v|, 1e-4); sq = 127 / amax; scale = 1 / sq   (true fp32 divisions)\n"
            "codes = int8(fp16(int32_rne(v · sq)))   (fp16 → int8 truncates and saturates)",
            (Step("v", "fp32", "exact"), Step("sq, scale", "fp32", "true division, RNE"),
             Step("v · sq", "fp32", "RNE"), Step("int32_rne", "int32", "ties to even"),
             Step("fp16", "fp16", "RNE"), Step("codes", "int8 out", "truncate, saturate")),
            (PR332, PR556, CANN), (DIV_PR332_GOLDEN,), (), _trace_quant_int8),
        _op("fp8_qdq", "Official V4 FP8 e4m3 block quantise–dequantise of bf16 values "
            "(dsref.quant.fp8_qdq_blocks; variant kv_nope_fp8).",
            "per row and 64-column block b:  amax = max(max|b|, 1e-4)\n"
            "s = 2^ceil(log2(f32(amax · f32(1/448))))   (ue8m0: the fp32 exponent, +1 if any "
            "mantissa bit)\ny = bf16(f32(e4m3(clamp(b / s, −448, 448))) · s)",
            (Step("b", "bf16 in", "widened (exact)"), Step("amax · f32(1/448)", "fp32", "RNE"),
             Step("s", "fp32 (power of two)", "rounded up to a power of two"),
             Step("b / s", "fp32", "exact (power-of-two scale)"),
             Step("e4m3(·)", "float8_e4m3fn", "RNE after the clamp to ±448"),
             Step("y = e4m3 · s", "bf16 out", "exact")),
            (V4_OFFICIAL, V4_OFFICIAL_QUANT), (), (V_KV_NOPE_FP8,), _trace_fp8_qdq),
        _op("head_norm_bf16", "Official V4 per-head q RMSNorm in bf16 tensor arithmetic "
            "(dsref.rmsnorm.head_norm_bf16; variant q_head_norm=bf16).",
            "n = bf16(q · bf16(1 / sqrt(bf16(bf16(mean(bf16(q²))) + eps))))   over the last axis\n"
            "mean = sum / N (variance=mul_inv: sum · f32(1/N)); every op in fp32, then bf16",
            (Step("q", "bf16 in", "widened (exact)"), Step("q²", "bf16", "one rounding (exact in fp32)"),
             Step("mean", "bf16", "exact sum rounded to fp32, / N in fp32, then bf16"),
             Step("+ eps", "bf16", "fp32 add, then bf16"),
             Step("1 / sqrt", "bf16", "fp32 sqrt and division, then bf16"),
             Step("n = q · r", "bf16 out", "one rounding (exact in fp32)")),
            (V4_OFFICIAL,), (), (V_Q_HEAD_NORM, V_VARIANCE, V_CAST), _trace_head_norm_bf16),
        _op("proj_bf16", "ds32 Linear: bf16 x @ bf16 W rounded to bf16 (dsref.proj.proj_bf16).",
            "y = bf16(x @ w)   (products exact, summed exactly, rounded once to fp32, then to bf16)",
            _proj_steps("x", "w", "y", True), (DS32_MLA, PR134), (), (V_ACCUMULATE, V_CAST),
            _trace_proj_bf16),
        _op("proj_f32", "bf16 x @ bf16 W left in fp32 (dsref.proj.proj_f32).",
            "y = x @ w   (exact sum rounded once to fp32)", _proj_steps("x", "w", "y", False),
            (PR332,), (), (V_ACCUMULATE,), _trace_proj_f32),
        _op("proj_int8", "W8A8 projection with dequant (dsref.proj.proj_int8).",
            "acc = qr @ w (int32, exact); y = (f32(acc) · qr_scale[t]) · w_scale[c]",
            (Step("qr, w", "int8", "exact"), Step("acc", "int32", "exact"),
             Step("f32(acc)", "fp32", "RNE"), Step("dequant products", "fp32 out", "RNE each")),
            (PR332,), (), (), _trace_proj_int8),
        _op("cache_write", "Decode cache write (dsref.cache.decode_rows / write_rows).",
            "row_b = b·MAX_SEQ + (seq_lens[b] − 1);  cache[row_b] = values[b];\n"
            "every other row bit-identical (example trace: MAX_SEQ = 4)",
            (Step("values", "bf16", "none (stored as is)"), Step("other rows", "bf16", "bit-identical")),
            (PR134,), (DIV_PR134_DEAD,), (), _trace_cache_write),
        _op("to_bf16", "fp32 → bf16 rounding (dsref.numerics.rbf16 / to_bf16).",
            "rne:  nearest bf16, ties to even  (1 + 2⁻⁸ → 1.0)\n"
            "rhaz: nearest bf16, ties away from zero  (1 + 2⁻⁸ → 1.0078125); subnormals exact",
            (Step("v", "fp32 in", "exact"), Step("bf16(v)", "bf16 out", _CAST)),
            (PINNING, Source("hw-native-sys/pypto", "pypto.language", "pl.cast", "default mode ties away")),
            (DIV_PR134_CAST,), (V_CAST,), _trace_to_bf16),
        _op("r32", "The fp32 rounding point: every fp32 op is computed in float64 and rounded "
            "(dsref.numerics.r32).",
            "r32(a op b) = fp32 RNE of the exact float64 result, for op in + − × ÷ sqrt\n"
            "(53 ≥ 2·24 + 2: the correctly rounded fp32 op, whatever XLA fuses); subnormals exact",
            (Step("a, b", "fp32 (carried as float64)", "exact"), Step("a op b", "float64", "exact for ×"),
             Step("r32(·)", "fp32 out", "RNE (reduce_precision, exponent 8, mantissa 23)")),
            (PINNING,), (), (), _trace_r32),
    ]


def _model_formula(model: str) -> str:
    m = MODELS[model]
    lines = []
    for name in m.stages:
        st = STAGES[name]
        lines.append(f"{name}: ({', '.join(st.inputs)}) -> ({', '.join(st.outputs)})")
    return "\n".join(lines)


def _models() -> list[Spec]:
    v32_vars = tuple(_VARIANTS_BY_NAME[k] for k in MODEL_VARIANTS[V32])
    v4_vars = tuple(_VARIANTS_BY_NAME[k] for k in MODEL_VARIANTS[V4])
    return [
        Spec(name=V32, kind="model", model=V32,
             summary="DeepSeek V3.2 decode front, scopes 1-4: MLA prolog (scope 1), lightning "
                     "indexer and top-k (2-3), sparse MLA attention, V projection and dispatch (4). "
                     "ds32 math with the pypto-lib kernel layout (PR #134 / HEAD decode_front.py). "
                     "Inputs/outputs use pypto-lib tensor names; kv_cache, pe_cache, k_cache_idx and "
                     "dispatch_buf are in/out.",
             formula=_model_formula(V32),
             dtype_flow=(Step("activations, weights, caches", "bf16 in", "exact"),
                         Step("norm weights and biases, rope tables, weights_proj", "fp32 in", "exact"),
                         Step("seq_lens, layer_id_t", "int32 in", "—"),
                         Step("inside every stage", "fp32", "RNE after every op; sums exact, rounded once"),
                         Step("idx_weights, index_scores, q_latent", "fp32", "as each stage says"),
                         Step("topk_idx", "int32", "positions; INT32_MIN padding"),
                         Step("every other stage output", "bf16 out", _CAST)),
             sources=(DS32_MLA, DS32_RMSNORM, DS32_ROPE, DS32_FREQS, DS32_INDEXER, DS32_MLA_DECODE,
                      DS32_FP8_INDEX, PR134, PR134_HEAD, HEAD_V32_S2, HEAD_V32_S3, HEAD_V32_S4,
                      HEAD_V32_GOLDEN, HF_V3),
             divergences=(DIV_PR134_QNORM, DIV_PR134_CAST, DIV_PR134_VAR, DIV_PR134_DEAD, DIV_HF_NORM,
                          DIV_HF_ROPE, DIV_DS32_RESIDUAL, DIV_DS32_INDEX_FP8, DIV_HEAD_INDEX_INPUT,
                          DIV_HEAD_REDUCE_Q, DIV_DS32_IDX_ROPE, DIV_DS32_HADAMARD, DIV_DS32_TOPK,
                          DIV_HEAD_ATTN_SCALE, DIV_HEAD_Q_LATENT, DIV_HEAD_SOFTMAX, DIV_HEAD_TEST_SPEC),
             variants=v32_vars),
        Spec(name=V4, kind="model", model=V4,
             summary="DeepSeek V4 attention qkv_proj_rope (W8A8C16), pypto-lib PR #332 semantics "
                     "(seed 001). T = B·S tokens; rope tables are bf16 rows gathered per token.",
             formula=_model_formula(V4),
             dtype_flow=(Step("x, wq_a, wkv, rope tables, gammas", "bf16 in", "exact"),
                         Step("wq_b", "int8 in", "exact"), Step("norm_w, wq_b_scale", "fp32 in", "exact"),
                         Step("tok", "bf16", _CAST),
                         Step("qr32, qf, kv32", "fp32", "exact sums rounded once"),
                         Step("qr_norm", "bf16", _CAST + " (qr_prequant_round=False: fp32)"),
                         Step("qr / qr_scale", "int8 / fp32 out",
                              "int32 RNE → fp16 → int8 trunc; true divisions"),
                         Step("q, kv", "bf16 out", _CAST)),
             sources=(PR332, PR556, CANN, V4_OFFICIAL, V4_OFFICIAL_QUANT, DS32_RMSNORM),
             divergences=(DIV_PR332_GOLDEN, DIV_PR332_RACE, DIV_PR332_TTILE, DIV_PR332_ZERO,
                          DIV_V4_OFFICIAL, DIV_V4_FP8_PROJ, DIV_HF_NORM, DIV_HF_ROPE),
             variants=v4_vars),
    ]


@functools.cache
def _registry() -> dict[str, Spec]:
    specs = [*_v32_stages(), *_v4_stages(), *_ops(), *_models()]
    return {s.name: s for s in specs}


def spec_names(kind: str | None = None) -> list[str]:
    """Every registered name (stages, then helper ops, then models), or those of one ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"spec kind: expected one of {KINDS}, got {kind!r}")
    return [n for n, s in _registry().items() if kind is None or s.kind == kind]


def spec(name: str) -> Spec:
    """The spec of a stage, helper op, model or stage range (``MODEL[A:B]``); an unknown name
    lists the close matches."""
    if "[" in name:
        return _range_spec(name)
    try:
        return _registry()[name]
    except KeyError:
        close = difflib.get_close_matches(name, spec_names(), n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known names: {', '.join(spec_names())}"
        raise ValueError(f"spec: unknown name {name!r}; {hint}") from None


@functools.cache
def _range_spec(name: str) -> Spec:
    """A stage range's spec: its stages' formulas, dtype flows, sources, divergences and
    variants in order (then the whole model's sources), its own inputs and outputs."""
    m = get_model(name)
    whole = _registry()[m.family]
    parts = [_registry()[s] for s in m.stages]
    seen: set[str] = set()
    variants = tuple(v for p in parts for v in p.variants
                     if v.name not in seen and not seen.add(v.name))
    return Spec(
        name=m.name, kind="model", model=m.family,
        summary=(f"Stages {m.stages[0]} .. {m.stages[-1]} of {m.family}, run on their own: "
                 f"inputs {', '.join(m.input_names)} (what no earlier stage of the range "
                 f"makes); outputs {', '.join(m.output_names)}."
                 + (" Kernel names at its boundary: " + "; ".join(
                     f"{n} is also {' / '.join(ks)}" for n, ks in m.kernel_names
                     if n in m.input_names + m.output_names) + "."
                    if any(n in m.input_names + m.output_names for n, _ in m.kernel_names)
                    else "")),
        formula="\n".join(f"{p.name}: {p.formula}" for p in parts),
        dtype_flow=tuple(s for p in parts for s in p.dtype_flow),
        sources=tuple(dict.fromkeys([*(src for p in parts for src in p.sources),
                                     *whole.sources])),
        divergences=tuple(dict.fromkeys(d for p in parts for d in p.divergences)),
        variants=variants,
    )


# ---------------------------------------------------------------------------------------------
# The whole contract as one document (docs/semantics.md)
# ---------------------------------------------------------------------------------------------

_CONTRACT_HEAD = """\
# The numerical contract

<!-- Generated by `dsref spec all --markdown > docs/semantics.md` from dsref/spec.py and
dsref/config.py; edit those, not this file (tests/test_dsref_spec.py checks it is current). -->

What every dsref stage computes, to the bit: its formula, the dtype and the rounding of every
step, the public code it was read from, where other implementations differ and by how much,
and the variants that select those other behaviours. dsref *is* this contract: it computes
exactly what is written here (the reference implementation and an independent numpy +
ml_dtypes oracle, `tests/oracle.py`, agree bitwise on every stage and variant). The same text
is available per name from `dsref spec NAME` and from Python (`dsref.spec(NAME)`).

## Conventions

- **fp32 operations** are correctly rounded IEEE binary32 results, round-to-nearest-even:
  one rounding per operation, no fused multiply-add, true division (never `x · (1/c)` unless
  the formula says so), `1 / sqrt(v)` as a square root then a division. (How dsref keeps XLA
  from rewriting them: [architecture.md](architecture.md).)
- **Sums and dots** are order-free: the exact sum of the fp32 terms, rounded once to fp32.
  A kernel that sums in chunks in its own order legitimately differs by a bounded amount;
  [verdicts.md](verdicts.md) derives the bounds and how a kernel's order is judged.
  `accumulate=fp32` is the variant that sums in fp32 in index order instead.
- **bf16** results round from the fp32 value, to nearest, ties to even (`cast=rne`, the
  ml_dtypes conversion) or ties away from zero (`cast=rhaz`, PyPTO's default `pl.cast` mode);
  subnormals are kept, not flushed.
- **int8 quantisation** goes through fp16 as the dtype flow of each quant stage says (scale
  by a true division, round to int32 RNE, narrow to fp16, truncate to int8).
- Inputs come in the dtypes listed (a bf16 or int8 input is widened exactly); outputs leave
  in theirs. Shape tables below are at the full config with B = 2, S = 1.
- **Named semantics** (`--semantics NAME`, `dsref.with_semantics(cfg, NAME)`) bundle variant
  values read from one public implementation; every variant not named keeps its default.
  The default semantics is `ds32` (DeepSeek's official V3.2 inference code).
"""


def contract_markdown() -> str:
    """The whole contract as Markdown: conventions, models, named semantics, variants, then
    every model, its stages in order, and the helper ops (docs/semantics.md)."""
    parts = [_CONTRACT_HEAD, "## Models\n"]
    rows = []
    for name in spec_names("model"):
        m = MODELS[name]
        configs = [c for c in config_names() if config(c).model == name]
        rows.append((f"`{name}`", ", ".join(configs), " → ".join(f"`{s}`" for s in m.stages)))
    parts += [_md_table(["model", "configs", "stages, in order"], rows), "",
              "## Named semantics\n"]
    rows = []
    for sem in SEMANTICS.values():
        sets = "; ".join(f"{m}: {_variant_text(v)}" for m, v in sem.variants.items())
        rows.append((f"`{sem.name}`", sets, sem.summary, " · ".join(sem.sources),
                     sem.unmodelled or "—"))
    parts += [_md_table(["name", "variants it sets", "what", "sources", "not modelled"], rows),
              "", "## Variants\n"]
    rows = [(f"`{v.name}`", ", ".join(f"`{x}`" for x in v.values), v.effect, v.source)
            for v in _VARIANTS_BY_NAME.values()]
    parts += [_md_table(["variant", "values (default first)", "effect", "source"], rows), ""]
    full = {V32: "v32", V4: "v4-flash"}
    for name in spec_names("model"):
        parts += [f"## `{name}`\n", _registry()[name].to_markdown(full[name])]
        for stage in MODELS[name].stages:
            parts.append(_registry()[stage].to_markdown(full[name]))
    parts.append("## Helper ops\n")
    parts += [_registry()[n].to_markdown() for n in spec_names("op")]
    return "\n".join(parts)
