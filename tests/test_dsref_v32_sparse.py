"""V3.2 scopes 2-4 (the indexer, top-k, sparse attention): known answers and what a decode step
leaves alone. Every stage is also checked bitwise against tests/oracle.py through the chained
model tests (test_dsref_models, test_dsref_variants, test_lowering_trace)."""

import math

import numpy as np
from conftest import assert_bitwise

import dsref
from dsref.model import STAGES
from dsref.numerics import x64
from dsref.v32 import attn_scale

V32 = "v32.decode_front"
FLT_MAX = float(np.finfo(np.float32).max)
NONE = -(2**31)


def _topk(scores: np.ndarray, seq_lens: list[int]) -> np.ndarray:
    cfg = dsref.config("v32-tiny")  # MAX_SEQ 64, TOPK 16
    s = np.full((len(seq_lens), cfg.max_seq), -FLT_MAX, np.float32)
    s[:, : scores.shape[1]] = scores
    with x64():
        return np.asarray(STAGES["index_topk"].fn(s, np.array(seq_lens, np.int32), cfg=cfg))


def test_topk_orders_by_score_then_position_and_pads_past_the_context():
    tiny = 1e-45  # an fp32 subnormal: XLA CPU reads it as 0 in float arithmetic (DAZ)
    scores = np.array([[0.5, 2.0, -0.0, 0.0, 2.0, -1.0, 9.0, 9.0],
                       [tiny, -tiny, 0.0, 3.0, -0.0, -FLT_MAX, 0.0, 0.0]], np.float32)
    got = _topk(scores, [6, 5])
    # row 0: the two 2.0 by position, −0.0 and +0.0 tie (by position); 9.0s lie past seq_len 6
    assert got[0, :6].tolist() == [1, 4, 0, 2, 3, 5] and (got[0, 6:] == NONE).all()
    # row 1: a subnormal is above ±0 and −subnormal below them
    assert got[1, :5].tolist() == [3, 0, 2, 4, 1] and (got[1, 5:] == NONE).all()


def test_topk_selects_the_highest_when_the_context_exceeds_topk():
    rng = np.random.default_rng(0)
    scores = rng.permutation(64).astype(np.float32)[None, :]  # distinct
    got = _topk(scores, [64])[0]
    assert got.tolist() == np.argsort(-scores[0])[:16].tolist()
    assert sorted(scores[0, got]) == list(range(48, 64))


def test_attention_scale_with_and_without_yarn():
    m = 0.1 * math.log(40) + 1  # V3.2: YaRN factor 40, 163840 > 4096
    assert attn_scale(dsref.config("v32")) == float(np.float32(192**-0.5 * m * m))
    assert abs(attn_scale(dsref.config("v32")) - 0.1352337788608801) < 1e-8
    assert attn_scale(dsref.config("v32", attn_scale="plain")) == float(np.float32(192**-0.5))


def test_a_decode_step_writes_only_its_rows_of_every_in_out():
    cfg = dsref.config("v32-tiny", semantics="pypto-lib-head")
    ins = dsref.make_inputs(V32, cfg, batch=3, seed=5)
    sentinel = np.array(-3.25, np.float32).astype(dsref.inputs.BF16)
    for name in ("kv_cache", "pe_cache", "k_cache_idx", "dispatch_buf"):
        ins[name] = np.full_like(ins[name], sentinel)
    ins["layer_id_t"] = np.array([cfg.ep_nodes - 2], np.int32)  # entries 2.. wrap to node 0
    outs = dsref.run(V32, cfg, ins)
    b = np.arange(3)
    rows = b * cfg.max_seq + ins["seq_lens"] - 1
    for name in ("kv_cache", "pe_cache", "k_cache_idx"):
        keep = np.ones(len(ins[name]), bool)
        keep[rows] = False
        assert_bitwise(outs[name][keep], ins[name][keep], f"{name} rows not written")
        assert (outs[name][rows] != sentinel).all(), name
    nodes = (b + cfg.ep_nodes - 2) % cfg.ep_nodes
    assert nodes.tolist() == [2, 3, 0]
    keep = np.ones(ins["dispatch_buf"].shape[:2], bool)
    keep[nodes, b] = False
    assert_bitwise(outs["dispatch_buf"][keep], ins["dispatch_buf"][keep], "dispatch_buf")
    # each entry's attention row lands at its node, finite
    row = outs["dispatch_buf"][nodes, b].astype(np.float32)
    assert np.isfinite(row).all() and (row != -3.25).mean() > 0.99
