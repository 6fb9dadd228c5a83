"""DeepSeek V3.2 fused decode front (``v32.decode_front``): ds32 math, pypto-lib layout.

Scope 1, the MLA front: input_rmsnorm → q_lora_proj → q_lora_rmsnorm → q_head_proj →
kv_a_proj → q_rope → kv_rmsnorm → decode_cache_write (``v32.decode_front[:decode_cache_write]``
runs it alone, as pypto-lib PR #134 did). Scope 2, the lightning indexer: q_idx_proj →
k_idx_proj → k_idx_layernorm → idx_rope → idx_hadamard → idx_weights → k_idx_cache_write.
Scope 3: index_score → index_topk. Scope 4, sparse attention over the selected cache rows:
q_nope_latent → sparse_attn → v_proj → dispatch. ``dsref spec STAGE`` gives each formula; the
stage docstrings repeat it with the rounding points.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dsref.cache import decode_rows, write_rows
from dsref.config import V32Config
from dsref.model import Model, TensorSpec, dataflow, register_model, stage
from dsref.numerics import concat_bf16, dot, edot, r32, rbf16, row_sum, widen
from dsref.proj import proj_bf16, proj_f32
from dsref.rmsnorm import layer_norm, rms_norm
from dsref.rope import rope

MODEL = "v32.decode_front"
BF16 = jnp.bfloat16


def _rms_norm(x, w, cfg: V32Config, stats=None):
    return rms_norm(
        widen(x), widen(w), eps=cfg.eps, variance=cfg.variance, kind=cfg.rmsnorm, cast=cfg.cast,
        stats=stats,
    ).astype(BF16)


def _rotate(x, seq_lens, rope_cos, rope_sin, cfg: V32Config, layout: str | None = None):
    """RoPE of bf16 ``x [B, ..., R]`` at each entry's position ``seq_lens[b] − 1``, to bf16
    (``layout``: the config's ``rope_layout`` unless given)."""
    pos = seq_lens.astype(jnp.int32) - 1
    extra = (1,) * (x.ndim - 2)
    c = widen(rope_cos[pos]).reshape(pos.shape + extra + (-1,))
    s = widen(rope_sin[pos]).reshape(pos.shape + extra + (-1,))
    return rbf16(rope(widen(x), c, s, layout=layout or cfg.rope_layout), cfg.cast).astype(BF16)


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


#: the score of a cache position past the context (pypto-lib's -FLT_MAX: finite, below any
#: real score) and the index of a top-k slot past it (pto-isa's PadValue.min for int32)
NO_SCORE = -float(np.finfo(np.float32).max)
NO_INDEX = int(np.iinfo(np.int32).min)


def _f32(v: float) -> float:
    """A constant as the fp32 value a kernel multiplies by."""
    return float(np.float32(v))


def _cache_values(cache):
    """A bf16 cache (or the ``uint16`` words ``dsref.run`` carries it as) as carried values."""
    if cache.dtype == jnp.uint16:
        cache = jax.lax.bitcast_convert_type(cache, jnp.bfloat16)
    return widen(cache)


def _first(n: int, counts):
    """``[B, n]`` bool: slot ``j`` of entry ``b`` is one of its first ``counts[b]``."""
    return jnp.arange(n)[None, :] < counts[:, None]


def _index_x(normed, hidden_states, cfg: V32Config):
    """The indexer's input: the RMSNorm output (ds32) or the raw hidden state (pypto-lib HEAD)."""
    return normed if cfg.index_input == "normed" else hidden_states


@stage(MODEL, "q_idx")
def q_idx_proj(qr_out, wq_b_idx, *, cfg: V32Config):
    """``q_idx = bf16(qr_out @ wq_b_idx)`` ``[B, IH·ID]``, head-major."""
    return proj_bf16(qr_out, wq_b_idx, accumulate=cfg.accumulate, cast=cfg.cast).astype(BF16)


@stage(MODEL, "k_idx")
def k_idx_proj(normed, hidden_states, wk_idx, *, cfg: V32Config):
    """``k_idx = bf16(x @ wk_idx)`` ``[B, ID]``; ``x = normed`` (``index_input="hidden"``: the
    raw ``hidden_states``)."""
    x = _index_x(normed, hidden_states, cfg)
    return proj_bf16(x, wk_idx, accumulate=cfg.accumulate, cast=cfg.cast).astype(BF16)


@stage(MODEL, "k_idx_normed")
def k_idx_layernorm(k_idx, k_norm_weight, k_norm_bias, *, cfg: V32Config):
    """LayerNorm with bias over ID: ``bf16(((c · (1 / sqrt(var + eps))) · w) + b)``,
    ``c = k − mean(k)``, ``var = mean(c·c)``."""
    return layer_norm(widen(k_idx), widen(k_norm_weight), widen(k_norm_bias), eps=cfg.eps,
                      variance=cfg.variance, cast=cfg.cast).astype(BF16)


@stage(MODEL, "q_idx_rope", "k_idx_rope")
def idx_rope(q_idx, k_idx_normed, seq_lens, rope_cos, rope_sin, *, cfg: V32Config):
    """RoPE of the first ROPE dims of every index head and of ``k_idx_normed`` at
    ``pos = seq_lens[b] − 1``, half layout whatever ``rope_layout`` says (the indexer is not
    interleaved), each rotated element to bf16; the other dims pass through."""
    b, r = q_idx.shape[0], cfg.rope
    q = q_idx.reshape(b, cfg.index_heads, cfg.index_head_dim)
    q_pe = _rotate(q[..., :r], seq_lens, rope_cos, rope_sin, cfg, layout="half")
    k_pe = _rotate(k_idx_normed[:, :r], seq_lens, rope_cos, rope_sin, cfg, layout="half")
    return (concat_bf16([q_pe, q[..., r:]]).reshape(b, -1),
            concat_bf16([k_pe, k_idx_normed[:, r:]]))


@stage(MODEL, "q_idx_h", "k_idx_h")
def idx_hadamard(q_idx_rope, k_idx_rope, hadamard_q, hadamard_k, *, cfg: V32Config):
    """Per index head ``bf16(q_h @ hadamard_q)`` and ``bf16(k @ hadamard_k)`` ([ID, ID] bf16)."""
    b = q_idx_rope.shape[0]
    q = q_idx_rope.reshape(b * cfg.index_heads, cfg.index_head_dim)
    qh = proj_bf16(q, hadamard_q, accumulate=cfg.accumulate, cast=cfg.cast)
    kh = proj_bf16(k_idx_rope, hadamard_k, accumulate=cfg.accumulate, cast=cfg.cast)
    return qh.reshape(b, -1).astype(BF16), kh.astype(BF16)


@stage(MODEL, "idx_weights")
def idx_weights(normed, hidden_states, weights_proj, *, cfg: V32Config):
    """Per-head index weights ``[B, IH]`` fp32 from ``x @ bf16(weights_proj)``:
    ds32 ``f32(bf16(bf16(x @ Wp) · IH^-½)) · ID^-½``; ``index_weights="fp32"``
    ``(x @ Wp) · f32(IH^-½ · ID^-½)``."""
    x = _index_x(normed, hidden_states, cfg)
    wp = rbf16(widen(weights_proj), cfg.cast).astype(BF16)
    acc = dot(x, wp, cfg.accumulate)
    ih, d = cfg.index_heads, cfg.index_head_dim
    if cfg.index_weights == "fp32":
        return r32(acc * _f32(ih ** -0.5 * d ** -0.5)).astype(jnp.float32)
    w = rbf16(r32(rbf16(acc, cfg.cast) * _f32(ih ** -0.5)), cfg.cast)
    return r32(w * _f32(d ** -0.5)).astype(jnp.float32)


@stage(MODEL, "k_cache_idx")
def k_idx_cache_write(k_idx_h, seq_lens, k_cache_idx, *, cfg: V32Config):
    """``k_cache_idx[b·MAX_SEQ + pos_b] = k_idx_h[b]``; every other row bit-identical."""
    return write_rows(k_cache_idx, decode_rows(seq_lens, cfg.max_seq), k_idx_h)


@stage(MODEL, "index_scores")
def index_score(q_idx_h, idx_weights, k_cache_idx, seq_lens, *, cfg: V32Config):
    """``[B, MAX_SEQ]`` fp32 score of every cache position ``t < seq_lens[b]`` (the rest
    ``NO_SCORE``), key ``k_t = k_cache_idx[b·MAX_SEQ + t]``: ds32
    ``sum_h(w_h · relu(q_h @ k_t))``; ``index_score="reduce_q"``:
    ``bf16(sum_h(q_h · w_h)) @ k_t`` (the heads reduced into one query first, no ReLU)."""
    b, s, d = q_idx_h.shape[0], cfg.max_seq, cfg.index_head_dim
    keys = _cache_values(k_cache_idx).reshape(b, s, d)
    q = widen(q_idx_h).reshape(b, cfg.index_heads, d)
    w = widen(idx_weights)[..., None]  # [B, IH, 1]
    if cfg.index_score == "relu":
        logits = edot("bhd,btd->bht", q, keys, cfg.accumulate)
        score = row_sum(r32(jnp.maximum(logits, 0.0) * w).swapaxes(1, 2))[..., 0]
    else:
        q_red = rbf16(row_sum(r32(q * w).swapaxes(1, 2))[..., 0], cfg.cast)  # [B, ID]
        score = edot("bd,btd->bt", q_red, keys, cfg.accumulate)
    return jnp.where(_first(s, seq_lens), score, NO_SCORE).astype(jnp.float32)


@stage(MODEL, "topk_idx")
def index_topk(index_scores, seq_lens, *, cfg: V32Config):
    """``[B, TOPK]`` int32: the positions ``t < seq_lens[b]`` by score descending, ties to the
    smaller ``t`` (−0.0 = +0.0), the first ``min(TOPK, seq_lens[b])``; later slots
    ``NO_INDEX``. A set: another of two equal scores is as right."""
    # ordered on the fp32 bits, not on float values: XLA CPU reads subnormals as zero (DAZ),
    # and −0.0 and +0.0 must tie; the key grows with the value, positions past the context last
    bits = jax.lax.bitcast_convert_type(jnp.asarray(index_scores, jnp.float32), jnp.int32)
    bits = jnp.where(bits == NO_INDEX, 0, bits).astype(jnp.int64)  # −0.0 → +0.0
    key = jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = jnp.where(_first(cfg.max_seq, seq_lens), key, -(2**40))
    order = jnp.argsort(-key, axis=-1, stable=True)[:, : cfg.index_topk].astype(jnp.int32)
    n = jnp.minimum(seq_lens, cfg.index_topk)
    return jnp.where(_first(cfg.index_topk, n), order, NO_INDEX)


@stage(MODEL, "q_latent")
def q_nope_latent(q_nope_out, w_q_nope_to_latent, *, cfg: V32Config):
    """Per head ``q_nope_h @ w_q_nope_to_latent[h]`` ``[B, H·KL]``, rounded to bf16 (ds32) or
    left fp32 (``q_latent="fp32"``); stored fp32."""
    b = q_nope_out.shape[0]
    q = q_nope_out.reshape(b, cfg.heads, cfg.nope)
    lat = edot("bhn,hnc->bhc", q, w_q_nope_to_latent, cfg.accumulate)
    if cfg.q_latent == "bf16":
        lat = rbf16(lat, cfg.cast)
    return lat.reshape(b, -1).astype(jnp.float32)


def attn_scale(cfg: V32Config) -> float:
    """The fp32 softmax scale: ``(NOPE+ROPE)^-½``, times ``mscale²`` with YaRN
    (``mscale = 0.1·ln(factor) + 1``; ``attn_scale="plain"``: without)."""
    scale = (cfg.nope + cfg.rope) ** -0.5
    if cfg.attn_scale == "yarn" and cfg.rope_params.yarn:
        m = 0.1 * math.log(cfg.rope_params.factor) + 1.0
        scale = scale * m * m
    return _f32(scale)


@stage(MODEL, "ctx_latent")
def sparse_attn(q_latent, q_pe_out, topk_idx, seq_lens, kv_cache, pe_cache, *, cfg: V32Config):
    """Attention of every head over the ``n_b = min(TOPK, seq_lens[b])`` selected cache rows,
    to bf16 ``[B, H·KL]``: ``s_j = ((q_lat @ kv_j) + (q_pe @ pe_j)) · scale``; ds32: the fp32
    softmax rounded to bf16, ``bf16(sum_j(p_j · kv_j))``; ``attn_probs="exact"``: the exact
    softmax mean ``bf16(f32(sum_j(e_j · kv_j) / sum_j(e_j)))``, ``e_j = exp(s_j − max s)``."""
    b, s = q_latent.shape[0], cfg.max_seq
    live = _first(cfg.index_topk, jnp.minimum(seq_lens, cfg.index_topk))
    rows = jnp.arange(b)[:, None] * s + jnp.where(live, topk_idx, 0)
    kv = _cache_values(kv_cache)[rows]  # [B, TOPK, KL]
    pe = _cache_values(pe_cache)[rows]  # [B, TOPK, ROPE]
    ql = widen(q_latent).reshape(b, cfg.heads, cfg.kv_lora)
    qp = widen(q_pe_out).reshape(b, cfg.heads, cfg.rope)
    acc = cfg.accumulate
    score = r32(r32(edot("bhc,btc->bht", ql, kv, acc) + edot("bhr,btr->bht", qp, pe, acc))
                * attn_scale(cfg))
    score = jnp.where(live[:, None, :], score, -jnp.inf)
    e = jnp.exp(score - jnp.max(score, axis=-1, keepdims=True))  # float64, exact enough
    total = jnp.sum(e, axis=-1, keepdims=True)
    if cfg.attn_probs == "exact":
        ctx = r32(jnp.einsum("bht,btc->bhc", e, kv, precision=jax.lax.Precision.HIGHEST) / total)
    else:
        p = rbf16(r32(e / total), cfg.cast)
        ctx = edot("bht,btc->bhc", p, kv, acc)
    return rbf16(ctx, cfg.cast).reshape(b, -1).astype(BF16)


@stage(MODEL, "attn_front")
def v_proj(ctx_latent, w_latent_to_v, *, cfg: V32Config):
    """Per head ``bf16(ctx_h @ w_latent_to_v[h])`` ``[B, H·V]``."""
    b = ctx_latent.shape[0]
    c = ctx_latent.reshape(b, cfg.heads, cfg.kv_lora)
    v = edot("bhc,hcv->bhv", c, w_latent_to_v, cfg.accumulate)
    return rbf16(v, cfg.cast).reshape(b, -1).astype(BF16)


@stage(MODEL, "dispatch_buf")
def dispatch(attn_front, layer_id_t, dispatch_buf, *, cfg: V32Config):
    """``dispatch_buf[(b + layer_id) % EP, b] = attn_front[b]``; every other entry
    bit-identical."""
    b, ep = attn_front.shape[0], dispatch_buf.shape[0]
    node = (jnp.arange(b, dtype=jnp.int32) + layer_id_t[0].astype(jnp.int32)) % ep
    flat = dispatch_buf.reshape(ep * b, -1)
    return write_rows(flat, node * b + jnp.arange(b, dtype=jnp.int32), attn_front).reshape(
        dispatch_buf.shape)


#: the stages in order, by scope (see the module docstring)
SCOPE1 = ("input_rmsnorm", "q_lora_proj", "q_lora_rmsnorm", "q_head_proj", "kv_a_proj", "q_rope",
          "kv_rmsnorm", "decode_cache_write")
SCOPE234 = ("q_idx_proj", "k_idx_proj", "k_idx_layernorm", "idx_rope", "idx_hadamard",
            "idx_weights", "k_idx_cache_write", "index_score", "index_topk", "q_nope_latent",
            "sparse_attn", "v_proj", "dispatch")
OUTPUTS = ("qr_out", "q_nope_out", "q_pe_out", "kv_a_out", "kv_cache", "pe_cache", "k_cache_idx",
           "dispatch_buf")

decode_front = dataflow(SCOPE1 + SCOPE234, OUTPUTS)
decode_front.__doc__ = "The composed fused front: stored arrays in, stored arrays out."


_BF = np.dtype(ml_dtypes.bfloat16)
_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)


