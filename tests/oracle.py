"""Independent numpy + ml_dtypes oracle of dsref's semantics, written apart from dsref.

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
    with np.errstate(invalid="ignore"):
        return _rhaz(r, rf, xd)


def _rhaz(r, rf, xd):
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
    a = a.astype(np.float64)
    s = a.sum(axis=-1, keepdims=True)  # numpy starts from +0.0; IEEE: a sum of only -0.0 is -0.0
    return np.where((s == 0) & np.signbit(a).all(axis=-1, keepdims=True), -0.0, s).astype(F32)


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


def quant_int8(v, form: str = "div") -> tuple[np.ndarray, np.ndarray]:
    v = f32(v)
    amax = np.maximum(np.abs(v).max(axis=-1, keepdims=True), F32(1e-4))
    sq = F32(127) / amax if form == "div" else F32(127) * (F32(1) / amax)
    scale = F32(1) / sq
    n = np.rint(v * sq).astype(np.int32)  # half to even
    h = n.astype(np.float16)
    codes = np.clip(np.trunc(h.astype(np.float64)), -128, 127).astype(np.int8)
    return codes, scale


# ---------------------------------------------------------------------------------------------
# Stages: each reads what it needs from ``env`` (model inputs + upstream outputs) by name
# ---------------------------------------------------------------------------------------------


def _norm_kw(cfg) -> dict:
    return dict(eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm, cast=cfg.cast)


def _v32_rot(cfg, env, x, heads: bool):
    pos = env["seq_lens"].astype(np.int64) - 1
    c, s = env["rope_cos"][pos], env["rope_sin"][pos]  # [B, R]
    if heads:
        c, s = c[:, None], s[:, None]
    rot = rope_half if cfg.rope_layout == "half" else rope_interleaved
    return bf16(rot(x, c, s), cfg.cast)


def input_rmsnorm(cfg, env):
    return {"normed": rms_norm(env["hidden_states"], env["input_rms_weight"], **_norm_kw(cfg))}


def q_lora_proj(cfg, env):
    qr = matmul32(env["normed"], env["wq_a"])
    return {"qr_raw": qr if cfg.q_norm_input == "fp32" else bf16(qr, cfg.cast)}


def q_lora_rmsnorm(cfg, env):
    qr, w = f32(env["qr_raw"]), env["q_norm_weight"]
    if cfg.q_norm_input != "fp32":
        return {"qr_out": rms_norm(qr, w, **_norm_kw(cfg))}
    # PR #134: the variance of the fp32 qr; the bf16-rounded qr is what gets normalised
    x, r = rb(qr, cfg.cast), inv_rms(qr, cfg.eps, cfg.variance)
    if cfg.rmsnorm == "ds32":
        return {"qr_out": bf16(f32(w) * (x * r), cfg.cast)}
    return {"qr_out": bf16(rb(w) * rb(x * r, cfg.cast), cfg.cast)}


def q_head_proj(cfg, env):
    return {"q": bf16(matmul32(env["qr_out"], env["wq_b"]), cfg.cast)}


def kv_a_proj(cfg, env):
    return {"kv_a_out": bf16(matmul32(env["normed"], env["wkv_a"]), cfg.cast)}


def q_rope(cfg, env):
    q3 = env["q"].reshape(env["q"].shape[0], cfg.heads, cfg.head_dim)
    b = q3.shape[0]
    return {
        "q_nope_out": q3[..., : cfg.nope].reshape(b, -1),
        "q_pe_out": _v32_rot(cfg, env, q3[..., cfg.nope:], heads=True).reshape(b, -1),
    }


def kv_rmsnorm(cfg, env):
    kv_a = env["kv_a_out"][:, : cfg.kv_lora]
    return {"kv_normed": rms_norm(kv_a, env["kv_norm_weight"], **_norm_kw(cfg))}


def decode_cache_write(cfg, env):
    b = env["kv_normed"].shape[0]
    rows = np.arange(b) * cfg.max_seq + env["seq_lens"].astype(np.int64) - 1
    kv_cache, pe_cache = env["kv_cache"].copy(), env["pe_cache"].copy()
    kv_cache[rows] = env["kv_normed"]
    pe_cache[rows] = _v32_rot(cfg, env, env["kv_a_out"][:, cfg.kv_lora:], heads=False)
    return {"kv_cache": kv_cache, "pe_cache": pe_cache}


# V3.2 scopes 2-4: the indexer, top-k and sparse attention (the contract: dsref spec STAGE)

FLT_MAX = F32(np.finfo(F32).max)
INT32_MIN = np.int32(np.iinfo(np.int32).min)


def _index_x(cfg, env):
    return env["normed"] if cfg.index_input == "normed" else env["hidden_states"]


def _heads(x, h):
    return x.reshape(x.shape[0], h, -1)


def _head_mm(a, w) -> np.ndarray:
    """Per head: a [B, H, K] @ w [H, K, N] → fp32 [B, H, N] (float64, rounded once)."""
    return np.matmul(a.astype(np.float64)[:, :, None, :], w.astype(np.float64))[:, :, 0].astype(F32)


def q_idx_proj(cfg, env):
    return {"q_idx": bf16(matmul32(env["qr_out"], env["wq_b_idx"]), cfg.cast)}


def k_idx_proj(cfg, env):
    return {"k_idx": bf16(matmul32(_index_x(cfg, env), env["wk_idx"]), cfg.cast)}


def k_idx_layernorm(cfg, env):
    x = f32(env["k_idx"])
    n = x.shape[-1]
    mean_of = (lambda s: s / F32(n)) if cfg.variance == "mean" else (lambda s: s * F32(1.0 / n))
    c = x - mean_of(sum32(x))
    inv = F32(1) / np.sqrt(mean_of(sum32(c * c)) + F32(1e-6))
    y = (c * inv) * f32(env["k_norm_weight"]) + f32(env["k_norm_bias"])
    return {"k_idx_normed": bf16(y, cfg.cast)}


def idx_rope(cfg, env):
    pos = env["seq_lens"].astype(np.int64) - 1
    c, s, r = f32(env["rope_cos"])[pos], f32(env["rope_sin"])[pos], cfg.rope

    def rot(x, c, s):  # half layout on the first R dims, the rest passes through
        return np.concatenate([bf16(rope_half(x[..., :r], c, s), cfg.cast), x[..., r:]], axis=-1)

    q = rot(_heads(env["q_idx"], cfg.index_heads), c[:, None], s[:, None])
    return {"q_idx_rope": q.reshape(q.shape[0], -1), "k_idx_rope": rot(env["k_idx_normed"], c, s)}


def idx_hadamard(cfg, env):
    q = matmul32(_heads(env["q_idx_rope"], cfg.index_heads), env["hadamard_q"])
    return {"q_idx_h": bf16(q, cfg.cast).reshape(q.shape[0], -1),
            "k_idx_h": bf16(matmul32(env["k_idx_rope"], env["hadamard_k"]), cfg.cast)}


def idx_weights(cfg, env):
    ih, id_ = cfg.index_heads, cfg.index_head_dim
    y = matmul32(_index_x(cfg, env), bf16(env["weights_proj"], cfg.cast))
    if cfg.index_weights == "bf16":
        return {"idx_weights": rb(rb(y, cfg.cast) * F32(ih ** -0.5), cfg.cast) * F32(id_ ** -0.5)}
    return {"idx_weights": y * F32(ih ** -0.5 * id_ ** -0.5)}


def _pos_rows(cfg, env):
    return np.arange(len(env["seq_lens"])) * cfg.max_seq + env["seq_lens"].astype(np.int64) - 1


def k_idx_cache_write(cfg, env):
    cache = env["k_cache_idx"].copy()
    cache[_pos_rows(cfg, env)] = env["k_idx_h"]
    return {"k_cache_idx": cache}


def index_score(cfg, env):
    S, ctx = cfg.max_seq, env["seq_lens"].astype(np.int64)
    q, w = f32(_heads(env["q_idx_h"], cfg.index_heads)), f32(env["idx_weights"])
    out = np.full((len(ctx), S), -FLT_MAX, F32)
    for b in range(len(ctx)):
        k = f32(env["k_cache_idx"][b * S:(b + 1) * S])  # [S, ID]
        if cfg.index_score == "relu":
            per_h = np.maximum(matmul32(q[b], k.T), F32(0)) * w[b][:, None]  # [IH, S]
            sc = sum32(per_h.T)[:, 0]
        else:
            q_red = bf16(sum32((q[b] * w[b][:, None]).T)[:, 0], cfg.cast)  # [ID]
            sc = matmul32(q_red, k.T)
        out[b, :ctx[b]] = sc[:ctx[b]]
    return {"index_scores": out}


def index_topk(cfg, env):
    sc, ctx = env["index_scores"], env["seq_lens"].astype(np.int64)
    out = np.full((len(ctx), cfg.index_topk), INT32_MIN, np.int32)
    for b in range(len(ctx)):
        key = -(sc[b, :ctx[b]] + F32(0))  # +0.0 folds -0.0 into +0.0
        n = min(cfg.index_topk, ctx[b])
        out[b, :n] = np.argsort(key, kind="stable")[:n]
    return {"topk_idx": out}


def q_nope_latent(cfg, env):
    lat = _head_mm(_heads(env["q_nope_out"], cfg.heads), env["w_q_nope_to_latent"])
    lat = rb(lat, cfg.cast) if cfg.q_latent == "bf16" else lat
    return {"q_latent": lat.reshape(lat.shape[0], -1)}


def _attn_scale(cfg) -> np.float32:
    rp = cfg.rope_params
    m = 0.1 * np.log(rp.factor) + 1 if cfg.attn_scale == "yarn" and rp.yarn else 1.0
    return F32((cfg.nope + cfg.rope) ** -0.5 * m * m)


def sparse_attn(cfg, env):
    S, ctx, scale = cfg.max_seq, env["seq_lens"].astype(np.int64), _attn_scale(cfg)
    ql, qp = f32(_heads(env["q_latent"], cfg.heads)), f32(_heads(env["q_pe_out"], cfg.heads))
    out = np.empty(ql.shape, BF16)
    for b in range(len(ctx)):
        rows = b * S + env["topk_idx"][b, :min(cfg.index_topk, ctx[b])].astype(np.int64)
        kv, pe = f32(env["kv_cache"][rows]), f32(env["pe_cache"][rows])
        s = (matmul32(ql[b], kv.T) + matmul32(qp[b], pe.T)) * scale  # [H, n]
        s64 = s.astype(np.float64)
        e = np.exp(s64 - s64.max(axis=-1, keepdims=True))
        den = e.sum(axis=-1, keepdims=True)
        if cfg.attn_probs == "exact":
            ctx_b = ((e @ kv.astype(np.float64)) / den).astype(F32)
        else:
            ctx_b = matmul32(rb((e / den).astype(F32), cfg.cast), kv)
        out[b] = bf16(ctx_b, cfg.cast)
    return {"ctx_latent": out.reshape(out.shape[0], -1)}


def v_proj(cfg, env):
    v = _head_mm(_heads(env["ctx_latent"], cfg.heads), env["w_latent_to_v"])
    return {"attn_front": bf16(v, cfg.cast).reshape(v.shape[0], -1)}


def dispatch(cfg, env):
    buf, b = env["dispatch_buf"].copy(), np.arange(env["attn_front"].shape[0])
    buf[(b + int(env["layer_id_t"][0])) % cfg.ep_nodes, b] = env["attn_front"]
    return {"dispatch_buf": buf}


def _v4_norm_rope(v, gamma, cos, sin, cfg, fp8_nope: bool = False) -> np.ndarray:
    n = v * inv_rms(v, cfg.eps, cfg.variance)
    if gamma is not None:
        n = n * f32(gamma)
    pe = n[..., cfg.nope:]
    if cfg.rope_preround:
        pe = rb(pe, cfg.cast)
    pe = rope_interleaved(pe, cos, sin, cfg.rope_table)
    out = bf16(np.concatenate([n[..., : cfg.nope], pe], axis=-1), cfg.cast)
    if fp8_nope:
        out[..., : cfg.nope] = fp8_qdq(out[..., : cfg.nope], cfg.cast)
    return out


def fp8_qdq(x, cast: str = "rne") -> np.ndarray:
    """Official V4 act_quant(x, 64, ue8m0, inplace=True): per 64-block, amax floored at 1e-4,
    scale = 2**ceil(log2(f32(amax · f32(1/448)))) from the fp32 bits (exponent, +1 if any
    mantissa bit), y = bf16(e4m3(clamp(x / s, ±448)) · s) — e4m3 by ml_dtypes' cast."""
    x = f32(x)
    blocks = x.reshape(*x.shape[:-1], -1, 64)
    amax = np.maximum(np.abs(blocks).max(axis=-1, keepdims=True), F32(1e-4))
    bits = (amax * F32(1 / 448)).astype(F32).view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int64) - 127 + ((bits & 0x7FFFFF) != 0)
    s = np.ldexp(F32(1), e).astype(F32)
    codes = np.clip(blocks / s, F32(-448), F32(448)).astype(ml_dtypes.float8_e4m3fn)
    return bf16(codes.astype(F32) * s, cast).reshape(x.shape)


