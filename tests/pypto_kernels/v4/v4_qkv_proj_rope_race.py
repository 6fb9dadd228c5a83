"""BROKEN COPY (race): the per-head temporary ``q_rot_bf16`` is created once, before
``pl.parallel(H)``, without a head dimension, so all heads share one GM buffer (the race the
PR #332 review warned of; pypto allocates a tensor created *inside* a loop body afresh for each
iteration, so the hazard is the hoisted buffer).

DeepSeek V4 qkv_proj_rope in the pypto-lib ``@pl.jit.inline`` style (test kernel).

    tok  = bf16(norm_w · (x · inv_rms(x)))                         [T, D], T = B·S
    qr32 = tok @ wq_a;  qr_bf16 = bf16((qr32 · inv_rms) · gamma_cq)
    per row: amax = max(max|v|, 1e-4), sq = 127 / amax, qr_scale = 1 / sq,
             qr = int8(fp16(int32_rne(v · sq)))
    qf   = (f32(qr @ wq_b) · qr_scale[t]) · wq_b_scale[c]
    q    = per head n = qf_h · inv_rms(qf_h): nope bf16(n), rope interleaved on fp32 n
    kv   = n = (kv32 · inv_rms(kv32)) · gamma_ckv: nope bf16(n), rope interleaved

Interleaved RoPE: pair i = (n[2i], n[2i+1]) (gather P0101 / P1010), column i of the table:
y_e = bf16(n_e·c − n_o·s), y_o = bf16(n_e·s + n_o·c); pairs re-interleaved by assembling
each pair's two columns. inv_rms = 1 / sqrt(Σv²/N + eps) (true fp32 division).
"""

import pypto.language as pl
from config import (
    EPS,
    HEAD_DIM,
    HIDDEN,
    INT8_AMAX_EPS,
    INT8_SCALE_MAX,
    NOPE_DIM,
    NUM_HEADS,
    Q_LORA,
    ROPE_DIM,
    ROPE_HALF,
)

B_DYN = pl.dynamic("B")
S_DYN = pl.dynamic("S")
T_DYN = pl.dynamic("T")

NORM_K = 512  # RMSNorm reduction chunk over D
PROJ_K = 256  # matmul K chunk: a [256, 128] bf16 weight tile is L0B's 64 KiB
QR_N_TILE = 128  # qr_proj output columns per accumulator
KV_N_TILE = 80  # kv_proj output columns: [256, 80] bf16 = 40 KiB of L0B
RMS_T_TILES = 2  # in-core T tiles of the fused rms/rope scopes (Vec budget at large T)


@pl.jit.inline
def inv_rms(v, n):
    """1 / sqrt(Σv²/n + eps) per row of an fp32 tile."""
    return pl.recip(pl.sqrt(pl.add(pl.div(pl.row_sum(pl.mul(v, v)), float(n)), EPS)))


@pl.jit.inline
def rope_interleaved(n_rope, cos, sin):
    """Interleaved rotation of an fp32 [R, ROPE_DIM] tile → bf16 [R, ROPE_DIM] tile."""
    even = pl.tensor.gather(n_rope, mask_pattern=pl.tile.MaskPattern.P0101)
    odd = pl.tensor.gather(n_rope, mask_pattern=pl.tile.MaskPattern.P1010)
    y_e = pl.cast(pl.sub(pl.mul(even, cos), pl.mul(odd, sin)), target_type=pl.BF16, mode="rint")
    y_o = pl.cast(pl.add(pl.mul(even, sin), pl.mul(odd, cos)), target_type=pl.BF16, mode="rint")
    out = pl.create_tensor([n_rope.shape[0], ROPE_DIM], dtype=pl.BF16)
    for i in pl.range(ROPE_HALF):
        out = pl.assemble(out, y_e[:, i : i + 1], [0, 2 * i])
        out = pl.assemble(out, y_o[:, i : i + 1], [0, 2 * i + 1])
    return out


