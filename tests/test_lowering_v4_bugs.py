"""The checks catch the bugs the seed reviews found: each test runs a broken variant of a V4
kernel (built here from the production blocks, never shipped) and asserts the exact finding;
the production kernel under the same conditions is the control."""

import dataclasses
import re

import numpy as np
from test_lowering_v4 import flash_run

import dsref
from lowering.diff import compare
from lowering.kernels.blocks import t_tiles
from lowering.kernels.v4 import attn_norm as attn_norm_kernel
from lowering.kernels.v4 import q_head_rms_rope as q_kernel
from lowering.kernels.v4._blocks import norm_rope_rows, reassemble, rope_selects
from lowering.kernels.v4._tiling import RopeTiling
from lowering.tile import pl, run_kernel
from lowering.tolerances import PRESETS
from lowering.trace import trace

MODEL = "v4.qkv_proj_rope"


def _region(name, batch=3, seq=3, **make):
    cfg = dsref.config("v4-tiny")
    ins = dsref.make_inputs(MODEL, cfg, batch=batch, seq=seq, seed=0, **make)
    region = next(r for r in trace(MODEL, cfg, ins).regions if r.name == name)
    shapes = {n: np.shape(a) for n, a in {**region.inputs, **region.outputs}.items()}
    return cfg, region, shapes


def _run(fn, region, tiling):
    outs = {n: (a.shape, a.dtype) for n, a in region.outputs.items()}
    return run_kernel(fn, inputs=dict(region.inputs), outputs=outs,
                      kwargs={"tiling": tiling}, name=region.name)