def head_norm_bf16(q, eps, variance, cast) -> np.ndarray:
    """Official V4 ``q *= rsqrt(q.square().mean(-1) + eps)`` on a bf16 tensor, each op's fp32
    result rounded to bf16 (torch's bf16 tensor arithmetic)."""
    q = rb(q, cast)
    sq = rb(q * q, cast)
    s, n = sum32(sq), q.shape[-1]
    mean = rb(s / F32(n) if variance == "mean" else s * F32(1.0 / n), cast)
    ve = rb(mean + F32(eps), cast)
    r = rb(F32(1) / np.sqrt(ve), cast)
    return rb(q * r, cast)


def attn_norm(cfg, env):
    x = env["x"].reshape(-1, env["x"].shape[-1])
    return {"tok": rms_norm(x, env["norm_w"], **_norm_kw(cfg))}


def _proj_out(cfg, y):
    return rb(y, cfg.cast) if cfg.proj_out == "bf16" else y


def qr_proj_matmul(cfg, env):
    return {"qr32": _proj_out(cfg, matmul32(env["tok"], env["wq_a"]))}


def qr_rms(cfg, env):
    qr32 = f32(env["qr32"])
    qrn = qr32 * inv_rms(qr32, cfg.eps, cfg.variance) * f32(env["gamma_cq"])
    return {"qr_norm": bf16(qrn, cfg.cast) if cfg.qr_prequant_round else qrn}


