"""The bounds of V3.2's scopes 2-4 (lowering.bounds: the indexer, the top-k as a set, sparse
attention's softmax): each holds for what a kernel may legitimately compute — checked by an
independent float32 simulation of the online softmax in random orders with a perturbed exp —
and fails the bug it exists for; along a stored-outputs chain the fused front's dispatch_buf
is bounded, not waved through by a ratio."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import dsref
import lowering
from dsref.v32 import NO_INDEX, SCOPE234, attn_scale
from lowering import bounds as bd
from lowering.diff import BoundModelError, judge
from lowering.pipeline import judge_observed

V32 = "v32.decode_front"
BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.float32


@pytest.fixture(scope="module")
def head():
    cfg = dsref.config("v32-tiny", semantics="pypto-lib-head")
    ins = dsref.make_inputs(V32, cfg, batch=4, seed=5)
    return cfg, ins, {r.name: r for r in lowering.trace(V32, cfg, ins).regions}


def test_zero_slack_model_of_scopes_2_to_4_is_dsref_bitwise():
    """With dsref's own accumulation every interval of the new stages is a point equal to
    dsref's output (top-k: dsref's selection is one the set allows), under both presets."""
    for sem in (None, "pypto-lib-head"):
        cfg = dsref.config("v32-tiny", semantics=sem)
        ins = dsref.make_inputs(V32, cfg, batch=3, seed=2)
        for r in lowering.trace(V32, cfg, ins).regions:
            if r.name not in SCOPE234:
                continue
            b = bd.stage_bounds(V32, r.name, cfg, r.inputs, bd.REFERENCE, compute_exact=True)
            for n, want in r.outputs.items():
                if isinstance(b[n], bd.TopkSet):
                    assert b[n].problems(want) == [], (sem, r.name)
                    continue
                iv = b[n].iv if isinstance(b[n], bd.RowsIv) else b[n]
                flat = np.asarray(want).reshape(-1, *iv.lo.shape[1:]) if isinstance(
                    b[n], bd.RowsIv) else np.asarray(want)
                w = (flat[b[n].rows] if isinstance(b[n], bd.RowsIv) else flat).astype(np.float64)
                w = w.reshape(iv.lo.shape)
                assert ((iv.lo == w) & (iv.hi == w)).all(), (sem, r.name, n)


# ---- top-k as a set ------------------------------------------------------------------------------


def _topk_bound(lo, hi, ctx, slots):
    return bd.TopkSet(np.asarray(lo, float), np.asarray(hi, float), np.asarray(ctx), slots)


def _judge_topk(got, bound, want):
    return judge("topk_idx", np.asarray(got, np.int32), np.asarray(want, np.int32), bound)


def test_topk_is_a_set_ties_and_rounding_decide_nothing():
    s = np.array([[5.0, 3.0, 3.0, 1.0, 0.0, 9.0]])  # position 5 is past the context (ctx 5)
    exact = _topk_bound(s, s, [5], 3)
    want = [[0, 1, 2]]
    assert _judge_topk([[2, 0, 1]], exact, want).ok  # any order
    d = _judge_topk([[0, 1, 3]], exact, want)  # 1.0 chosen over 3.0
    assert not d.ok and d.preset == "set" and "position 3" in d.message and "over 2" in d.message
    ties = np.array([[5.0, 3.0, 2.0, 2.0, 0.0, 9.0]])
    b = _topk_bound(ties, ties, [5], 3)
    assert _judge_topk([[0, 1, 3]], b, [[0, 1, 2]]).ok  # the other of two equal scores
    # scores known within bounds: 2.0 and 2.5 overlap, so either is a legitimate third
    wide = _topk_bound([[5, 3, 2, 1.9, 0, 9]], [[5, 3, 2.5, 2.1, 0, 9]], [5], 3)
    assert _judge_topk([[0, 1, 3]], wide, [[0, 1, 2]]).ok
    sure, maybe, need = wide.split(0)
    assert sure.tolist() == [0, 1] and maybe.tolist() == [2, 3] and need == 1


@pytest.mark.parametrize("got,slot,why", [
    ([[0, 1, 5]], 2, "outside the context"),  # past seq_len
    ([[0, 0, 1]], 1, "chosen twice"),
    ([[0, 1, -1]], 2, "outside the context"),
], ids=["past-context", "duplicate", "negative"])
def test_a_wrong_selection_fails_naming_entry_and_slot(got, slot, why):
    s = np.array([[5.0, 3.0, 2.0, 1.0, 0.0, 9.0]])
    d = _judge_topk(got, _topk_bound(s, s, [5], 3), [[0, 1, 2]])
    assert not d.ok and why in d.message and d.first_mismatches == [(0, slot)]


def test_short_context_keeps_no_index_in_the_later_slots():
    s = np.array([[1.0, 2.0, 0.0, 0.0]])
    b = _topk_bound(s, s, [2], 3)
    assert _judge_topk([[1, 0, NO_INDEX]], b, [[1, 0, NO_INDEX]]).ok
    d = _judge_topk([[1, 0, 3]], b, [[1, 0, NO_INDEX]])
    assert not d.ok and "not NO_INDEX" in d.message
    with pytest.raises(BoundModelError):  # the reference itself outside: a model error
        _judge_topk([[1, 0, NO_INDEX]], b, [[0, 3, NO_INDEX]])


# ---- sparse attention: an independent float32 online softmax -------------------------------------


def _exp_off(x: np.ndarray, rng, ulps: int) -> np.ndarray:
    """The correctly rounded float32 exp, then moved by up to ``ulps`` ulps either way (a less
    accurate exp, within the bound's assumed EXP_ULPS)."""
    y = np.exp(x.astype(np.float64)).astype(F32)
    for _ in range(ulps):
        step = rng.integers(-1, 2, y.shape)
        y = np.where(step > 0, np.nextafter(y, F32(np.inf)),
                     np.where(step < 0, np.nextafter(y, F32(0)), y)).astype(F32)
    return y


def _online(cfg, r, rng, *, rescale: bool = True, drop_last: bool = False) -> np.ndarray:
    """HEAD's online softmax in float32 numpy: per entry and head, rows in a random order,
    each score ``fl(fl(Σ fl(q·kv)) + fl(Σ fl(qp·pe))) · scale``, then
    ``m' = max(m, s)``, ``l = α·l + β``, ``o = o·α + kv·β``; ``ctx = bf16(o / l)``."""
    ins = r.inputs
    b, h, kl, rope = ins["q_latent"].shape[0], cfg.heads, cfg.kv_lora, cfg.rope
    kv = np.asarray(ins["kv_cache"]).astype(F32)
    pe = np.asarray(ins["pe_cache"]).astype(F32)
    ql = np.asarray(ins["q_latent"]).astype(F32).reshape(b, h, kl)
    qp = np.asarray(ins["q_pe_out"]).astype(F32).reshape(b, h, rope)
    scale = F32(attn_scale(cfg))
    out = np.zeros((b, h, kl), F32)
    for i in range(b):
        n = int(min(cfg.index_topk, ins["seq_lens"][i]))
        rows = i * cfg.max_seq + np.asarray(ins["topk_idx"])[i, :n][rng.permutation(n)]
        if drop_last and rows.size > 1:
            rows = rows[:-1]
        m = l_ = o = None
        for j in rows:
            s = (np.sum(ql[i] * kv[j], axis=-1, dtype=F32) + np.sum(qp[i] * pe[j], axis=-1,
                                                                     dtype=F32)) * scale
            s = s.astype(F32)[:, None]
            if m is None:
                m, l_, o = s, np.ones_like(s), np.broadcast_to(kv[j], (h, kl)).astype(F32)
                continue
            m2 = np.maximum(m, s)
            a, be = _exp_off(m - m2, rng, 3), _exp_off(s - m2, rng, 3)
            l_ = (a * l_ + be).astype(F32)
            o = ((o * a if rescale else o) + kv[j] * be).astype(F32)
            m = m2
        out[i] = (o / l_).astype(F32)
    return out.reshape(b, -1)


def test_online_softmax_in_any_order_with_a_3_ulp_exp_lies_inside_the_bound(head):
    cfg, _, regions = head
    r = regions["sparse_attn"]
    want = np.asarray(r.outputs["ctx_latent"])
    bound = bd.stage_bounds(V32, "sparse_attn", cfg, r.inputs, bd.ANY)["ctx_latent"]
    rng = np.random.default_rng(0)
    runs = [_online(cfg, r, rng) for _ in range(3)]
    for got in runs:
        d = judge("ctx_latent", got.astype(BF16), want, bound)
        assert d.ok and d.preset == "bound", d.message
    assert not np.array_equal(runs[0], runs[1])  # the orders really round differently


@pytest.mark.parametrize("bug", ["no-rescale", "drop-last"])
def test_online_softmax_bugs_fail_the_bound(head, bug):
    cfg, _, regions = head
    r = regions["sparse_attn"]
    bound = bd.stage_bounds(V32, "sparse_attn", cfg, r.inputs, bd.ANY)["ctx_latent"]
    got = _online(cfg, r, np.random.default_rng(1), rescale=bug != "no-rescale",
                  drop_last=bug == "drop-last").astype(BF16)
    d = judge("ctx_latent", got, np.asarray(r.outputs["ctx_latent"]), bound)
    assert not d.ok and d.outside > 0 and "outside the bound" in d.message


# ---- the fused front along stored outputs --------------------------------------------------------


def test_fused_front_outputs_are_bounded_and_ten_ulps_off_fail(head):
    """A run that stores only the front's outputs (pypto-lib HEAD's decode_front.py): every
    intermediate of scopes 2-4 carried as intervals, the top-k as a set, so dispatch_buf is
    judged within a bound. Ten elements moved ten bf16 ulps fail it, while the pypto-lib ratio
    preset would pass them."""
    cfg, ins, _ = head
    outs = {k: np.asarray(v) for k, v in dsref.run(V32, cfg, ins).items()}
    by = {o.name: o for j in judge_observed(V32, cfg, ins, outs) for o in j.outputs}
    for name in ("k_cache_idx", "dispatch_buf"):
        assert by[name].ok and by[name].preset == "bound", (name, by[name].note)
    node, b = dsref.get_model(V32).owned(cfg, "dispatch_buf", ins)
    got = outs["dispatch_buf"].copy()
    slots = got[node, b]  # [B, H·V]: the written slots
    flat = slots.reshape(-1)
    victims = np.random.default_rng(3).choice(np.flatnonzero(flat != 0), 10, replace=False)
    for _ in range(10):
        flat[victims] = np.nextafter(flat[victims], BF16.type(np.inf))
    got[node, b] = flat.reshape(slots.shape)
    d = {o.name: o for j in judge_observed(V32, cfg, ins, {**outs, "dispatch_buf": got})
         for o in j.outputs}["dispatch_buf"]
    assert not d.ok and d.preset == "bound" and d.outside > 0
    assert d.ratio_ok  # the upstream gate alone would pass it
