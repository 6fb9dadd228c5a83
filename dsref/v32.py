"""DeepSeek V3.2 decode front, scope 1 (``v32.decode_front``): ds32 math, pypto-lib layout.

Stages, in order: input_rmsnorm → q_lora_proj → q_lora_rmsnorm → q_head_proj → kv_a_proj →
q_rope → kv_rmsnorm → decode_cache_write. ``dsref spec STAGE`` gives each formula; the stage
docstrings repeat it with the rounding points.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dsref.cache import decode_rows, write_rows
from dsref.config import V32Config
from dsref.model import Model, TensorSpec, register_model, stage
from dsref.numerics import rbf16, widen
from dsref.proj import proj_bf16, proj_f32
from dsref.rmsnorm import rms_norm
from dsref.rope import rope

MODEL = "v32.decode_front"
BF16 = jnp.bfloat16


def _rms_norm(x, w, cfg: V32Config, stats=None):
    return rms_norm(
        widen(x), widen(w), eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm, cast=cfg.cast,
        stats=stats,
    ).astype(BF16)


def _rotate(x, seq_lens, rope_cos, rope_sin, cfg: V32Config):
    """RoPE of bf16 ``x [B, ..., R]`` at each entry's position ``seq_lens[b] − 1``, to bf16."""
    pos = seq_lens.astype(jnp.int32) - 1
    extra = (1,) * (x.ndim - 2)
    c = widen(rope_cos[pos]).reshape(pos.shape + extra + (-1,))
    s = widen(rope_sin[pos]).reshape(pos.shape + extra + (-1,))
    return rbf16(rope(widen(x), c, s, layout=cfg.rope_layout), cfg.cast).astype(BF16)


@stage(MODEL, "normed")
def input_rmsnorm(hidden_states, input_rms_weight, *, cfg: V32Config):
    """``normed = bf16(w · (x · inv_rms(x)))`` over D (ds32 RMSNorm)."""
    return _rms_norm(hidden_states, input_rms_weight, cfg)


@stage(MODEL, "qr_raw")
def q_lora_proj(normed, wq_a, *, cfg: V32Config):
    """``qr_raw = bf16(normed @ wq_a)`` (ds32 Linear output is bf16);
    ``q_norm_input="fp32"``: ``qr_raw = normed @ wq_a`` left in fp32 (PR #134's qr_fp32)."""
    if cfg.q_norm_input == "fp32":
        return proj_f32(normed, wq_a, accumulate=cfg.accumulate).astype(jnp.float32)
    return proj_bf16(normed, wq_a, accumulate=cfg.accumulate, cast=cfg.cast).astype(BF16)


@stage(MODEL, "qr_out")
def q_lora_rmsnorm(qr_raw, q_norm_weight, *, cfg: V32Config):
    """``qr_out = rms_norm(qr_raw, q_norm_weight)`` — variance of the bf16-rounded qr;
    ``q_norm_input="fp32"``: ``qr_out = bf16(w · (bf16(qr) · inv_rms(qr)))``, the variance of
    the fp32 qr (PR #134), the bf16 rounding of qr with the ``cast`` mode."""
    if cfg.q_norm_input == "fp32":
        qr = widen(qr_raw)
        return _rms_norm(rbf16(qr, cfg.cast), q_norm_weight, cfg, stats=qr)
    return _rms_norm(qr_raw, q_norm_weight, cfg)


@stage(MODEL, "q")
def q_head_proj(qr_out, wq_b, *, cfg: V32Config):
    """``q = bf16(qr_out @ wq_b)`` ``[B, H·(NOPE+ROPE)]``, head-major."""
    return proj_bf16(qr_out, wq_b, accumulate=cfg.accumulate, cast=cfg.cast).astype(BF16)


@stage(MODEL, "kv_a_out")
def kv_a_proj(normed, wkv_a, *, cfg: V32Config):
    """``kv_a_out = bf16(normed @ wkv_a)`` ``[B, KL+ROPE]``."""
    return proj_bf16(normed, wkv_a, accumulate=cfg.accumulate, cast=cfg.cast).astype(BF16)


@stage(MODEL, "q_nope_out", "q_pe_out")
def q_rope(q, seq_lens, rope_cos, rope_sin, *, cfg: V32Config):
    """Split q per head; ``q_nope_out = q[..., :NOPE]``; ``q_pe_out = rope(q[..., NOPE:], pos)``
    with ``pos = seq_lens[b] − 1``, each rotated element rounded once to bf16."""
    b = q.shape[0]
    q3 = q.reshape(b, cfg.heads, cfg.head_dim)
    q_pe = _rotate(q3[..., cfg.nope:], seq_lens, rope_cos, rope_sin, cfg)
    return q3[..., : cfg.nope].reshape(b, -1), q_pe.reshape(b, -1)


