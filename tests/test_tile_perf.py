"""Per-op overhead stays small: a projection and a per-head RoPE loop at V3.2 sizes."""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np

from lowering.tile import pl, run_kernel

BF16 = ml_dtypes.bfloat16
B, K, N, KT, NT, H, R = 16, 1536, 6144, 512, 64, 128, 64


def proj(qr, w, q):  # noqa: ANN001, ANN201
    for n0 in pl.parallel(0, N, NT):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_proj"):
            acc = pl.matmul(qr[:, 0:KT], w[0:KT, n0:n0 + NT], out_dtype=pl.FP32)
            for k0 in pl.range(KT, K, KT):
                acc = pl.matmul_acc(acc, qr[:, k0:k0 + KT], w[k0:k0 + KT, n0:n0 + NT])
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_proj_write"):
            q[:, n0:n0 + NT] = pl.cast(acc, target_type=pl.BF16, mode="rint")


def rope(qp, cos, sin, out):  # noqa: ANN001, ANN201
    half = R // 2
    for b in pl.parallel(0, B):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope"):
            c_lo, c_hi = cos[b:b + 1, 0:half], cos[b:b + 1, half:R]
            s_lo, s_hi = sin[b:b + 1, 0:half], sin[b:b + 1, half:R]
            for h in pl.range(H):
                lo = pl.cast(qp[b:b + 1, h * R:h * R + half], target_type=pl.FP32)
                hi = pl.cast(qp[b:b + 1, h * R + half:(h + 1) * R], target_type=pl.FP32)
                r_lo = pl.sub(pl.col_expand_mul(lo, c_lo), pl.col_expand_mul(hi, s_lo))
                r_hi = pl.add(pl.col_expand_mul(hi, c_hi), pl.col_expand_mul(lo, s_hi))
                out[b:b + 1, h * R:h * R + half] = pl.cast(r_lo, target_type=pl.BF16)
                out[b:b + 1, h * R + half:(h + 1) * R] = pl.cast(r_hi, target_type=pl.BF16)


def test_projection_and_rope_loops_run_fast() -> None:
    rng = np.random.default_rng(0)
    qr = rng.integers(-8, 8, (B, K), dtype=np.int8).astype(BF16)
    w = rng.integers(-8, 8, (K, N), dtype=np.int8).astype(BF16)
    t0 = time.perf_counter()
    r = run_kernel(proj, inputs={"qr": qr, "w": w},
                   outputs={"q": ((B, N), pl.BF16)})
    t_proj = time.perf_counter() - t0
    assert r.ok, r.summary()
    np.testing.assert_array_equal(
        r.outputs["q"].astype(np.float32),
        (qr.astype(np.float64) @ w.astype(np.float64)).astype(np.float32).astype(BF16)
        .astype(np.float32))
    qp = rng.standard_normal((B, H * R)).astype(BF16)
    cs = rng.standard_normal((B, R)).astype(np.float32)
    t0 = time.perf_counter()
    r = run_kernel(rope, inputs={"qp": qp, "cos": cs, "sin": cs},
                   outputs={"out": ((B, H * R), pl.BF16)})
    t_rope = time.perf_counter() - t0
    assert r.ok, r.summary()
    # 288 matmul calls and 16 x 128 x 12 ops: generous bounds for a loaded 2-core machine
    assert t_proj < 4.0 and t_rope < 8.0, (t_proj, t_rope)
