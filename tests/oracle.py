"""Independent numpy + ml_dtypes oracle of SEMANTICS.md, written apart from dsref.

Arithmetic is plain numpy float32 (each ufunc one correctly rounded IEEE op, never fused);
sums and dots accumulate in float64 and round once to float32; bf16 rounding is ml_dtypes'
cast (RNE). Ties-away is built differently from dsref: both bf16 neighbours from
``np.nextafter`` in bf16, the tie decided by exact float64 distances.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

F32 = np.float32
BF16 = ml_dtypes.bfloat16


def f32(a) -> np.ndarray:
    return np.asarray(a).astype(F32)


def bf16(x, mode: str = "rne") -> np.ndarray:
    """fp32 → bf16 (as a bf16 array)."""
    x = f32(x)
    r = x.astype(BF16)
    if mode == "rne":
        return r
    assert mode == "rhaz"
    rf = r.astype(np.float64)
    xd = x.astype(np.float64)
    below = np.where(rf <= xd, r, np.nextafter(r, BF16(-np.inf)))
    above = np.where(rf >= xd, r, np.nextafter(r, BF16(np.inf)))
    d_lo = xd - below.astype(np.float64)
    d_hi = above.astype(np.float64) - xd
    tie = (d_lo == d_hi) & (d_lo > 0) & np.isfinite(rf)
    away = np.where(xd > 0, above, below)
    return np.where(tie, away, r).astype(BF16)


def rb(x, mode: str = "rne") -> np.ndarray:
    """Round to bf16 and widen back to fp32."""
    return bf16(x, mode).astype(F32)


def sum32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).sum(axis=-1, keepdims=True).astype(F32)


def matmul32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(F32)


def inv_rms(v: np.ndarray, eps: float = 1e-6, variance: str = "mean") -> np.ndarray:
    v = f32(v)
    n = v.shape[-1]
    s = sum32(v * v)
    var = s / F32(n) if variance == "mean" else s * F32(1.0 / n)
    return F32(1.0) / np.sqrt(var + F32(eps))


def rms_norm(x, w, *, eps=1e-6, variance="mean", kind="ds32", cast="rne") -> np.ndarray:
    x, w = f32(x), f32(w)
    normed = x * inv_rms(x, eps, variance)
    if kind == "ds32":
        return bf16(w * normed, cast)
    return bf16(rb(w) * rb(normed, cast), cast)


def rope_half(x, c, s) -> np.ndarray:
    h = x.shape[-1] // 2
    xl, xh = f32(x[..., :h]), f32(x[..., h:])
    lo = xl * c[..., :h] - xh * s[..., :h]
    hi = xh * c[..., h:] + xl * s[..., h:]
    return np.concatenate([lo, hi], axis=-1)


def rope_interleaved(x, c, s, table: str = "pair") -> np.ndarray:
    x = f32(x)
    out = np.empty_like(x)
    for i in range(x.shape[-1] // 2):
        je, jo = (i, i) if table == "pair" else (2 * i, 2 * i + 1)
        xe, xo = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i] = xe * c[..., je] - xo * s[..., je]
        out[..., 2 * i + 1] = xe * s[..., jo] + xo * c[..., jo]
    return out


def quant_int8(v) -> tuple[np.ndarray, np.ndarray]:
    v = f32(v)
    amax = np.maximum(np.abs(v).max(axis=-1, keepdims=True), F32(1e-4))
    sq = F32(127) / amax
    scale = F32(1) / sq
    n = np.rint(v * sq).astype(np.int32)  # half to even
    h = n.astype(np.float16)
    codes = np.clip(np.trunc(h.astype(np.float64)), -128, 127).astype(np.int8)
    return codes, scale


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def v32_stages(cfg, ins: dict) -> dict[str, np.ndarray]:
    """Every V3.2 stage output, chained, keyed by dsref's output names."""
    kw = dict(eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm, cast=cfg.cast)
    B, H, nope, kl = ins["hidden_states"].shape[0], cfg.heads, cfg.nope, cfg.kv_lora
    out = {}
    out["normed"] = normed = rms_norm(ins["hidden_states"], ins["input_rms_weight"], **kw)
    out["qr_raw"] = qr_raw = bf16(matmul32(normed, ins["wq_a"]), cfg.cast)
    out["qr_out"] = qr_out = rms_norm(qr_raw, ins["q_norm_weight"], **kw)
    out["q"] = q = bf16(matmul32(qr_out, ins["wq_b"]), cfg.cast)
    out["kv_a_out"] = kv_a = bf16(matmul32(normed, ins["wkv_a"]), cfg.cast)
    pos = ins["seq_lens"].astype(np.int64) - 1
    c, s = ins["rope_cos"][pos], ins["rope_sin"][pos]  # [B, R]
    rot = rope_half if cfg.rope_layout == "half" else rope_interleaved
    q3 = q.reshape(B, H, cfg.head_dim)
    out["q_nope_out"] = q3[..., :nope].reshape(B, -1)
    out["q_pe_out"] = bf16(rot(q3[..., nope:], c[:, None], s[:, None]), cfg.cast).reshape(B, -1)
    out["kv_normed"] = kv_n = rms_norm(kv_a[:, :kl], ins["kv_norm_weight"], **kw)
    rows = np.arange(B) * cfg.max_seq + pos
    kv_cache, pe_cache = ins["kv_cache"].copy(), ins["pe_cache"].copy()
    kv_cache[rows] = kv_n
    pe_cache[rows] = bf16(rot(kv_a[:, kl:], c, s), cfg.cast)
    out["kv_cache"], out["pe_cache"] = kv_cache, pe_cache
    return out


def _v4_norm_rope(v, gamma, cos, sin, cfg) -> np.ndarray:
    n = v * inv_rms(v, cfg.eps, cfg.variance)
    if gamma is not None:
        n = n * f32(gamma)
    pe = n[..., cfg.nope:]
    if cfg.rope_preround:
        pe = rb(pe, cfg.cast)
    pe = rope_interleaved(pe, cos, sin, cfg.rope_table)
    return bf16(np.concatenate([n[..., : cfg.nope], pe], axis=-1), cfg.cast)


def v4_stages(cfg, ins: dict) -> dict[str, np.ndarray]:
    """Every V4 stage output, chained, keyed by dsref's output names."""
    B, S, D = ins["x"].shape
    T = B * S
    out = {}
    kw = dict(eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm, cast=cfg.cast)
    out["tok"] = tok = rms_norm(ins["x"].reshape(T, D), ins["norm_w"], **kw)
    out["qr32"] = qr32 = matmul32(tok, ins["wq_a"])
    qrn = qr32 * inv_rms(qr32, cfg.eps, cfg.variance) * f32(ins["gamma_cq"])
    out["qr_norm"] = qr_norm = bf16(qrn, cfg.cast) if cfg.qr_prequant_round else qrn
    out["qr"], out["qr_scale"] = qr, qr_scale = quant_int8(qr_norm)
    acc = qr.astype(np.int64) @ ins["wq_b"].astype(np.int64)
    out["qf"] = qf = acc.astype(np.int32).astype(F32) * qr_scale * ins["wq_b_scale"][None, :]
    cos, sin = f32(ins["rope_cos"]), f32(ins["rope_sin"])
    q = _v4_norm_rope(qf.reshape(T, cfg.heads, cfg.head_dim), None, cos[:, None], sin[:, None], cfg)
    out["q"] = q
    out["kv32"] = kv32 = matmul32(tok, ins["wkv"])
    out["kv"] = _v4_norm_rope(kv32, ins["gamma_ckv"], cos, sin, cfg)
    return out