def q_head_rms_rope_shared_temps(qf, rope_cos, rope_sin, q, *, tiling):
    """PR #332 as written: the rotated halves' temporaries are created inside pl.parallel(H)
    without a head dimension — one GM buffer shared by every head."""
    t = tiling
    tokens, heads, hd = q.shape
    q_flat = pl.reshape(q, [tokens, heads * hd])
    even_select, odd_select = rope_selects(t.rope_chunk)
    for h in pl.parallel(heads):
        q_rot_even_bf16 = pl.create_tensor([tokens, t.rope // 2], dtype=pl.BF16)
        q_rot_odd_bf16 = pl.create_tensor([tokens, t.rope // 2], dtype=pl.BF16)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_rms_rope"):
            for t0, rows in t_tiles(tokens, t.tiles, t.t_tile):
                norm_rope_rows(qf, None, rope_cos, rope_sin, q_flat, q_rot_even_bf16,
                               q_rot_odd_bf16, t0=t0, rows=rows, c0=h * hd, tmp_col=0, t=t)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope_reassemble"):
            reassemble(q_rot_even_bf16, q_rot_odd_bf16, even_select, odd_select, q_flat,
                       tokens=tokens, tmp_col=0, c0=h * hd + t.nope, t=t)


def q_head_rms_rope_dead_write(qf, rope_cos, rope_sin, q, *, tiling):
    """The production kernel that also writes the rotated q back into a local buffer nothing
    reads (PR #134's q_rope wrote into its q buffer after the last read)."""
    t = tiling
    tokens, heads, hd = q.shape
    half = t.rope // 2
    q_flat = pl.reshape(q, [tokens, heads * hd])
    q_local = pl.create_tensor([tokens, heads * hd], dtype=pl.BF16)
    even_select, odd_select = rope_selects(t.rope_chunk)
    q_rot_even = pl.create_tensor([tokens, heads * half], dtype=pl.BF16)
    q_rot_odd = pl.create_tensor([tokens, heads * half], dtype=pl.BF16)
    for h in pl.parallel(heads):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_rms_rope"):
            for t0, rows in t_tiles(tokens, t.tiles, t.t_tile):
                norm_rope_rows(qf, None, rope_cos, rope_sin, q_flat, q_rot_even, q_rot_odd,
                               t0=t0, rows=rows, c0=h * hd, tmp_col=h * half, t=t)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope_reassemble"):
            for dst in (q_flat, q_local):
                reassemble(q_rot_even, q_rot_odd, even_select, odd_select, dst, tokens=tokens,
                           tmp_col=h * half, c0=h * hd + t.nope, t=t)


class PR332Tiling(RopeTiling):
    """``T_TILE = T // RMS_T_TILES`` without PR #332 review's guard (no coverage check)."""

    def __post_init__(self) -> None:
        pass


def test_per_head_temporaries_without_a_head_dim_race_across_heads():
    cfg, region, shapes = _region("q_head_rms_rope")
    tiling = q_kernel.make_tiling(cfg, shapes)
    run = _run(q_head_rms_rope_shared_temps, region, tiling)
    races = run.by_check("race")
    assert {f.tensor for f in races} == {"q_rot_even_bf16", "q_rot_odd_bf16"}
    f = next(f for f in races if f.tensor == "q_rot_even_bf16")
    assert f.severity == "fail" and f.kernel == "q_head_rms_rope"
    assert re.search(r"race on tensor 'q_rot_even_bf16' in pl\.parallel loop 'h' .*iteration "
                     r"h=0 writes q_rot_even_bf16\[0:9, 0:16\] in scope 'q_head_rms_rope' and "
                     r"iteration h=1 writes", f.message), f.message
    assert _run(q_kernel.q_head_rms_rope, region, tiling).ok  # control: head-major temps


def test_t_tile_of_half_t_drops_the_last_row_for_odd_t():
    cfg, region, shapes = _region("q_head_rms_rope")  # T = 9
    good = q_kernel.make_tiling(cfg, shapes)
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    tokens = shapes["qf"][0]
    broken = PR332Tiling(**{**fields, "tiles": 2, "t_tile": tokens // 2})
    run = _run(q_kernel.q_head_rms_rope, region, broken)
    cov = run.by_check("coverage")
    assert len(cov) == 1 and cov[0].severity == "fail" and cov[0].tensor == "q"
    assert cov[0].message == ("kernel 'q_head_rms_rope': output 'q' [9, 4, 160] has unwritten "
                              "elements: rows 8..8 × cols 0..127, 160..287, 320..447, 480..607 "
                              "(512 elements)")
    good2 = dataclasses.replace(good, tiles=2, t_tile=5)  # ceil(T / 2): the last tile shorter
    assert _run(q_kernel.q_head_rms_rope, region, good2).ok


def test_rotated_q_written_into_an_unread_local_buffer_is_a_dead_write():
    cfg, region, shapes = _region("q_head_rms_rope")
    tiling = q_kernel.make_tiling(cfg, shapes)
    run = _run(q_head_rms_rope_dead_write, region, tiling)
    dead = run.by_check("dead_write")
    assert run.ok and len(dead) == 1 and dead[0].severity == "warning"
    assert dead[0].message == (
        "kernel 'q_head_rms_rope': kernel-internal tensor 'q_local' [9, 640] has writes never "
        "read: rows 0..8 × cols 128..159, 288..319, 448..479, 608..639 (1152 elements)")
    assert not _run(q_kernel.q_head_rms_rope, region, tiling).findings


def test_rms_scopes_without_t_tiling_exceed_the_a2a3_budget():
    for stage, kib in (("q_head_rms_rope", 220.5), ("kv_rms_rope", 205.1)):
        run = flash_run(stage, tiles=1)
        fails = run.by_check("budget")
        assert len(fails) == 1 and fails[0].scope == stage and fails[0].severity == "fail"
        assert re.match(rf"kernel '{stage}', scope '{stage}'(, h=0)?: Vec needs \d+ B "
                        rf"\({kib} KiB, shape model; peak model \d+ B\) > 188416 B \(184 KiB\) "
                        "on a2a3", fails[0].message), fails[0].message
        assert flash_run(stage).ok


def test_default_round_cast_shows_the_tie_mismatches():
    cfg, region, shapes = _region("attn_norm", batch=2, seq=3, ties=True)
    want = region.outputs["tok"]
    tiling = attn_norm_kernel.make_tiling(cfg, shapes)
    good = compare("tok", _run(attn_norm_kernel.attn_norm, region, tiling).outputs["tok"], want,
                   PRESETS["bf16"])
    assert good.differ_ratio == 0.0
    rounded = dataclasses.replace(tiling, mode="round")  # pl.cast's default: ties away
    bad = compare("tok", _run(attn_norm_kernel.attn_norm, region, rounded).outputs["tok"], want,
                  PRESETS["bf16"])
    assert 0.3 < bad.differ_ratio < 0.7 and bad.max_ulp == 1
    assert bad.first_mismatches  # named indices of tie mismatches
