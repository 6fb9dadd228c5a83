"""Model configurations: frozen, keyword-only dataclasses, presets by name, variants as fields.

Dimensions follow the pypto-lib configs (DeepSeek V3.2 decode front PR #134; DeepSeek V4
FLASH / PRO of ``models/deepseek_v4_*/config.py``). Semantic variants are ordinary fields;
switch one with :func:`with_variants` or ``dataclasses.replace``, or a whole named semantics
(a preset bundling variants: ``ds32``, ``pypto-lib-pr134``, ``deepseek-v4-official``, ...)
with :func:`with_semantics`. Tiny presets keep every structural feature: several heads, a nope/rope
split, at least two 512-wide K chunks per projection, and dims small enough for a test to run a
whole model in well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-6

# Allowed values of every variant field; the first is the default.
VARIANTS: dict[str, tuple[Any, ...]] = {
    "rmsnorm": ("ds32", "hf"),
    "variance": ("mean", "mul_inv"),
    "cast": ("rne", "rhaz"),
    "accumulate": ("exact", "fp32"),
    "rope_layout": ("half", "interleaved"),  # V3.2 only
    "qr_prequant_round": (True, False),  # V4 only
    "rope_preround": (False, True),  # V4 only
    "rope_table": ("pair", "element"),  # V4 only
    "q_norm_input": ("bf16", "fp32"),  # V3.2 only: q_norm's variance from bf16(qr) | fp32 qr
    "proj_out": ("fp32", "bf16"),  # V4 only: wq_a / wkv outputs rounded to bf16
    "q_head_norm": ("fp32", "bf16"),  # V4 only: per-head q RMSNorm in bf16 tensor arithmetic
    "kv_nope_fp8": (False, True),  # V4 only: FP8 e4m3 quantise-dequantise of kv's nope dims
    "rope_table_dtype": ("bf16", "fp32"),  # V4 only: dtype of the rope_cos / rope_sin inputs
    "qr_scale_form": ("div", "mul_recip"),  # V4 only: sq = 127 / amax | 127 · (1/amax)
    # V3.2 only, the indexer and sparse attention (scopes 2-4); first value: the official code
    "index_input": ("normed", "hidden"),  # k_idx / weights from normed | raw hidden_states
    "index_score": ("relu", "reduce_q"),  # Σ_h w_h·relu(q_h·k) | (bf16 Σ_h w_h·q_h)·k
    "index_weights": ("bf16", "fp32"),  # bf16(x @ Wp)·IH^-½ then ·ID^-½ | f32(x @ Wp)·(IH·ID)^-½
    "attn_scale": ("yarn", "plain"),  # (NOPE+ROPE)^-½ · mscale² | (NOPE+ROPE)^-½
    "q_latent": ("bf16", "fp32"),  # q_nope @ W_uk rounded to bf16 | left in fp32
    "attn_probs": ("bf16", "exact"),  # softmax probabilities to bf16 | exact softmax mean
}


MODEL_VARIANTS = {
    "v32.decode_front": ("rmsnorm", "variance", "cast", "accumulate", "rope_layout", "q_norm_input",
                         "index_input", "index_score", "index_weights", "attn_scale", "q_latent",
                         "attn_probs"),
    "v4.qkv_proj_rope": (
        "rmsnorm", "variance", "cast", "accumulate", "qr_prequant_round", "rope_preround",
        "rope_table", "proj_out", "q_head_norm", "kv_nope_fp8", "rope_table_dtype",
        "qr_scale_form",
    ),
}

# The variants that can change each stage's outputs for given inputs (a variant absent here
# leaves the stage bit-identical: tests/test_dsref_variants.py checks every pair).
# ``rope_table_dtype`` changes no stage: it is the dtype of two model inputs.
STAGE_VARIANTS: dict[str, tuple[str, ...]] = {
    "input_rmsnorm": ("rmsnorm", "variance", "cast"),
    "q_lora_proj": ("accumulate", "cast", "q_norm_input"),
    "q_lora_rmsnorm": ("rmsnorm", "variance", "cast", "q_norm_input"),
    "q_head_proj": ("accumulate", "cast"),
    "kv_a_proj": ("accumulate", "cast"),
    "q_rope": ("cast", "rope_layout"),
    "kv_rmsnorm": ("rmsnorm", "variance", "cast"),
    "decode_cache_write": ("cast", "rope_layout"),
    "q_idx_proj": ("accumulate", "cast"),
    "k_idx_proj": ("accumulate", "cast", "index_input"),
    "k_idx_layernorm": ("variance", "cast"),
    "idx_rope": ("cast",),
    "idx_hadamard": ("accumulate", "cast"),
    "idx_weights": ("accumulate", "cast", "index_input", "index_weights"),
    "k_idx_cache_write": (),
    "index_score": ("accumulate", "cast", "index_score"),
    "index_topk": (),
    "q_nope_latent": ("accumulate", "cast", "q_latent"),
    "sparse_attn": ("accumulate", "cast", "attn_scale", "attn_probs"),
    "v_proj": ("accumulate", "cast"),
    "dispatch": (),
    "attn_norm": ("rmsnorm", "variance", "cast"),
    "qr_proj_matmul": ("accumulate", "cast", "proj_out"),
    "qr_rms": ("variance", "cast", "qr_prequant_round"),
    "qr_quant": ("qr_scale_form",),
    "qproj_matmul": (),
    "q_head_rms_rope": ("variance", "cast", "rope_preround", "rope_table", "q_head_norm"),
    "kv_proj_matmul": ("accumulate", "cast", "proj_out"),
    "kv_rms_rope": ("variance", "cast", "rope_preround", "rope_table", "kv_nope_fp8"),
}


def _check_variants(cfg: Config) -> None:
    for key in MODEL_VARIANTS[cfg.model]:
        value = getattr(cfg, key)
        if value not in VARIANTS[key] or type(value) is not type(VARIANTS[key][0]):
            raise ValueError(f"{cfg.name}: variant {key} expected one of {VARIANTS[key]}, got {value!r}")


def _check_even(name: str, value: int) -> None:
    if value % 2:
        raise ValueError(f"{name}: expected an even RoPE dim, got {value}")


@dataclass(frozen=True, kw_only=True)
class YarnRope:
    """RoPE table parameters (ds32 ``precompute_freqs_cis``): YaRN applies when the model's
    context length exceeds ``original_seq_len``."""

    theta: float
    factor: float = 1.0
    original_seq_len: int = 0
    model_seq_len: int = 0
    beta_fast: int = 32
    beta_slow: int = 1

    @property
    def yarn(self) -> bool:
        return self.original_seq_len > 0 and self.model_seq_len > self.original_seq_len


@dataclass(frozen=True, kw_only=True)
class V32Config:
    """DeepSeek V3.2 decode front, scope 1 (``v32.decode_front``)."""

    name: str
    hidden: int  # D
    q_lora: int  # QL
    heads: int  # H
    nope: int  # NOPE (qk_nope_head_dim)
    rope: int  # ROPE (qk_rope_head_dim)
    kv_lora: int  # KL
    max_seq: int  # MAX_SEQ: cache rows per batch entry (PR #134: 4096)
    # the indexer and sparse attention (pypto-lib HEAD decode_front.py scopes 2-4)
    index_heads: int = 64  # IH
    index_head_dim: int = 128  # ID; its first ROPE dims are rotated
    index_topk: int = 2048  # TOPK: cache positions each token attends to
    v_head: int = 128  # V: value head dim (the latent-to-V projection)
    ep_nodes: int = 128  # EP: dispatch_buf's node axis
    eps: float = EPS
    rope_params: YarnRope = field(
        default_factory=lambda: YarnRope(
            theta=10000.0, factor=40.0, original_seq_len=4096, model_seq_len=163840
        )
    )
    # variants
    rmsnorm: str = "ds32"
    variance: str = "mean"
    cast: str = "rne"
    accumulate: str = "exact"
    rope_layout: str = "half"
    q_norm_input: str = "bf16"  # "fp32": variance of the fp32 qr, normalising bf16(qr) (PR #134)
    index_input: str = "normed"
    index_score: str = "relu"
    index_weights: str = "bf16"
    attn_scale: str = "yarn"
    q_latent: str = "bf16"
    attn_probs: str = "bf16"

    model = "v32.decode_front"

    @property
    def head_dim(self) -> int:
        return self.nope + self.rope

    def __post_init__(self) -> None:
        _check_variants(self)
        _check_even("rope", self.rope)
        if not self.rope < self.index_head_dim or not 0 < self.index_topk <= self.max_seq:
            raise ValueError(f"{self.name}: expected rope {self.rope} < index_head_dim "
                             f"{self.index_head_dim} and 0 < index_topk {self.index_topk} <= "
                             f"max_seq {self.max_seq}")


@dataclass(frozen=True, kw_only=True)
class V4Config:
    """DeepSeek V4 attention qkv_proj_rope (``v4.qkv_proj_rope``), W8A8C16 q projection."""

    name: str
    hidden: int  # D
    q_lora: int  # QL
    heads: int  # H
    head_dim: int  # HD
    rope: int  # ROPE
    eps: float = EPS
    # SWA layers: theta 1e4, no YaRN; compressed layers: theta 1.6e5 with YaRN.
    swa_rope: YarnRope = field(default_factory=lambda: YarnRope(theta=10000.0))
    compressed_rope: YarnRope = field(
        default_factory=lambda: YarnRope(
            theta=160000.0, factor=16.0, original_seq_len=65536, model_seq_len=1048576
        )
    )
    max_pos: int = 16384  # positions make_inputs draws from (pypto-lib kernel max seq)
    # variants
    rmsnorm: str = "ds32"
    variance: str = "mean"
    cast: str = "rne"
    accumulate: str = "exact"
    qr_prequant_round: bool = True
    rope_preround: bool = False
    rope_table: str = "pair"
    proj_out: str = "fp32"  # "bf16": qr32 / kv32 rounded to bf16 (official V4 Linear outputs)
    q_head_norm: str = "fp32"  # "bf16": bf16(qf), per-head RMSNorm in bf16 tensor arithmetic
    kv_nope_fp8: bool = False  # True: kv[:, :NOPE] through FP8 e4m3, 64-blocks, ue8m0 scales
    rope_table_dtype: str = "bf16"  # "fp32": rope_cos / rope_sin inputs in fp32 (freqs_cis)
    qr_scale_form: str = "div"  # "mul_recip": sq = 127 · f32(1/amax) (PR #332's torch golden)

    model = "v4.qkv_proj_rope"

    @property
    def nope(self) -> int:
        return self.head_dim - self.rope

    def __post_init__(self) -> None:
        _check_variants(self)
        _check_even("rope", self.rope)
        if self.kv_nope_fp8 and self.nope % FP8_BLOCK:
            raise ValueError(f"{self.name}: kv_nope_fp8 quantises blocks of {FP8_BLOCK}; "
                             f"nope dim {self.nope} is not a multiple")


FP8_BLOCK = 64  # kv_nope_fp8: columns per ue8m0 scale (official act_quant(kv[..., :-rd], 64))

Config = V32Config | V4Config

_PRESETS: dict[str, Config] = {
    "v32": V32Config(
        name="v32", hidden=7168, q_lora=1536, heads=128, nope=128, rope=64, kv_lora=512,
        max_seq=4096,
    ),
    "v32-tiny": V32Config(
        name="v32-tiny", hidden=1536, q_lora=1024, heads=4, nope=64, rope=32, kv_lora=160,
        max_seq=64, index_heads=4, index_head_dim=64, index_topk=16, v_head=32, ep_nodes=4,
    ),
    "v4-flash": V4Config(name="v4-flash", hidden=4096, q_lora=1024, heads=64, head_dim=512, rope=64),
    "v4-pro": V4Config(name="v4-pro", hidden=7168, q_lora=1536, heads=128, head_dim=512, rope=64),
    "v4-tiny": V4Config(
        name="v4-tiny", hidden=1536, q_lora=512, heads=4, head_dim=160, rope=32, max_pos=256
    ),
}

def config_names() -> list[str]:
    """Preset names, e.g. ``['v32', 'v32-tiny', 'v4-flash', 'v4-pro', 'v4-tiny']``."""
    return list(_PRESETS)


def config(name: str, *, semantics: str | None = None, **variants: Any) -> Config:
    """The preset ``name`` under the named ``semantics`` (default: the config's own variants,
    i.e. ``ds32``), with variant fields overridden by keyword on top."""
    try:
        cfg = _PRESETS[name]
    except KeyError:
        raise ValueError(f"config: expected one of {config_names()}, got {name!r}") from None
    if semantics is not None:
        cfg = with_semantics(cfg, semantics)
    return with_variants(cfg, **variants) if variants else cfg


def with_variants(cfg: Config, **variants: Any) -> Config:
    """``cfg`` with variant fields replaced; unknown or inapplicable names are errors."""
    allowed = MODEL_VARIANTS[cfg.model]
    for key in variants:
        if key not in allowed:
            raise ValueError(f"variant {key!r} does not apply to {cfg.model}: expected one of {allowed}")
    return dataclasses.replace(cfg, **variants)


def parse_variants(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ``["rmsnorm=hf", "qr_prequant_round=false"]`` into typed variant values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in VARIANTS:
            raise ValueError(f"variant: expected KEY=VALUE with KEY in {list(VARIANTS)}, got {item!r}")
        choices = VARIANTS[key]
        value: Any = raw
        if isinstance(choices[0], bool):
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        if value not in choices:
            raise ValueError(f"variant {key}: expected one of {choices}, got {raw!r}")
        out[key] = value
    return out


def variant_values(cfg: Config) -> dict[str, Any]:
    """The variant fields of ``cfg`` and their values."""
    return {k: getattr(cfg, k) for k in MODEL_VARIANTS[cfg.model]}


# ---------------------------------------------------------------------------------------------
# Named semantics: presets bundling variants, each with the public code it follows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Semantics:
    """A named semantics: the variant values it sets per model (every other variant takes its
    default) and the public sources those values were read from."""

    name: str
    summary: str
    variants: dict[str, dict[str, Any]]  # model -> {variant: value}; the models it applies to
    sources: tuple[str, ...]
    unmodelled: str = ""  # what the implementation does that no variant expresses

    def applies_to(self, model: str) -> bool:
        """Whether it applies to ``model`` (a stage range ``MODEL[A:B]``: to ``MODEL``)."""
        return family(model) in self.variants


_V32, _V4 = "v32.decode_front", "v4.qkv_proj_rope"
_PR134_FILE = "hw-native-sys/pypto-lib PR #134 · models/deepseek/v3_2/deepseek_v3_2_decode_front.py"
_HEAD_V32 = "hw-native-sys/pypto-lib (HEAD) · models/deepseek_v3_2/decode_front.py"
_HEAD_V4 = "hw-native-sys/pypto-lib (HEAD) · models/deepseek_v4_pro/qkv_proj_rope.py"
_PR134_V32 = {"variance": "mul_inv", "cast": "rhaz", "q_norm_input": "fp32"}
#: HEAD decode_front.py scopes 2-4: the indexer reads the raw hidden_states, reduces its heads
#: into one query before scoring (no ReLU), keeps fp32 weights, scales by (NOPE+ROPE)^-½ only,
#: keeps q_nope's latent fp32 and runs an online fp32 softmax
_HEAD_V32_SPARSE = {"index_input": "hidden", "index_score": "reduce_q", "index_weights": "fp32",
                    "attn_scale": "plain", "q_latent": "fp32", "attn_probs": "exact"}

SEMANTICS: dict[str, Semantics] = {s.name: s for s in (
    Semantics(
        "ds32", "DeepSeek's official V3.2 code: every variant at its default (the dsref default); "
        "V3.2's indexer on the normed token with per-head ReLU and bf16 weights, its RoPE half "
        "(DeepSeek's fix), YaRN attention scale, bf16 q_nope latent and bf16 probabilities; its "
        "FP8 indexer (act_quant q / k, FP8 k cache, fp8_index) is not emulated",
        {_V32: {}, _V4: {}},
        ("deepseek-ai/DeepSeek-V3.2-Exp · inference/model.py · RMSNorm.forward, MLA.forward, "
         "apply_rotary_emb, precompute_freqs_cis",
         "deepseek-ai/DeepSeek-V3.2-Exp · inference/model.py · Indexer.forward, LayerNorm, "
         "rotate_activation, MLA.forward decode branch (softmax_scale, bf16 probabilities)",
         "deepseek-ai/DeepSeek-V3.2-Exp · inference/kernel.py · fp8_index, act_quant (FP8 scheme, "
         "documented only)",
         "vllm-project/vllm PR #28968 · the indexer RoPE is not interleaved")),
    Semantics(
        "hf", "HF transformers' two-rounding RMSNorm bf16(bf16(w) · bf16(x · inv_rms))",
        {_V32: {"rmsnorm": "hf"}, _V4: {"rmsnorm": "hf"}},
        ("huggingface/transformers · src/transformers/models/deepseek_v3/modeling_deepseek_v3.py"
         " · DeepseekV3RMSNorm",),
        "HF's bf16 RoPE tables and rotation arithmetic, and its de-interleaved output"),
    Semantics(
        "pypto-lib-pr134",
        "pypto-lib PR #134 decode front: variance sum·f32(1/N), pl.cast's default ties-away "
        "rounding, q_norm's variance taken from the fp32 qr while normalising bf16(qr)",
        {_V32: dict(_PR134_V32)},
        (f"{_PR134_FILE} · Stage 1.1-1.3 (input_rmsnorm, qr_fp32, q_lora_rmsnorm), "
         "pl.cast without mode",)),
    Semantics(
        "pypto-lib-pr332",
        "pypto-lib PR #332 V4 qkv_proj_rope: variance Σx²·f32(1/N), casts rint, qr "
        "quantised from bf16(qrn)",
        {_V4: {"variance": "mul_inv"}},
        ("hw-native-sys/pypto-lib PR #332 · models/deepseek/v4-flash/qkv_proj_rope.py · "
         "qkv_proj_rope (and its torch golden)",)),
    Semantics(
        "pypto-lib-head",
        "pypto-lib kernels as at HEAD: V3.2 scope 1 as PR #134, scopes 2-4 with the indexer on "
        "the raw hidden_states, heads reduced before scoring (no ReLU), fp32 weights, scale "
        "(NOPE+ROPE)^-0.5 without mscale², fp32 q_nope latent, online fp32 softmax (exact "
        "probabilities); V4 as PR #332 with qr quantised from the fp32 qrn (after PR #556)",
        {_V32: dict(_PR134_V32) | _HEAD_V32_SPARSE,
         _V4: {"variance": "mul_inv", "qr_prequant_round": False}},
        (f"{_HEAD_V32} · Stage 1.3 q_norm (q_variance from qr_fp32; qr_chunk_bf16 normalised)",
         f"{_HEAD_V32} · scopes 2-4 (Stage 2.1-2.8 indexer, 3.0-3.4 scores and top-k, scope 4 "
         "sparse attention, V projection, dispatch)",
         f"{_HEAD_V4} · qr_rms_quant (qr_q_normed quantised from fp32), "
         "qproj_dequant_rms_nope_rope, kv_rms_rope",
         "hw-native-sys/pypto-lib PR #556 · qr quantised from fp32"),
        "V4 at HEAD: rsqrt(high_precision=True) instead of recip(sqrt); the q head rotation "
        "applied to qf before inv_rms (inv_rms folded in afterwards); the qr amax taken as "
        "inv_rms · max|qr · gamma|"),
    Semantics(
        "cann", "CANN mla_prolog: bf16 before RoPE, element-indexed rope tables, qr quantised "
        "from fp32",
        {_V4: {"qr_prequant_round": False, "rope_preround": True, "rope_table": "element"}},
        ("hicann/cann-recipes-infer · mla_prolog reference",)),
    Semantics(
        "deepseek-v4-official",
        "DeepSeek-V4-Flash inference/model.py Attention.forward: bf16 Linear outputs, per-head q "
        "RMSNorm in bf16 arithmetic, RoPE on bf16 values with fp32 freqs_cis, FP8 e4m3 (ue8m0, "
        "64-blocks) quantise-dequantise of kv's nope dims",
        {_V4: {"proj_out": "bf16", "q_head_norm": "bf16", "rope_preround": True,
               "kv_nope_fp8": True, "rope_table_dtype": "fp32"}},
        ("deepseek-ai/DeepSeek-V4-Flash · inference/model.py · Attention.forward (qr = q = "
         "q_norm(wq_a(x)); q = wq_b(q); q *= rsqrt(q.square().mean(-1) + eps); "
         "apply_rotary_emb(q[..., -rd:]); kv = kv_norm(wkv(x)); apply_rotary_emb(kv[..., -rd:]);"
         " act_quant(kv[..., :-rd], 64, ue8m0, inplace=True)), RMSNorm, apply_rotary_emb",
         "deepseek-ai/DeepSeek-V4-Flash · inference/kernel.py · act_quant_kernel (inplace, "
         "round_scale), fast_round_scale",
         "deepseek-ai/DeepSeek-V3.2-Exp · inference/kernel.py · act_quant_kernel, "
         "fast_round_scale (amax floor 1e-4, scale 2^ceil(log2(amax · f32(1/448))))"),
        "the FP8 projections of the shipped checkpoint (config dtype fp8: wq_a, wq_b, wkv are "
        "block-quantised FP8 GEMMs, a different scheme from the W8A8 int8 qr / wq_b path dsref "
        "models); qr is still quantised to int8 here"),
)}


def family(model: str) -> str:
    """The whole model a name denotes: ``MODEL`` for a stage range ``MODEL[A:B]``."""
    return model.split("[", 1)[0]


def semantics_names(model: str | None = None) -> list[str]:
    """Names of the named semantics (those applying to ``model`` when given)."""
    return [n for n, s in SEMANTICS.items() if model is None or s.applies_to(model)]


def with_semantics(cfg: Config, name: str) -> Config:
    """``cfg`` under the named semantics: every variant of its model at the preset's value,
    or its default where the preset sets none (as :func:`with_variants` does for one)."""
    sem = SEMANTICS.get(name)
    if sem is None:
        raise ValueError(f"semantics: expected one of {semantics_names()}, got {name!r}")
    if not sem.applies_to(cfg.model):
        raise ValueError(f"semantics {name!r} does not apply to {cfg.model}: expected one of "
                         f"{semantics_names(cfg.model)}")
    values = {k: VARIANTS[k][0] for k in MODEL_VARIANTS[cfg.model]}
    return dataclasses.replace(cfg, **{**values, **sem.variants[cfg.model]})


def semantics_of(cfg: Config) -> str | None:
    """The named semantics ``cfg``'s variants are exactly, or None (the first of equal ones)."""
    mine = variant_values(cfg)
    return next((n for n in semantics_names(cfg.model)
                 if variant_values(with_semantics(cfg, n)) == mine), None)


def semantic_variants(model: str, semantics: str | None, overrides: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Every variant of ``model`` under the named ``semantics`` (None: only ``overrides``),
    with ``overrides`` on top — for callers that take a variants dict (``--semantics`` with
    ``--variant`` on a command that learns its model late)."""
    out: dict[str, Any] = {}
    model = family(model)
    if semantics is not None:
        sem = SEMANTICS.get(semantics)
        if sem is None:
            raise ValueError(f"semantics: expected one of {semantics_names()}, got {semantics!r}")
        if not sem.applies_to(model):
            raise ValueError(f"semantics {semantics!r} does not apply to {model}: expected one "
                             f"of {semantics_names(model)}")
        out = {k: VARIANTS[k][0] for k in MODEL_VARIANTS[model]} | sem.variants[model]
    return out | dict(overrides or {})
