"""DeepSeek V3.2 decode front, scope 1, with pypto-lib PR #134's numerics (test kernel).

The same program as ``v32_decode_front_scope1.py`` (ds32 numerics), written the way PR #134's
kernel computes — the three divergences dsref's ``pypto-lib-pr134`` semantics names:

    qr_fp32 = normed @ wq_a                      (left in fp32: no bf16 qr_raw)
    qr_out  = bf16(w_q · (bf16(qr_fp32) · inv_rms(qr_fp32)))   variance of the fp32 qr
    inv_rms = 1 / sqrt(Σx² · (1/N) + eps)         (variance=mul_inv: the product, not a division)
    every pl.cast to bf16 without ``mode``       (PyPTO's default ``round``: ties away, cast=rhaz)

Everything else (tiles, chunks, RoPE half layout, cache rows) as in the ds32 file.
"""

import pypto.language as pl
from config import (
    BATCH,
    CACHE_ROWS,
    EPS,
    HIDDEN,
    KV_A_OUT,
    KV_LORA_RANK,
    MAX_SEQ,
    NUM_HEADS,
    Q_LORA_RANK,
    QK_HEAD_DIM,
    QK_NOPE_HEAD_DIM,
    QK_ROPE_HEAD_DIM,
)

RMSNORM_K = 512  # [16, 512] fp32 = 32 KiB of Vec per operand
PROJ_K = 512  # a [512, 64] bf16 weight tile is L0B's 64 KiB
OUT_TILE = 64  # projection output columns per accumulator
HALF = QK_ROPE_HEAD_DIM // 2


