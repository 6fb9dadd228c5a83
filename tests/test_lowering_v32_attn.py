"""V3.2 scopes 3-4 kernels: index scores, top-k and sparse attention pass under the semantics
they implement, and each one's check catches the bug it exists for (planted by monkeypatching
one helper of the kernel module)."""

from dataclasses import replace

import numpy as np
import oracle
import pytest

import dsref
import lowering
from dsref.v32 import NO_SCORE
from lowering.kernels.v32 import index_score as isc
from lowering.kernels.v32 import index_topk as itk
from lowering.kernels.v32 import sparse_attn as sat
from lowering.report import FAIL, PASS
from lowering.tile import pl, run_kernel

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
    update = sat._update

    def no_alpha(mi, li, oi, s, kv):  # o = o + p @ kv: the earlier blocks never rescaled
        m, den, acc = update(mi, li, oi, s, kv)
        return (m, den, acc) if mi is None else (m, den, pl.add(oi, pl.sub(acc, pl.row_expand_mul(
            oi, pl.exp(pl.sub(mi, m))))))

    monkeypatch.setattr(sat, "_update", no_alpha)
    monkeypatch.setattr(sat, "ROW_TILE", 4)  # several blocks per entry
    assert _failing(_run(ATTN, HEAD), "sparse_attn") == ["ctx_latent"]


def _head_rows(cfg, ins) -> np.ndarray:
    """HEAD decode_front.py's ``s4_softmax`` recurrence, one selected row at a time, in numpy
    fp32 (each op one rounding; exp in float64 rounded once): m = s₀, l = 1, o = kv₀; then
    m' = max(m, s), α = exp(m − m'), β = exp(s − m'), l = α·l + β, o = o·α + kv·β."""
    h, kl, scale = cfg.heads, cfg.kv_lora, oracle._attn_scale(cfg)
    exp32 = lambda x: np.exp(x.astype(np.float64)).astype(oracle.F32)  # noqa: E731
    ql = oracle.f32(ins["q_latent"]).reshape(-1, h, kl)
    qp = oracle.f32(ins["q_pe_out"]).reshape(-1, h, cfg.rope)
    out = np.empty(ql.shape, oracle.BF16)
    for b, ctx in enumerate(ins["seq_lens"]):
        rows = b * cfg.max_seq + ins["topk_idx"][b, :min(cfg.index_topk, ctx)].astype(np.int64)
        kv, pe = oracle.f32(ins["kv_cache"][rows]), oracle.f32(ins["pe_cache"][rows])
        s = (oracle.matmul32(ql[b], kv.T) + oracle.matmul32(qp[b], pe.T)) * scale  # [H, n]
        m, den, acc = s[:, 0], np.ones(h, oracle.F32), np.broadcast_to(kv[0], (h, kl))
        for j in range(1, len(rows)):
            m_new = np.maximum(m, s[:, j])
            alpha, beta = exp32(m - m_new), exp32(s[:, j] - m_new)
            den = alpha * den + beta
            acc = acc * alpha[:, None] + kv[j] * beta[:, None]
            m = m_new
        out[b] = oracle.bf16(acc / den[:, None], cfg.cast)
    return out.reshape(out.shape[0], -1)


@pytest.mark.parametrize("row_tile", [1, 4])
def test_sparse_attn_one_row_per_block_is_heads_per_row_recurrence(row_tile):
    """With one selected row per block the online softmax is HEAD's row-by-row recurrence, bit
    for bit (an independent numpy version of it); with four, a block's rows are summed in one
    rounding and rescaled once: the same up to a bf16 ulp here."""
    cfg = dsref.config("v32-tiny", semantics=HEAD)
    ins = dsref.make_inputs(ATTN, cfg, batch=5, seed=2)
    tiling = replace(sat.make_tiling(cfg, None), row_tile=row_tile)
    names = ["q_latent", "q_pe_out", "topk_idx", "seq_lens", "kv_cache", "pe_cache"]
    run = run_kernel(sat.sparse_attn, inputs={n: ins[n] for n in names}, kwargs={"tiling": tiling},
                     outputs={"ctx_latent": ((5, cfg.heads * cfg.kv_lora), pl.BF16)})
    assert run.ok and not run.findings, run.summary()
    got, want = run.outputs["ctx_latent"].view(np.uint16), _head_rows(cfg, ins).view(np.uint16)
    ulps = np.abs(got.astype(np.int64) - want.astype(np.int64)).max()
    assert ulps == 0 if row_tile == 1 else ulps <= 1


@pytest.mark.parametrize("semantics", [None, HEAD])
def test_sparse_attn_dropping_the_last_topk_row_fails(monkeypatch, semantics):
    monkeypatch.setattr(sat, "_selected", lambda seq_lens, b, t: max(
        1, min(t.topk, pl.read(seq_lens, [b])) - 1))
    assert _failing(_run(ATTN, semantics), "sparse_attn") == ["ctx_latent"]