def input_specs(cfg: V32Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    b, d, ql, kl, r = batch, cfg.hidden, cfg.q_lora, cfg.kv_lora, cfg.rope
    ih, idim, rows = cfg.index_heads, cfg.index_head_dim, batch * cfg.max_seq
    spec = {
        "hidden_states": ((b, d), _BF), "input_rms_weight": ((1, d), _F32),
        "wq_a": ((d, ql), _BF), "q_norm_weight": ((1, ql), _F32),
        "wq_b": ((ql, cfg.heads * cfg.head_dim), _BF), "wkv_a": ((d, kl + r), _BF),
        "kv_norm_weight": ((1, kl), _F32), "seq_lens": ((b,), _I32),
        "rope_cos": ((cfg.max_seq, r), _F32), "rope_sin": ((cfg.max_seq, r), _F32),
        "kv_cache": ((rows, kl), _BF), "pe_cache": ((rows, r), _BF),
        "wq_b_idx": ((ql, ih * idim), _BF), "wk_idx": ((d, idim), _BF),
        "weights_proj": ((d, ih), _F32), "k_norm_weight": ((1, idim), _F32),
        "k_norm_bias": ((1, idim), _F32), "hadamard_q": ((idim, idim), _BF),
        "hadamard_k": ((idim, idim), _BF), "layer_id_t": ((1,), _I32),
        "w_q_nope_to_latent": ((cfg.heads, cfg.nope, kl), _BF),
        "w_latent_to_v": ((cfg.heads, kl, cfg.v_head), _BF),
        "k_cache_idx": ((rows, idim), _BF), "dispatch_buf": ((cfg.ep_nodes, b, cfg.heads * cfg.v_head), _BF),
    }
    return {k: TensorSpec(*v) for k, v in spec.items()}


def output_specs(cfg: V32Config, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
    ins = input_specs(cfg, batch, seq)
    b = batch
    spec = {
        "qr_out": ((b, cfg.q_lora), _BF), "q_nope_out": ((b, cfg.heads * cfg.nope), _BF),
        "q_pe_out": ((b, cfg.heads * cfg.rope), _BF), "kv_a_out": ((b, cfg.kv_lora + cfg.rope), _BF),
    }
    out = {k: TensorSpec(*v) for k, v in spec.items()}
    return out | {k: ins[k] for k in ("kv_cache", "pe_cache", "k_cache_idx", "dispatch_buf")}


def owned(cfg: V32Config, name: str, inputs: dict) -> Any:
    """What one decode step writes of an in/out tensor (None: not known from ``inputs``): the
    cache row ``b·MAX_SEQ + pos_b`` of each entry (numpy's :func:`dsref.cache.decode_rows`),
    and the (node, entry) slots ``dispatch_buf[(b + layer_id) % EP, b]``."""
    if name in ("kv_cache", "pe_cache", "k_cache_idx") and "seq_lens" in inputs:
        sl = np.asarray(inputs["seq_lens"], np.int64)
        return np.arange(sl.shape[0]) * cfg.max_seq + sl - 1
    if name == "dispatch_buf" and {"layer_id_t", "dispatch_buf"} <= set(inputs):
        b = np.arange(np.shape(inputs["dispatch_buf"])[1])
        return (b + int(np.asarray(inputs["layer_id_t"]).reshape(-1)[0])) % cfg.ep_nodes, b
    return None


register_model(Model(
    name=MODEL, fn=decode_front, stages=SCOPE1 + SCOPE234,
    config_type=V32Config, input_specs=input_specs, output_specs=output_specs,
    inouts=("kv_cache", "pe_cache", "k_cache_idx", "dispatch_buf"), doc=__doc__ or "",
    step_inputs=("hidden_states", "seq_lens"),
    matmul_weights=("wq_a", "wq_b", "wkv_a", "wq_b_idx", "wk_idx"), owned=owned,
))