def build_decode_front_pr134_program():
    @pl.program
    class DecodeFrontPr134:
        @pl.function(type=pl.FunctionType.Opaque)
        def decode_front_scope1(
            self,
            hidden_states: pl.Tensor[[BATCH, HIDDEN], pl.BF16],
            input_rms_weight: pl.Tensor[[1, HIDDEN], pl.FP32],
            wq_a: pl.Tensor[[HIDDEN, Q_LORA_RANK], pl.BF16],
            q_norm_weight: pl.Tensor[[1, Q_LORA_RANK], pl.FP32],
            wq_b: pl.Tensor[[Q_LORA_RANK, NUM_HEADS * QK_HEAD_DIM], pl.BF16],
            wkv_a: pl.Tensor[[HIDDEN, KV_A_OUT], pl.BF16],
            kv_norm_weight: pl.Tensor[[1, KV_LORA_RANK], pl.FP32],
            seq_lens: pl.Tensor[[BATCH], pl.INT32],
            rope_cos: pl.Tensor[[MAX_SEQ, QK_ROPE_HEAD_DIM], pl.FP32],
            rope_sin: pl.Tensor[[MAX_SEQ, QK_ROPE_HEAD_DIM], pl.FP32],
            qr_out: pl.Out[pl.Tensor[[BATCH, Q_LORA_RANK], pl.BF16]],
            q_nope_out: pl.Out[pl.Tensor[[BATCH, NUM_HEADS * QK_NOPE_HEAD_DIM], pl.BF16]],
            q_pe_out: pl.Out[pl.Tensor[[BATCH, NUM_HEADS * QK_ROPE_HEAD_DIM], pl.BF16]],
            kv_a_out: pl.Out[pl.Tensor[[BATCH, KV_A_OUT], pl.BF16]],
            kv_cache: pl.InOut[pl.Tensor[[CACHE_ROWS, KV_LORA_RANK], pl.BF16]],
            pe_cache: pl.InOut[pl.Tensor[[CACHE_ROWS, QK_ROPE_HEAD_DIM], pl.BF16]],
        ):
            normed_states = pl.create_tensor([BATCH, HIDDEN], dtype=pl.BF16)
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="input_rmsnorm"):
                self.rms_norm(hidden_states, input_rms_weight, normed_states, HIDDEN, RMSNORM_K)

            qr_fp32 = pl.create_tensor([BATCH, Q_LORA_RANK], dtype=pl.FP32)
            for n0 in pl.parallel(0, Q_LORA_RANK, OUT_TILE):
                with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_lora_proj"):
                    self.project_fp32(normed_states, wq_a, qr_fp32, n0)

            with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_lora_rmsnorm"):
                self.q_norm(qr_fp32, q_norm_weight, qr_out)

            q_proj_out = pl.create_tensor([BATCH, NUM_HEADS * QK_HEAD_DIM], dtype=pl.BF16)
            for n0 in pl.parallel(0, NUM_HEADS * QK_HEAD_DIM, OUT_TILE):
                with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_proj"):
                    self.project(qr_out, wq_b, q_proj_out, n0)

            for n0 in pl.parallel(0, KV_A_OUT, OUT_TILE):
                with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_a_proj"):
                    self.project(normed_states, wkv_a, kv_a_out, n0)

            kv_normed = pl.create_tensor([BATCH, KV_LORA_RANK], dtype=pl.BF16)
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="kv_rmsnorm"):
                self.rms_norm(kv_a_out, kv_norm_weight, kv_normed, KV_LORA_RANK, KV_LORA_RANK)

            with pl.at(level=pl.Level.CORE_GROUP, name_hint="rope_cache_write"):
                for b in pl.parallel(0, BATCH, 1):
                    pos = pl.tensor.read(seq_lens, [b]) - 1
                    cache_row = b * MAX_SEQ + pos
                    cos_lo = rope_cos[pos : pos + 1, 0:HALF]
                    cos_hi = rope_cos[pos : pos + 1, HALF:QK_ROPE_HEAD_DIM]
                    sin_lo = rope_sin[pos : pos + 1, 0:HALF]
                    sin_hi = rope_sin[pos : pos + 1, HALF:QK_ROPE_HEAD_DIM]
                    for h in pl.range(NUM_HEADS):
                        q_col = h * QK_HEAD_DIM
                        q_nope = pl.slice(q_proj_out, [1, QK_NOPE_HEAD_DIM], [b, q_col])
                        q_nope_out = pl.assemble(q_nope_out, q_nope, [b, h * QK_NOPE_HEAD_DIM])
                        rope_col = q_col + QK_NOPE_HEAD_DIM
                        q_lo = pl.cast(q_proj_out[b : b + 1, rope_col : rope_col + HALF],
                                       target_type=pl.FP32)
                        q_hi = pl.cast(q_proj_out[b : b + 1, rope_col + HALF : rope_col + 2 * HALF],
                                       target_type=pl.FP32)
                        rot_lo = pl.sub(pl.col_expand_mul(q_lo, cos_lo), pl.col_expand_mul(q_hi, sin_lo))
                        rot_hi = pl.add(pl.col_expand_mul(q_hi, cos_hi), pl.col_expand_mul(q_lo, sin_hi))
                        pe_col = h * QK_ROPE_HEAD_DIM
                        q_pe_out[b : b + 1, pe_col : pe_col + HALF] = pl.cast(
                            rot_lo, target_type=pl.BF16)
                        q_pe_out[b : b + 1, pe_col + HALF : pe_col + QK_ROPE_HEAD_DIM] = pl.cast(
                            rot_hi, target_type=pl.BF16)

                    kv_cache[cache_row : cache_row + 1, :] = kv_normed[b : b + 1, :]
                    pe_lo = pl.cast(kv_a_out[b : b + 1, KV_LORA_RANK : KV_LORA_RANK + HALF],
                                    target_type=pl.FP32)
                    pe_hi = pl.cast(kv_a_out[b : b + 1, KV_LORA_RANK + HALF : KV_A_OUT],
                                    target_type=pl.FP32)
                    pe_rot_lo = pl.sub(pl.col_expand_mul(pe_lo, cos_lo), pl.col_expand_mul(pe_hi, sin_lo))
                    pe_rot_hi = pl.add(pl.col_expand_mul(pe_hi, cos_hi), pl.col_expand_mul(pe_lo, sin_hi))
                    pe_cache[cache_row : cache_row + 1, 0:HALF] = pl.cast(
                        pe_rot_lo, target_type=pl.BF16)
                    pe_cache[cache_row : cache_row + 1, HALF:QK_ROPE_HEAD_DIM] = pl.cast(
                        pe_rot_hi, target_type=pl.BF16)
            return q_nope_out, q_pe_out

        @pl.function(type=pl.FunctionType.InCore)
        def rms_norm(self, x, weight, out, n, k):
            """out[:, :n] = bf16(w · (x[:, :n] · inv_rms)), variance Σx² · (1/n)."""
            sq = pl.full([BATCH, 1], dtype=pl.FP32, value=0.0)
            for k0 in pl.range(0, n, k):
                x_chunk = pl.cast(x[:, k0 : k0 + k], target_type=pl.FP32)
                sq = pl.add(sq, pl.row_sum(pl.mul(x_chunk, x_chunk)))
            inv_rms = pl.recip(pl.sqrt(pl.add(pl.mul(sq, 1.0 / n), EPS)))
            for k0 in pl.range(0, n, k):
                x_chunk = pl.cast(x[:, k0 : k0 + k], target_type=pl.FP32)
                y = pl.col_expand_mul(pl.row_expand_mul(x_chunk, inv_rms), weight[:, k0 : k0 + k])
                out[:, k0 : k0 + k] = pl.cast(y, target_type=pl.BF16)

        @pl.function(type=pl.FunctionType.InCore)
        def q_norm(self, qr, weight, out):
            """out = bf16(w · (bf16(qr) · inv_rms(qr))): the variance of the fp32 qr."""
            sq = pl.full([BATCH, 1], dtype=pl.FP32, value=0.0)
            for k0 in pl.range(0, Q_LORA_RANK, RMSNORM_K):
                chunk = qr[:, k0 : k0 + RMSNORM_K]
                sq = pl.add(sq, pl.row_sum(pl.mul(chunk, chunk)))
            inv_rms = pl.recip(pl.sqrt(pl.add(pl.mul(sq, 1.0 / Q_LORA_RANK), EPS)))
            for k0 in pl.range(0, Q_LORA_RANK, RMSNORM_K):
                rounded = pl.cast(pl.cast(qr[:, k0 : k0 + RMSNORM_K], target_type=pl.BF16),
                                  target_type=pl.FP32)
                y = pl.col_expand_mul(pl.row_expand_mul(rounded, inv_rms),
                                      weight[:, k0 : k0 + RMSNORM_K])
                out[:, k0 : k0 + RMSNORM_K] = pl.cast(y, target_type=pl.BF16)

        @pl.function(type=pl.FunctionType.InCore)
        def project_fp32(self, x, w, out, n0):
            """out[:, n0:n0+OUT_TILE] = x @ w[:, n0:n0+OUT_TILE] in fp32, K in PROJ_K chunks."""
            acc = pl.matmul(x[:, 0:PROJ_K], w[0:PROJ_K, n0 : n0 + OUT_TILE], out_dtype=pl.FP32)
            for k0 in pl.range(PROJ_K, x.shape[1], PROJ_K):
                acc = pl.matmul_acc(acc, x[:, k0 : k0 + PROJ_K], w[k0 : k0 + PROJ_K, n0 : n0 + OUT_TILE])
            out[:, n0 : n0 + OUT_TILE] = acc

        @pl.function(type=pl.FunctionType.InCore)
        def project(self, x, w, out, n0):
            """out[:, n0:n0+OUT_TILE] = bf16(x @ w[:, n0:n0+OUT_TILE]), K in PROJ_K chunks."""
            acc = pl.matmul(x[:, 0:PROJ_K], w[0:PROJ_K, n0 : n0 + OUT_TILE], out_dtype=pl.FP32)
            for k0 in pl.range(PROJ_K, x.shape[1], PROJ_K):
                acc = pl.matmul_acc(acc, x[:, k0 : k0 + PROJ_K], w[k0 : k0 + PROJ_K, n0 : n0 + OUT_TILE])
            out[:, n0 : n0 + OUT_TILE] = pl.cast(acc, target_type=pl.BF16)

    return DecodeFrontPr134