@pl.jit.inline
def attn_norm(x_view, norm_w_view, tok, t_dim):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="attn_norm"):
        sq = pl.full([t_dim, 1], dtype=pl.FP32, value=0.0)
        for k0 in pl.range(0, HIDDEN, NORM_K):
            xc = pl.cast(x_view[:, k0 : k0 + NORM_K], target_type=pl.FP32)
            sq = pl.add(sq, pl.row_sum(pl.mul(xc, xc)))
        inv = pl.recip(pl.sqrt(pl.add(pl.div(sq, float(HIDDEN)), EPS)))
        for k0 in pl.range(0, HIDDEN, NORM_K):
            xc = pl.cast(x_view[:, k0 : k0 + NORM_K], target_type=pl.FP32)
            y = pl.col_expand_mul(pl.row_expand_mul(xc, inv), norm_w_view[:, k0 : k0 + NORM_K])
            tok[:, k0 : k0 + NORM_K] = pl.cast(y, target_type=pl.BF16, mode="rint")


@pl.jit.inline
def project_fp32(a, w, out, n0, n_tile):
    acc = pl.matmul(a[:, 0:PROJ_K], w[0:PROJ_K, n0 : n0 + n_tile], out_dtype=pl.FP32)
    for k0 in pl.range(PROJ_K, a.shape[1], PROJ_K):
        acc = pl.matmul_acc(acc, a[:, k0 : k0 + PROJ_K], w[k0 : k0 + PROJ_K, n0 : n0 + n_tile])
    out[:, n0 : n0 + n_tile] = acc


@pl.jit.inline
def qr_rms_quant(qr32, gamma_cq_view, qr_view, qr_scale):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="qr_rms_quant"):
        v32 = qr32[:, :]
        gamma = pl.cast(gamma_cq_view[:, :], target_type=pl.FP32)
        qrn = pl.col_expand_mul(pl.row_expand_mul(v32, inv_rms(v32, Q_LORA)), gamma)
        v = pl.cast(pl.cast(qrn, target_type=pl.BF16, mode="rint"), target_type=pl.FP32)
        amax = pl.maximum(pl.row_max(pl.abs(v)), INT8_AMAX_EPS)
        sq = pl.div(pl.full([v.shape[0], 1], dtype=pl.FP32, value=INT8_SCALE_MAX), amax)
        qr_scale[:, :] = pl.recip(sq)
        codes = pl.cast(pl.row_expand_mul(v, sq), target_type=pl.INT32, mode="rint")
        codes = pl.cast(pl.cast(codes, target_type=pl.FP16, mode="round"), target_type=pl.INT8,
                        mode="trunc")
        qr_view[:, :] = codes


@pl.jit.inline
def q_head_rms_rope(qr_view, qr_scale, wq_b, wq_b_scale_view, rope_cos, rope_sin, q_flat,
                    t_dim):
    t_tile = (t_dim + RMS_T_TILES - 1) // RMS_T_TILES
    q_rot_bf16 = pl.create_tensor([t_dim, ROPE_DIM], dtype=pl.BF16)  # BUG: one for all heads
    for h in pl.parallel(0, NUM_HEADS, 1):
        h0 = h * HEAD_DIM
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_rms_rope"):
            for tt in pl.range(RMS_T_TILES):
                t0 = tt * t_tile
                t1 = min(t0 + t_tile, t_dim)
                acc = pl.matmul(qr_view[t0:t1, 0:PROJ_K], wq_b[0:PROJ_K, h0 : h0 + HEAD_DIM],
                                out_dtype=pl.INT32)
                for k0 in pl.range(PROJ_K, Q_LORA, PROJ_K):
                    acc = pl.matmul_acc(acc, qr_view[t0:t1, k0 : k0 + PROJ_K],
                                        wq_b[k0 : k0 + PROJ_K, h0 : h0 + HEAD_DIM])
                qf = pl.row_expand_mul(pl.cast(acc, target_type=pl.FP32, mode="rint"),
                                       qr_scale[t0:t1, :])
                qf = pl.col_expand_mul(qf, wq_b_scale_view[:, h0 : h0 + HEAD_DIM])
                n = pl.row_expand_mul(qf, inv_rms(qf, HEAD_DIM))
                q_flat[t0:t1, h0 : h0 + NOPE_DIM] = pl.cast(n[:, 0:NOPE_DIM], target_type=pl.BF16,
                                                            mode="rint")
                cos = pl.cast(rope_cos[t0:t1, 0:ROPE_HALF], target_type=pl.FP32)
                sin = pl.cast(rope_sin[t0:t1, 0:ROPE_HALF], target_type=pl.FP32)
                q_rot_bf16[t0:t1, :] = rope_interleaved(n[:, NOPE_DIM:HEAD_DIM], cos, sin)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope_write"):
            q_flat[:, h0 + NOPE_DIM : h0 + HEAD_DIM] = q_rot_bf16[:, :]