@stage(MODEL, "kv_normed")
def kv_rmsnorm(kv_a_out, kv_norm_weight, *, cfg: V32Config):
    """``kv_normed = rms_norm(kv_a_out[:, :KL], kv_norm_weight)``."""
    return _rms_norm(kv_a_out[:, : cfg.kv_lora], kv_norm_weight, cfg)


@stage(MODEL, "kv_cache", "pe_cache")
def decode_cache_write(kv_normed, kv_a_out, seq_lens, rope_cos, rope_sin, kv_cache, pe_cache, *,
                       cfg: V32Config):
    """``row = b·MAX_SEQ + pos_b``: ``kv_cache[row] = kv_normed[b]``,
    ``pe_cache[row] = rope(kv_a_out[b, KL:], pos_b)``; every other row bit-identical."""
    rows = decode_rows(seq_lens, cfg.max_seq)
    pe = _rotate(kv_a_out[:, cfg.kv_lora:], seq_lens, rope_cos, rope_sin, cfg)
    return write_rows(kv_cache, rows, kv_normed), write_rows(pe_cache, rows, pe)


def decode_front(inputs: dict, *, cfg: V32Config) -> dict:
    """The composed scope-1 model: stored arrays in, stored arrays out."""
    ins = inputs
    normed = input_rmsnorm(ins["hidden_states"], ins["input_rms_weight"], cfg=cfg)
    qr_raw = q_lora_proj(normed, ins["wq_a"], cfg=cfg)
    qr_out = q_lora_rmsnorm(qr_raw, ins["q_norm_weight"], cfg=cfg)
    q = q_head_proj(qr_out, ins["wq_b"], cfg=cfg)
    kv_a_out = kv_a_proj(normed, ins["wkv_a"], cfg=cfg)
    q_nope_out, q_pe_out = q_rope(q, ins["seq_lens"], ins["rope_cos"], ins["rope_sin"], cfg=cfg)
    kv_normed = kv_rmsnorm(kv_a_out, ins["kv_norm_weight"], cfg=cfg)
    kv_cache, pe_cache = decode_cache_write(
        kv_normed, kv_a_out, ins["seq_lens"], ins["rope_cos"], ins["rope_sin"], ins["kv_cache"],
        ins["pe_cache"], cfg=cfg,
    )
    return {
        "qr_out": qr_out, "q_nope_out": q_nope_out, "q_pe_out": q_pe_out, "kv_a_out": kv_a_out,
        "kv_cache": kv_cache, "pe_cache": pe_cache,
    }


_BF = np.dtype(ml_dtypes.bfloat16)
_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


def input_specs(cfg: V32Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    b, d, ql, kl, r = batch, cfg.hidden, cfg.q_lora, cfg.kv_lora, cfg.rope
    rows = batch * cfg.max_seq
    spec = {
        "hidden_states": ((b, d), _BF), "input_rms_weight": ((1, d), _F32),
        "wq_a": ((d, ql), _BF), "q_norm_weight": ((1, ql), _F32),
        "wq_b": ((ql, cfg.heads * cfg.head_dim), _BF), "wkv_a": ((d, kl + r), _BF),
        "kv_norm_weight": ((1, kl), _F32), "seq_lens": ((b,), _I32),
        "rope_cos": ((cfg.max_seq, r), _F32), "rope_sin": ((cfg.max_seq, r), _F32),
        "kv_cache": ((rows, kl), _BF), "pe_cache": ((rows, r), _BF),
    }
    return {k: TensorSpec(*v) for k, v in spec.items()}


def output_specs(cfg: V32Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    b, rows = batch, batch * cfg.max_seq
    spec = {
        "qr_out": ((b, cfg.q_lora), _BF), "q_nope_out": ((b, cfg.heads * cfg.nope), _BF),
        "q_pe_out": ((b, cfg.heads * cfg.rope), _BF), "kv_a_out": ((b, cfg.kv_lora + cfg.rope), _BF),
        "kv_cache": ((rows, cfg.kv_lora), _BF), "pe_cache": ((rows, cfg.rope), _BF),
    }
    return {k: TensorSpec(*v) for k, v in spec.items()}


register_model(Model(
    name=MODEL, fn=decode_front,
    stages=("input_rmsnorm", "q_lora_proj", "q_lora_rmsnorm", "q_head_proj", "kv_a_proj", "q_rope",
            "kv_rmsnorm", "decode_cache_write"),
    config_type=V32Config, input_specs=input_specs, output_specs=output_specs,
    inouts=("kv_cache", "pe_cache"), doc=__doc__ or "",
    step_inputs=("hidden_states", "seq_lens"), matmul_weights=("wq_a", "wq_b", "wkv_a"),
))