def qr_quant(cfg, env):
    qr, qr_scale = quant_int8(env["qr_norm"], cfg.qr_scale_form)
    return {"qr": qr, "qr_scale": qr_scale}


def qproj_matmul(cfg, env):
    acc = env["qr"].astype(np.int64) @ env["wq_b"].astype(np.int64)
    qf = acc.astype(np.int32).astype(F32) * env["qr_scale"] * env["wq_b_scale"][None, :]
    return {"qf": qf}


def q_head_rms_rope(cfg, env):
    cos, sin = f32(env["rope_cos"]), f32(env["rope_sin"])
    qf = env["qf"].reshape(env["qf"].shape[0], cfg.heads, cfg.head_dim)
    if cfg.q_head_norm == "bf16":
        n = head_norm_bf16(qf, cfg.eps, cfg.variance, cfg.cast)
        pe = rope_interleaved(n[..., cfg.nope:], cos[:, None], sin[:, None], cfg.rope_table)
        return {"q": bf16(np.concatenate([n[..., : cfg.nope], pe], axis=-1), cfg.cast)}
    return {"q": _v4_norm_rope(qf, None, cos[:, None], sin[:, None], cfg)}


def kv_proj_matmul(cfg, env):
    return {"kv32": _proj_out(cfg, matmul32(env["tok"], env["wkv"]))}


