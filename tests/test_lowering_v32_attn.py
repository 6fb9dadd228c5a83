"""V3.2 scopes 3-4 kernels: index scores, top-k and sparse attention pass under the semantics
they implement, and each one's check catches the bug it exists for (planted by monkeypatching
one helper of the kernel module)."""

import numpy as np
import pytest

import dsref
import lowering
from dsref.v32 import NO_SCORE
from lowering.kernels.v32 import index_score as isc
from lowering.kernels.v32 import index_topk as itk
from lowering.kernels.v32 import sparse_attn as sat
from lowering.report import FAIL, PASS
from lowering.tile import pl

SCORES = "v32.decode_front[index_score:index_topk]"
ATTN = "v32.decode_front[sparse_attn]"
HEAD = "pypto-lib-head"


def _run(model: str, semantics: str | None, batch: int = 5, seed: int = 0, edit=None):
    cfg = dsref.config("v32-tiny", semantics=semantics)
    ins = dsref.make_inputs(model, cfg, batch=batch, seed=seed)
    if edit:
        edit(ins)
    return lowering.diff(model, cfg, ins, mode="chained")


def _failing(rep, region: str) -> list[str]:
    r = rep.region(region)
    assert r.status == FAIL, rep.to_json()
    return [o.name for o in r.outputs if not o.ok]


@pytest.mark.parametrize("semantics", [None, HEAD])  # relu + bf16 probs | reduce_q + online
def test_scores_topk_and_attention_pass(semantics):
    rep = _run(SCORES, semantics)
    assert [(r.name, r.status) for r in rep.regions] == [("index_score", PASS),
                                                          ("index_topk", PASS)], rep.to_json()
    outs = {o.name: o for r in rep.regions for o in r.outputs}
    # the reference's rounding points and a stable sort: the bits, dsref's order
    assert outs["index_scores"].max_ulp == 0 and outs["topk_idx"].max_ulp == 0
    rep = _run(ATTN, semantics)
    assert rep.region("sparse_attn").status == PASS, rep.to_json()


def test_topk_ties_go_to_the_smaller_position_as_dsref_orders():
    """sort32 keeps equal values in payload order, mrgsort takes the earliest run: a stable
    descending sort, −0.0 tying +0.0, subnormals ordered — dsref's order exactly."""
    tiny = np.float32(1e-40)  # subnormal

    def ties(ins):
        vals = np.array([1.0, -0.0, 0.0, tiny, -tiny, 2.0, 1.0, -1.0], np.float32)
        s = np.resize(vals, ins["index_scores"].shape)
        for b, n in enumerate(ins["seq_lens"]):
            s[b, n:] = NO_SCORE
        ins["index_scores"] = s

    cfg = dsref.config("v32-tiny")
    model = "v32.decode_front[index_topk]"
    ins = dsref.make_inputs(model, cfg, batch=5, seed=1)
    ties(ins)
    rep = lowering.diff(model, cfg, ins)
    (out,) = rep.region("index_topk").outputs
    assert rep.region("index_topk").status == PASS and out.max_ulp == 0, rep.to_json()


def test_index_score_reading_the_next_entrys_cache_rows_fails(monkeypatch):
    monkeypatch.setattr(isc, "_cache_row", lambda b, s0, t: (b + 1) % 5 * t.max_seq + s0)
    assert _failing(_run(SCORES, HEAD), "index_score") == ["index_scores"]


def test_index_score_scoring_position_seq_len_fails(monkeypatch):
    """One position past the context scored instead of NO_SCORE (ds32's relu form)."""
    monkeypatch.setattr(isc, "_context", lambda seq_lens, b: min(pl.read(seq_lens, [b]) + 1, 64))
    assert _failing(_run(SCORES, None), "index_score") == ["index_scores"]


def test_topk_keeping_one_position_past_the_context_fails(monkeypatch):
    """Entry 0 has seq_len 1: its slot 1 must be NO_INDEX, not the NO_SCORE position."""
    monkeypatch.setattr(itk, "_kept", lambda seq_lens, b, t: min(t.topk,
                                                                  pl.read(seq_lens, [b]) + 1))
    rep = _run(SCORES, HEAD)
    assert _failing(rep, "index_topk") == ["topk_idx"]
    assert rep.region("index_score").status == PASS


def test_sparse_attn_without_the_alpha_rescale_fails(monkeypatch):
    def no_alpha(mi, li, oi, cur, kv_i):  # o = o + kv·β: the old rows never rescaled
        mi_new = pl.maximum(mi, cur)
        alpha, beta = pl.exp(pl.sub(mi, mi_new)), pl.exp(pl.sub(cur, mi_new))
        return mi_new, pl.add(pl.mul(alpha, li), beta), pl.add(oi, pl.row_expand_mul(kv_i,
                                                                                     beta))

    monkeypatch.setattr(sat, "_update", no_alpha)
    assert _failing(_run(ATTN, HEAD), "sparse_attn") == ["ctx_latent"]


@pytest.mark.parametrize("semantics", [None, HEAD])
def test_sparse_attn_dropping_the_last_topk_row_fails(monkeypatch, semantics):
    monkeypatch.setattr(sat, "_selected", lambda seq_lens, b, t: max(
        1, min(t.topk, pl.read(seq_lens, [b])) - 1))
    assert _failing(_run(ATTN, semantics), "sparse_attn") == ["ctx_latent"]
