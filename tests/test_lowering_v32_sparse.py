"""The fused V3.2 front on the emulator: the regions of scopes 2-4 that have kernels pass under
both semantics, the rest run the reference and say so (PARTIAL), and each new kernel's check
catches the bug it exists for."""

import dataclasses

import numpy as np
import pytest

import dsref
import lowering
from lowering.kernels.blocks import row_blocks
from lowering.kernels.v32 import dispatch as dsp
from lowering.kernels.v32 import idx_hadamard as ih
from lowering.kernels.v32 import idx_rope as irp
from lowering.kernels.v32 import idx_weights as iw
from lowering.kernels.v32 import k_idx_layernorm as kln
from lowering.kernels.v32 import k_idx_proj as kip
from lowering.kernels.v32 import q_nope_latent as qnl
from lowering.kernels.v32 import v_proj as vp
from lowering.report import FAIL, PASS, REFERENCE
from lowering.tile import pl

V32 = "v32.decode_front"
NO_KERNEL: set[str] = set()


def _inputs(semantics: str | None, batch: int = 5, seed: int = 0):
    cfg = dsref.config("v32-tiny", semantics=semantics)
    return cfg, dsref.make_inputs(V32, cfg, batch=batch, seed=seed)


@pytest.mark.parametrize("semantics", [None, "pypto-lib-head"])
def test_fused_front_kernels_pass_and_the_rest_is_reference(semantics):
    cfg, ins = _inputs(semantics)
    rep = lowering.diff(V32, cfg, ins, mode="chained")
    status = {r.name: r.status for r in rep.regions}
    assert {n for n, s in status.items() if s == REFERENCE} == NO_KERNEL
    assert all(s == PASS for n, s in status.items() if n not in NO_KERNEL), rep.to_json()
    assert rep.verdict == ("PARTIAL" if NO_KERNEL else "PASS")
    outs = {o.name: o for r in rep.regions for o in r.outputs}
    assert outs["k_cache_idx"].preset == "exact" and outs["dispatch_buf"].preset == "exact"
    assert outs["q_idx"].preset == "bound" and outs["k_idx"].preset == "bound"
    # one matmul per head over the whole K (ID, NOPE, KL), the reference's rounding points in
    # the LayerNorm and the RoPE: the bits
    for name in ("q_idx_h", "k_idx_h", "k_idx_normed", "q_idx_rope", "k_idx_rope", "q_latent",
                 "attn_front"):
        assert outs[name].max_ulp == 0, name


def test_dispatch_ignoring_the_layer_writes_slots_it_does_not_own(monkeypatch):
    cfg, ins = _inputs(None)
    ins["layer_id_t"][:] = 1  # entry b belongs to node b + 1

    def node_b(attn_front, layer_id_t, dispatch_buf, *, tiling):  # forgets layer_id
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="dispatch"):
            for b in pl.parallel(0, attn_front.shape[0], 1):
                node = b % tiling.ep_nodes
                dispatch_buf[node:node + 1, b:b + 1, :] = pl.reshape(
                    attn_front[b:b + 1, :], [1, 1, attn_front.shape[1]])

    monkeypatch.setattr(dsp, "dispatch", node_b)
    rep = lowering.diff(V32, cfg, ins)
    r = rep.region("dispatch")
    assert r.status == FAIL
    text = " ".join(f.message for f in r.findings)
    assert "rows outside the owned rows were written: [0, 0]" in text
    assert "owned rows not fully written: [0, 3], [1, 0], [1, 4], [2, 1], [3, 2]" in text


def test_k_idx_proj_on_the_wrong_input_fails_its_bound(monkeypatch):
    """pypto-lib HEAD projects the raw hidden_states; a kernel that projects normed under that
    semantics is outside the bound on most of k_idx."""
    cfg, ins = _inputs("pypto-lib-head")
    real = kip.make_tiling
    monkeypatch.setattr(kip, "make_tiling", lambda c, s: dataclasses.replace(
        real(c, s), raw_input=False))
    rep = lowering.diff(V32, cfg, ins)
    (k,) = rep.region("k_idx_proj").outputs
    assert rep.region("k_idx_proj").status == FAIL and k.outside > 5 * cfg.index_head_dim // 2


def test_idx_hadamard_with_the_keys_matrix_for_the_queries_fails(monkeypatch):
    """make_inputs gives both matrices the same Walsh-Hadamard matrix (what the official
    rotate_activation applies), where such a swap is invisible; distinct matrices show it."""
    cfg, ins = _inputs(None)
    ins["hadamard_k"] = dsref.make_inputs(V32, cfg, batch=1, seed=9)["wq_b_idx"][:64, :64]
    real = ih.idx_hadamard

    def swapped(q_idx_rope, k_idx_rope, hadamard_q, hadamard_k, q_idx_h, k_idx_h, *, tiling):
        real(q_idx_rope, k_idx_rope, hadamard_k, hadamard_k, q_idx_h, k_idx_h, tiling=tiling)

    monkeypatch.setattr(ih, "idx_hadamard", swapped)
    rep = lowering.diff(V32, cfg, ins)
    q, k = rep.region("idx_hadamard").outputs
    assert rep.region("idx_hadamard").status == FAIL and q.name == "q_idx_h" and not q.ok
    assert k.ok and k.max_ulp == 0