def kv_rms_rope(cfg, env):
    cos, sin = f32(env["rope_cos"]), f32(env["rope_sin"])
    return {"kv": _v4_norm_rope(f32(env["kv32"]), env["gamma_ckv"], cos, sin, cfg,
                                cfg.kv_nope_fp8)}


STAGES = {
    "v32.decode_front": (input_rmsnorm, q_lora_proj, q_lora_rmsnorm, q_head_proj, kv_a_proj,
                         q_rope, kv_rmsnorm, decode_cache_write, q_idx_proj, k_idx_proj,
                         k_idx_layernorm, idx_rope, idx_hadamard, idx_weights, k_idx_cache_write,
                         index_score, index_topk, q_nope_latent, sparse_attn, v_proj, dispatch),
    "v4.qkv_proj_rope": (attn_norm, qr_proj_matmul, qr_rms, qr_quant, qproj_matmul,
                         q_head_rms_rope, kv_proj_matmul, kv_rms_rope),
}
STAGE = {fn.__name__: fn for fns in STAGES.values() for fn in fns}


def chain(model: str, cfg, ins: dict) -> dict[str, np.ndarray]:
    """Every stage output of ``model``, chained from the inputs, keyed by output name."""
    env = dict(ins)
    out = {}
    for fn in STAGES[model]:
        res = fn(cfg, env)
        env.update(res)
        out.update(res)
    return out


def v32_stages(cfg, ins: dict) -> dict[str, np.ndarray]:
    return chain("v32.decode_front", cfg, ins)


def v4_stages(cfg, ins: dict) -> dict[str, np.ndarray]:
    return chain("v4.qkv_proj_rope", cfg, ins)
