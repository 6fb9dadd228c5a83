"""Tiny DeepSeek V4 dims (dsref preset ``v4-tiny``) for the pypto-lib style test kernels."""

HIDDEN = 1536
Q_LORA = 512
NUM_HEADS = 4
HEAD_DIM = 160
ROPE_DIM = 32
NOPE_DIM = HEAD_DIM - ROPE_DIM
ROPE_HALF = ROPE_DIM // 2
EPS = 1e-6
INT8_SCALE_MAX = 127.0
INT8_AMAX_EPS = 1e-4
