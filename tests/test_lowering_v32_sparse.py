"""The fused V3.2 front on the emulator: the regions of scopes 2-4 that have kernels pass under
both semantics, the rest run the reference and say so (PARTIAL), and each new kernel's check
catches the bug it exists for."""

import dataclasses

import pytest

import dsref
import lowering
from lowering.kernels.v32 import dispatch as dsp
from lowering.kernels.v32 import idx_hadamard as ih
from lowering.kernels.v32 import k_idx_proj as kip
from lowering.report import FAIL, PASS, REFERENCE
from lowering.tile import pl

V32 = "v32.decode_front"
NO_KERNEL = {"k_idx_layernorm", "idx_rope", "idx_weights", "index_score", "index_topk",
             "q_nope_latent", "sparse_attn", "v_proj"}


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
    assert rep.verdict == "PARTIAL"
    outs = {o.name: o for r in rep.regions for o in r.outputs}
    assert outs["k_cache_idx"].preset == "exact" and outs["dispatch_buf"].preset == "exact"
    assert outs["q_idx"].preset == "bound" and outs["k_idx"].preset == "bound"
    # one matmul per head over the whole ID: the reference's order, so the bits
    assert outs["q_idx_h"].max_ulp == 0 and outs["k_idx_h"].max_ulp == 0


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
