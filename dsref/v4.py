"""DeepSeek V4 attention front ``v4.qkv_proj_rope`` (pypto-lib PR #332 semantics, W8A8C16).

Stages, in order: attn_norm → qr_proj_matmul → qr_rms → qr_quant → qproj_matmul →
q_head_rms_rope → kv_proj_matmul → kv_rms_rope. T = B·S tokens; ``rope_cos/rope_sin`` are
bf16 ``[T, ROPE]`` rows already gathered per token (``rope_table_dtype="fp32"``: fp32 rows,
the official code's ``freqs_cis``).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dsref.config import V4Config
from dsref.model import Model, TensorSpec, register_model, stage
from dsref.numerics import concat_bf16, r32, rbf16, widen
from dsref.proj import proj_f32, proj_int8
from dsref.quant import fp8_qdq_blocks, quant_int8
from dsref.rmsnorm import head_norm_bf16, inv_rms, rms_norm
from dsref.rope import rope_interleaved

MODEL = "v4.qkv_proj_rope"
BF16 = jnp.bfloat16


def _norm_rope(v, gamma, rope_cos, rope_sin, cfg: V4Config, *, fp8_nope: bool = False):
    """Per row of ``v [T, ..., HD]``: ``n = (v · inv_rms(v)) [· gamma]``; nope part → bf16;
    rope part rotated (interleaved pairs) on fp32 ``n`` (``rope_preround``: on bf16(n)) → bf16.
    ``fp8_nope``: the bf16 nope part then goes through the FP8 quantise–dequantise.

    The two parts are computed and rounded to bf16 separately and joined as bf16 words: a
    joined full-width float64 ``n`` costs XLA CPU a 33 MB buffer per call at FLASH dims."""
    inv = inv_rms(v, eps=cfg.eps, variance=cfg.variance)

    def normed(cols: slice):
        n = r32(v[..., cols] * inv)
        return n if gamma is None else r32(n * gamma[..., cols])

    nope = rbf16(normed(slice(None, cfg.nope)), cfg.cast)
    pe = normed(slice(cfg.nope, None))
    if cfg.rope_preround:
        pe = rbf16(pe, cfg.cast)
    if fp8_nope:
        nope = fp8_qdq_blocks(nope, cfg.cast)
    return concat_bf16([nope, _rotate(pe, rope_cos, rope_sin, cfg)])


def _rotate(pe, rope_cos, rope_sin, cfg: V4Config):
    """``bf16(rope_interleaved(pe))`` with the token's table row broadcast over heads."""
    extra = (1,) * (pe.ndim - 2)
    c = widen(rope_cos).reshape(rope_cos.shape[:1] + extra + (-1,))
    s = widen(rope_sin).reshape(rope_sin.shape[:1] + extra + (-1,))
    return rbf16(rope_interleaved(pe, c, s, table=cfg.rope_table), cfg.cast)


@stage(MODEL, "tok")
def attn_norm(x, norm_w, *, cfg: V4Config):
    """``tok = rms_norm(x.reshape(T, D), norm_w)`` (ds32 RMSNorm, bf16 out)."""
    t = x.shape[0] * x.shape[1]
    return rms_norm(
        widen(x).reshape(t, -1), widen(norm_w), eps=cfg.eps, variance=cfg.variance,
        kind=cfg.rmsnorm, cast=cfg.cast,
    ).astype(BF16)


def _proj(x, w, cfg: V4Config):
    y = proj_f32(x, w, accumulate=cfg.accumulate)
    return (rbf16(y, cfg.cast) if cfg.proj_out == "bf16" else y).astype(jnp.float32)


@stage(MODEL, "qr32")
def qr_proj_matmul(tok, wq_a, *, cfg: V4Config):
    """``qr32 = tok @ wq_a`` in fp32 — no rounding to bf16 (``proj_out="bf16"``: rounded to
    bf16, the official bf16 Linear output, still stored as fp32)."""
    return _proj(tok, wq_a, cfg)


@stage(MODEL, "qr_norm")
def qr_rms(qr32, gamma_cq, *, cfg: V4Config):
    """``qrn = (qr32 · inv_rms(qr32)) · f32(gamma_cq)``; PR #332 rounds it to bf16
    (``qr_prequant_round=False``: left in fp32, pypto-lib after PR #556 and CANN)."""
    v = widen(qr32)
    qrn = r32(r32(v * inv_rms(v, eps=cfg.eps, variance=cfg.variance)) * widen(gamma_cq))
    if cfg.qr_prequant_round:
        return rbf16(qrn, cfg.cast).astype(BF16)
    return qrn.astype(jnp.float32)


@stage(MODEL, "qr", "qr_scale")
def qr_quant(qr_norm, *, cfg: V4Config):
    """Per token: ``amax = max(max|v|, 1e-4)``, ``sq = 127 / amax``, ``qr_scale = 1 / sq``,
    ``qr = int8(fp16(int32_rne(v · sq)))`` (``qr_scale_form="mul_recip"``:
    ``sq = 127 · f32(1 / amax)``)."""
    codes, scale = quant_int8(widen(qr_norm), cfg.qr_scale_form)
    return codes.astype(jnp.int8), scale.astype(jnp.float32)


@stage(MODEL, "qf")
def qproj_matmul(qr, qr_scale, wq_b, wq_b_scale, *, cfg: V4Config):
    """``acc = qr @ wq_b`` (int32, exact); ``qf = (f32(acc) · qr_scale[t]) · wq_b_scale[c]``."""
    return proj_int8(qr, qr_scale, wq_b, wq_b_scale[None, :]).astype(jnp.float32)