@pl.jit.inline
def kv_rms_rope(kv32, gamma_ckv_view, rope_cos, rope_sin, kv, t_dim):
    t_tile = (t_dim + RMS_T_TILES - 1) // RMS_T_TILES
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_rms_rope"):
        gamma = pl.cast(gamma_ckv_view[:, :], target_type=pl.FP32)
        for tt in pl.range(RMS_T_TILES):
            t0 = tt * t_tile
            t1 = min(t0 + t_tile, t_dim)
            v = kv32[t0:t1, :]
            n = pl.col_expand_mul(pl.row_expand_mul(v, inv_rms(v, HEAD_DIM)), gamma)
            kv[t0:t1, 0:NOPE_DIM] = pl.cast(n[:, 0:NOPE_DIM], target_type=pl.BF16, mode="rint")
            cos = pl.cast(rope_cos[t0:t1, 0:ROPE_HALF], target_type=pl.FP32)
            sin = pl.cast(rope_sin[t0:t1, 0:ROPE_HALF], target_type=pl.FP32)
            kv[t0:t1, NOPE_DIM:HEAD_DIM] = rope_interleaved(n[:, NOPE_DIM:HEAD_DIM], cos, sin)


@pl.jit
def qkv_proj_rope(
    x: pl.Tensor[[B_DYN, S_DYN, HIDDEN], pl.BF16],
    norm_w: pl.Tensor[[HIDDEN], pl.FP32],
    wq_a: pl.Tensor[[HIDDEN, Q_LORA], pl.BF16],
    wq_b: pl.Tensor[[Q_LORA, NUM_HEADS * HEAD_DIM], pl.INT8],
    wq_b_scale: pl.Tensor[[NUM_HEADS * HEAD_DIM], pl.FP32],
    wkv: pl.Tensor[[HIDDEN, HEAD_DIM], pl.BF16],
    rope_cos: pl.Tensor[[T_DYN, ROPE_DIM], pl.BF16],
    rope_sin: pl.Tensor[[T_DYN, ROPE_DIM], pl.BF16],
    gamma_cq: pl.Tensor[[Q_LORA], pl.BF16],
    gamma_ckv: pl.Tensor[[HEAD_DIM], pl.BF16],
    q: pl.Out[pl.Tensor[[T_DYN, NUM_HEADS, HEAD_DIM], pl.BF16]],
    kv: pl.Out[pl.Tensor[[T_DYN, HEAD_DIM], pl.BF16]],
    qr: pl.Out[pl.Tensor[[T_DYN, Q_LORA], pl.INT8]],
    qr_scale: pl.Out[pl.Tensor[[T_DYN, 1], pl.FP32]],
):
    t_dim = pl.tensor.dim(rope_cos, 0)
    x_view = pl.reshape(x, [t_dim, HIDDEN])
    q_flat = pl.reshape(q, [t_dim, NUM_HEADS * HEAD_DIM])

    tok = pl.create_tensor([t_dim, HIDDEN], dtype=pl.BF16)
    attn_norm(x_view, pl.reshape(norm_w, [1, HIDDEN]), tok, t_dim)

    qr32 = pl.create_tensor([t_dim, Q_LORA], dtype=pl.FP32)
    for n0 in pl.parallel(0, Q_LORA, QR_N_TILE):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="qr_proj_matmul"):
            project_fp32(tok, wq_a, qr32, n0, QR_N_TILE)

    qr_view = pl.reshape(qr, [t_dim, Q_LORA])
    qr_rms_quant(qr32, pl.reshape(gamma_cq, [1, Q_LORA]), qr_view, qr_scale)
    q_head_rms_rope(qr_view, qr_scale, wq_b, pl.reshape(wq_b_scale, [1, NUM_HEADS * HEAD_DIM]),
                    rope_cos, rope_sin, q_flat, t_dim)

    kv32 = pl.create_tensor([t_dim, HEAD_DIM], dtype=pl.FP32)
    for n0 in pl.parallel(0, HEAD_DIM, KV_N_TILE):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_proj_matmul"):
            project_fp32(tok, wkv, kv32, n0, KV_N_TILE)
    kv_rms_rope(kv32, pl.reshape(gamma_ckv, [1, HEAD_DIM]), rope_cos, rope_sin, kv, t_dim)
