"""Model configurations: frozen, keyword-only dataclasses, presets by name, variants as fields.

Dimensions follow the pypto-lib configs (DeepSeek V3.2 decode front PR #134; DeepSeek V4
FLASH / PRO of ``models/deepseek_v4_*/config.py``). Semantic variants (SEMANTICS.md,
"Variants") are ordinary fields; switch them with :func:`with_variants` or
``dataclasses.replace``. Tiny presets keep every structural feature: several heads, a nope/rope
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
}


MODEL_VARIANTS = {
    "v32.decode_front": ("rmsnorm", "variance", "cast", "accumulate", "rope_layout"),
    "v4.qkv_proj_rope": (
        "rmsnorm", "variance", "cast", "accumulate", "qr_prequant_round", "rope_preround",
        "rope_table",
    ),
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

    model = "v32.decode_front"

    @property
    def head_dim(self) -> int:
        return self.nope + self.rope

    def __post_init__(self) -> None:
        _check_variants(self)
        _check_even("rope", self.rope)


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

    model = "v4.qkv_proj_rope"

    @property
    def nope(self) -> int:
        return self.head_dim - self.rope

    def __post_init__(self) -> None:
        _check_variants(self)
        _check_even("rope", self.rope)


Config = V32Config | V4Config

_PRESETS: dict[str, Config] = {
    "v32": V32Config(
        name="v32", hidden=7168, q_lora=1536, heads=128, nope=128, rope=64, kv_lora=512,
        max_seq=4096,
    ),
    "v32-tiny": V32Config(
        name="v32-tiny", hidden=1536, q_lora=1024, heads=4, nope=64, rope=32, kv_lora=160,
        max_seq=64,
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


def config(name: str, **variants: Any) -> Config:
    """The preset ``name``, with variant fields overridden by keyword."""
    try:
        cfg = _PRESETS[name]
    except KeyError:
        raise ValueError(f"config: expected one of {config_names()}, got {name!r}") from None
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