def _one(stage: str, semantics: str | None = None, batch: int = 5):
    """One region run on its own (``v32.decode_front[STAGE]``, its inputs drawn): fast."""
    cfg = dsref.config("v32-tiny", semantics=semantics)
    model = f"{V32}[{stage}]"
    return cfg, model, dsref.make_inputs(model, cfg, batch=batch, seed=0)


def _failing(rep, stage: str) -> list[str]:
    r = rep.region(stage)
    assert r.status == FAIL, r
    return [o.name for o in r.outputs if not o.ok]


class _NoBias:
    """``pl`` with ``col_expand_add`` dropping its vector: a LayerNorm without the bias."""

    col_expand_add = staticmethod(lambda y, bias: y)

    def __getattr__(self, name):
        return getattr(pl, name)


def test_k_idx_layernorm_without_the_bias_fails(monkeypatch):
    cfg, model, ins = _one("k_idx_layernorm")
    monkeypatch.setattr(kln, "pl", _NoBias())
    assert _failing(lowering.diff(model, cfg, ins), "k_idx_layernorm") == ["k_idx_normed"]


def test_idx_rope_at_seq_lens_not_seq_lens_minus_one_fails(monkeypatch):
    cfg, model, ins = _one("idx_rope")
    ins["seq_lens"] = np.minimum(ins["seq_lens"], cfg.max_seq - 1)  # pos + 1 stays in the table
    real = irp.rope_rows
    monkeypatch.setattr(irp, "rope_rows", lambda c, s, pos, half: real(c, s, pos + 1, half))
    assert _failing(lowering.diff(model, cfg, ins), "idx_rope") == ["q_idx_rope", "k_idx_rope"]


@pytest.mark.parametrize("semantics", [None, "pypto-lib-head"])
def test_idx_weights_without_the_head_scale_fails(monkeypatch, semantics):
    cfg, model, ins = _one("idx_weights", semantics)
    real = iw.make_tiling
    monkeypatch.setattr(iw, "make_tiling", lambda c, s: dataclasses.replace(
        real(c, s), head_scale=1.0))
    assert _failing(lowering.diff(model, cfg, ins), "idx_weights") == ["idx_weights"]


def test_q_nope_latent_reading_the_next_heads_weights_fails(monkeypatch):
    cfg, model, ins = _one("q_nope_latent")

    def next_head(q_nope_out, w_q_nope_to_latent, q_latent, *, tiling):
        t, nope, kl = tiling, tiling.k, tiling.n
        w = pl.reshape(w_q_nope_to_latent, [t.heads * nope, kl])
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_nope_latent"):
            for r0, rows in row_blocks(q_nope_out.shape[0], t.batch_tile):
                for h in pl.parallel(0, t.heads, 1):
                    w0 = (h + 1) % t.heads * nope  # the next head's slice
                    acc = pl.matmul(q_nope_out[r0:r0 + rows, h * nope:(h + 1) * nope],
                                    w[w0:w0 + nope, :], out_dtype=pl.FP32)
                    q_latent[r0:r0 + rows, h * kl:(h + 1) * kl] = pl.cast(
                        pl.cast(acc, target_type=pl.BF16, mode=t.mode), target_type=pl.FP32)

    monkeypatch.setattr(qnl, "q_nope_latent", next_head)
    assert _failing(lowering.diff(model, cfg, ins), "q_nope_latent") == ["q_latent"]


def test_v_proj_with_another_heads_weights_fails(monkeypatch):
    # ctx_latent drawn here: make_inputs of the range would compile the reference up to it
    cfg, model = dsref.config("v32-tiny"), f"{V32}[v_proj]"
    w = dsref.make_inputs(V32, cfg, batch=1, seed=0)["w_latent_to_v"]
    ctx = np.random.default_rng(0).standard_normal((5, cfg.heads * cfg.kv_lora))
    ins = {"ctx_latent": ctx.astype(w.dtype), "w_latent_to_v": w}

    def wrong_head(ctx_latent, w_latent_to_v, attn_front, *, tiling):
        t, kl, v = tiling, tiling.k, tiling.n
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="v_proj"):
            for r0, rows in row_blocks(ctx_latent.shape[0], t.batch_tile):
                for h in pl.parallel(0, t.heads, 1):
                    g = t.heads - 1 - h  # the mirrored head's weights
                    acc = pl.matmul(ctx_latent[r0:r0 + rows, h * kl:(h + 1) * kl],
                                    pl.reshape(w_latent_to_v[g:g + 1, :, :], [kl, v]),
                                    out_dtype=pl.FP32)
                    attn_front[r0:r0 + rows, h * v:(h + 1) * v] = pl.cast(
                        acc, target_type=pl.BF16, mode=t.mode)

    monkeypatch.setattr(vp, "v_proj", wrong_head)
    assert _failing(lowering.diff(model, cfg, ins), "v_proj") == ["attn_front"]