@stage(MODEL, "q")
def q_head_rms_rope(qf, rope_cos, rope_sin, *, cfg: V4Config):
    """Per head ``n = qf_h · inv_rms(qf_h)`` over HD (no gamma); ``q[..., :NOPE] = bf16(n)``;
    the rope part rotated in interleaved pairs on fp32 ``n``, each element rounded once.
    ``q_head_norm="bf16"`` (official V4): ``n = head_norm_bf16(bf16(qf_h))`` in bf16 tensor
    arithmetic; ``q[..., :NOPE] = n``, the rope part rotated on the bf16 ``n``."""
    v = widen(qf).reshape(qf.shape[0], cfg.heads, cfg.head_dim)
    if cfg.q_head_norm == "bf16":
        n = head_norm_bf16(rbf16(v, cfg.cast), eps=cfg.eps, variance=cfg.variance, cast=cfg.cast)
        return concat_bf16([n[..., : cfg.nope], _rotate(n[..., cfg.nope:], rope_cos, rope_sin, cfg)])
    return _norm_rope(v, None, rope_cos, rope_sin, cfg)


@stage(MODEL, "kv32")
def kv_proj_matmul(tok, wkv, *, cfg: V4Config):
    """``kv32 = tok @ wkv`` in fp32 (``proj_out="bf16"``: rounded to bf16, stored as fp32)."""
    return _proj(tok, wkv, cfg)


@stage(MODEL, "kv")
def kv_rms_rope(kv32, gamma_ckv, rope_cos, rope_sin, *, cfg: V4Config):
    """``n = (kv32 · inv_rms(kv32)) · f32(gamma_ckv)`` (gamma before the rotation); nope →
    ``bf16(n)``; rope part as in ``q_head_rms_rope``. ``kv_nope_fp8`` (official V4): the bf16
    nope part through an FP8 e4m3 quantise–dequantise per 64-column block (ue8m0 scale)."""
    return _norm_rope(widen(kv32), widen(gamma_ckv), rope_cos, rope_sin, cfg,
                      fp8_nope=cfg.kv_nope_fp8)


def qkv_proj_rope(inputs: dict, *, cfg: V4Config) -> dict:
    """The composed model: stored arrays in, stored arrays out."""
    ins = inputs
    tok = attn_norm(ins["x"], ins["norm_w"], cfg=cfg)
    qr32 = qr_proj_matmul(tok, ins["wq_a"], cfg=cfg)
    qr_norm = qr_rms(qr32, ins["gamma_cq"], cfg=cfg)
    qr, qr_scale = qr_quant(qr_norm, cfg=cfg)
    qf = qproj_matmul(qr, qr_scale, ins["wq_b"], ins["wq_b_scale"], cfg=cfg)
    q = q_head_rms_rope(qf, ins["rope_cos"], ins["rope_sin"], cfg=cfg)
    kv32 = kv_proj_matmul(tok, ins["wkv"], cfg=cfg)
    kv = kv_rms_rope(kv32, ins["gamma_ckv"], ins["rope_cos"], ins["rope_sin"], cfg=cfg)
    return {"q": q, "kv": kv, "qr": qr, "qr_scale": qr_scale}


_BF = np.dtype(ml_dtypes.bfloat16)
_F32 = np.dtype(np.float32)
_I8 = np.dtype(np.int8)


def input_specs(cfg: V4Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    t, d, ql, hd, r = batch * seq, cfg.hidden, cfg.q_lora, cfg.head_dim, cfg.rope
    tab = _F32 if cfg.rope_table_dtype == "fp32" else _BF
    spec = {
        "x": ((batch, seq, d), _BF), "norm_w": ((d,), _F32), "wq_a": ((d, ql), _BF),
        "wq_b": ((ql, cfg.heads * hd), _I8), "wq_b_scale": ((cfg.heads * hd,), _F32),
        "wkv": ((d, hd), _BF), "rope_cos": ((t, r), tab), "rope_sin": ((t, r), tab),
        "gamma_cq": ((ql,), _BF), "gamma_ckv": ((hd,), _BF),
    }
    return {k: TensorSpec(*v) for k, v in spec.items()}


def output_specs(cfg: V4Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    t = batch * seq
    spec = {
        "q": ((t, cfg.heads, cfg.head_dim), _BF), "kv": ((t, cfg.head_dim), _BF),
        "qr": ((t, cfg.q_lora), _I8), "qr_scale": ((t, 1), _F32),
    }
    return {k: TensorSpec(*v) for k, v in spec.items()}


register_model(Model(
    name=MODEL, fn=qkv_proj_rope,
    stages=("attn_norm", "qr_proj_matmul", "qr_rms", "qr_quant", "qproj_matmul",
            "q_head_rms_rope", "kv_proj_matmul", "kv_rms_rope"),
    config_type=V4Config, input_specs=input_specs, output_specs=output_specs, inouts=(),
    doc=__doc__ or "", step_inputs=("x", "rope_cos", "rope_sin"),
    matmul_weights=("wq_a", "wq_b", "wkv"),
    # pypto-lib HEAD split attn_norm out (rmsnorm.py writes x_normed) and qkv_proj_rope.py
    # takes the normalised token as x
    kernel_names=(("tok", ("x", "x_normed")),),
))
