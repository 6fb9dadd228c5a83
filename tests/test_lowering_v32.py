"""V3.2 decode-front kernels on the emulator: every region mapped and passing in both modes,
and the emulator's checks catching broken copies of the real kernels."""

import dataclasses

import numpy as np
import pytest

import dsref
import lowering
from lowering.kernels import blocks
from lowering.kernels.v32 import decode_cache_write as dcw
from lowering.kernels.v32 import input_rmsnorm as irms
from lowering.kernels.v32 import q_lora_proj as qlp
from lowering.kernels.v32 import q_rope as qr
from lowering.pipeline import region_shapes, run_kernel_on, run_region
from lowering.report import FAIL, PASS
from lowering.tile import pl, run_kernel
from lowering.trace import trace

MODEL = "v32.decode_front[:decode_cache_write]"  # scope 1: the stages these kernels cover


@pytest.fixture(scope="module")
def tiny():
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(MODEL, cfg, batch=16, seed=0)
    return cfg, ins, trace(MODEL, cfg, ins)


@pytest.mark.parametrize("mode", ["isolated", "chained"])
def test_tiny_b16_passes_with_every_region_mapped(tiny, mode, backend):
    cfg, ins, _ = tiny
    rep = lowering.diff(MODEL, cfg, ins, mode=mode, backend=backend)
    assert [r.name for r in rep.regions] == list(dsref.get_model(MODEL).stages)
    assert all(r.status == PASS for r in rep.regions), rep.to_json()
    assert rep.verdict == PASS and rep.first_fail is None
    assert not [f for r in rep.regions for f in r.findings]
    outs = {(r.name, o.name): o for r in rep.regions for o in r.outputs}
    for key in (("q_rope", "q_nope_out"), ("q_rope", "q_pe_out"),
                ("decode_cache_write", "kv_cache"), ("decode_cache_write", "pe_cache")):
        assert outs[key].preset == "exact" and outs[key].differ_ratio == 0, key  # bits
    assert all(o.preset in ("exact", "bound") and o.bound_ratio <= 1 for o in outs.values())


@pytest.mark.parametrize("batch", [1, 5, 17])
def test_batch_tails_are_covered(batch, backend):
    """B not a multiple of the 16-row tile: the tail runs as M = 1 rows, nothing skipped."""
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs(MODEL, cfg, batch=batch, seed=batch)
    rep = lowering.diff(MODEL, cfg, ins, mode="chained", backend=backend)
    assert rep.verdict == PASS, rep.to_json()
    assert all(r.status == PASS for r in rep.regions)


def test_rhaz_cast_variant_is_followed_by_the_kernels(backend):
    cfg = dsref.config("v32-tiny", cast="rhaz")
    ins = dsref.make_inputs(MODEL, cfg, batch=16, seed=1, ties=True)
    rep = lowering.diff(MODEL, cfg, ins, backend=backend)
    assert rep.verdict == PASS and all(r.status == PASS for r in rep.regions)


# variant -> the regions whose kernel output must be bit-identical to the reference
VARIANTS = {
    ("rmsnorm", "hf"): ("input_rmsnorm", "q_lora_rmsnorm", "kv_rmsnorm"),
    ("variance", "mul_inv"): ("input_rmsnorm", "q_lora_rmsnorm", "kv_rmsnorm"),
    ("rope_layout", "interleaved"): ("q_rope", "decode_cache_write"),
}


@pytest.mark.parametrize("key,value", list(VARIANTS), ids=str)
def test_every_v32_variant_is_followed_by_the_kernels(key, value):
    """Each kernel follows the config's semantics: PASS everywhere, no reference fallback, and
    the regions the variant moves bit-identical to the variant's reference."""
    cfg = dsref.config("v32-tiny", **{key: value})
    ins = dsref.make_inputs(MODEL, cfg, batch=16, seed=3, tables="adversarial")
    rep = lowering.diff(MODEL, cfg, ins)
    assert rep.verdict == PASS and all(r.status == PASS for r in rep.regions), rep.to_json()
    for name in VARIANTS[(key, value)]:
        if name.endswith("rmsnorm"):  # Σx² in 512-wide fp32 chunks: another order than the
            # exact sum, so a bf16 output may sit 1 ulp off, inside the bound (never more)
            assert all(o.max_ulp <= 1 for o in rep.region(name).outputs), name
            continue
        assert all(o.differ_ratio == 0.0 for o in rep.region(name).outputs), name
    if key == "variance":
        return  # sum·(1/N) vs sum/N: a 1-ulp fp32 move that bf16 rounding hides at these dims
    default = lowering.diff(MODEL, dsref.config("v32-tiny"), ins, kernel_cfg=cfg)
    moved = [n for n in VARIANTS[(key, value)]
             if any(o.differ_ratio > 0 for o in default.region(n).outputs)]
    assert moved  # the variant's kernels differ from the default semantics on these inputs


def test_wrong_rounding_mode_shows_as_tie_mismatches(tiny):
    """A kernel casting with PyPTO's default ``round`` (ties away) instead of ``rint``."""
    cfg, _, _ = tiny
    ins = dsref.make_inputs(MODEL, cfg, batch=16, seed=2, ties=True)
    region = trace(MODEL, cfg, ins).region("input_rmsnorm")
    t = irms.make_tiling(cfg, {"hidden_states": ins["hidden_states"].shape})
    run = run_kernel(irms.input_rmsnorm, inputs=region.inputs,
                     outputs={"normed": (region.outputs["normed"].shape, pl.BF16)},
                     kwargs={"tiling": dataclasses.replace(t, mode="round")})
    got, want = run.outputs["normed"], region.outputs["normed"]
    moved = got.astype(np.float32) != want.astype(np.float32)
    assert moved.mean() > 0.3  # every tie went away from zero
    up = np.abs(got.astype(np.float32)[moved]) > np.abs(want.astype(np.float32)[moved])
    assert up.all()


# ---- broken copies of the real kernels, each caught by its check ----------------------------


def _region_run(tiny, name, kernel, **tiling_changes):
    cfg, _, tr = tiny
    region = tr.region(name)
    k = lowering.kernel_for(MODEL, name)
    tiling = dataclasses.replace(k.tiling(cfg, region_shapes(region)), **tiling_changes)
    return run_kernel_on(k, cfg, region, region.inputs, tiling, fn=kernel)


def test_skipped_tail_is_a_coverage_fail(tiny):
    def input_rmsnorm(hidden_states, input_rms_weight, normed, *, tiling):
        t = tiling
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="input_rmsnorm"):
            for r0 in pl.parallel(0, hidden_states.shape[0] - 1, t.batch_tile):  # drops a row
                rows = min(t.batch_tile, hidden_states.shape[0] - 1 - r0)
                blocks.rms_norm_rows(hidden_states, input_rms_weight, normed, r0=r0, rows=rows,
                                     c0=0, n=t.n, k=t.k, eps=t.eps, mode=t.mode)

    run = _region_run(tiny, "input_rmsnorm", input_rmsnorm)
    (f,) = run.by_check("coverage")
    assert f.severity == "fail" and f.tensor == "normed" and "rows 15..15" in f.message


def test_cross_iteration_write_is_a_race(tiny):
    def q_lora_proj(normed, wq_a, qr_raw, *, tiling):
        t = tiling
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_lora_proj"):
            for n0 in pl.parallel(0, qr_raw.shape[1], t.n_chunk):
                # every chunk also writes its neighbour's first column
                n = min(t.n_chunk + 1, qr_raw.shape[1] - n0)
                blocks.project_block(normed, wq_a, qr_raw, r0=0, rows=16, n0=n0, n=n, k=t.k,
                                     mode=t.mode)

    run = _region_run(tiny, "q_lora_proj", q_lora_proj)
    races = run.by_check("race")
    assert races and races[0].tensor == "qr_raw" and races[0].severity == "fail"
    assert "n0=0" in races[0].message and "n0=64" in races[0].message


def test_over_budget_tile_is_a_budget_fail(tiny):
    """The whole 1536-wide row block at once instead of 512-wide chunks: [16, 1536] fp32 tiles
    (96 KiB each, plus the row_sum scratch) overflow a2a3's 184 KiB of Vec."""
    run = _region_run(tiny, "input_rmsnorm", irms.input_rmsnorm, k=1536)
    (f,) = run.by_check("budget")
    assert f.severity == "fail" and f.scope == "input_rmsnorm" and "Vec needs" in f.message
    assert "> 188416 B (184 KiB) on a2a3" in f.message
    assert _region_run(tiny, "input_rmsnorm", irms.input_rmsnorm).by_check("budget") == []


def test_unwritten_output_is_a_coverage_fail(tiny):
    def q_rope(q, seq_lens, rope_cos, rope_sin, q_nope_out, q_pe_out, *, tiling):
        qr.q_rope(q, seq_lens, rope_cos, rope_sin, q_nope_out, pl.create_tensor(
            list(q_pe_out.shape), pl.BF16), tiling=tiling)  # rotated q goes to a scratch buffer

    run = _region_run(tiny, "q_rope", q_rope)
    msgs = [f.message for f in run.by_check("coverage")]
    assert any("output 'q_pe_out'" in m and "unwritten" in m for m in msgs)


def test_stray_cache_row_is_a_coverage_fail(tiny):
    def decode_cache_write(kv_normed, kv_a_out, seq_lens, rope_cos, rope_sin, kv_cache, pe_cache,
                           *, tiling):
        dcw.decode_cache_write(kv_normed, kv_a_out, seq_lens, rope_cos, rope_sin, kv_cache,
                               pe_cache, tiling=tiling)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="stray"):
            kv_cache[3:4, :] = kv_normed[0:1, :]  # row 3 belongs to no batch entry's token

    cfg, ins, _ = tiny
    assert 3 not in set(np.arange(16) * cfg.max_seq + ins["seq_lens"] - 1)
    run = _region_run(tiny, "decode_cache_write", decode_cache_write)
    msgs = [f.message for f in run.by_check("coverage")]
    assert any("'kv_cache'" in m and "rows 3..3" in m for m in msgs), msgs


def test_clean_kernels_have_no_findings(tiny):
    for name, fn in (("input_rmsnorm", irms.input_rmsnorm), ("q_lora_proj", qlp.q_lora_proj),
                     ("q_rope", qr.q_rope), ("decode_cache_write", dcw.decode_cache_write)):
        run = _region_run(tiny, name, fn)
        assert run.findings == [], (name, run.findings)


def test_run_region_judges_the_kernel_on_the_inputs_it_was_given(tiny, monkeypatch):
    """Other weights: the reference stage runs on them too, so the (correct) kernel passes; a
    kernel that truncates instead of rounding fails, naming the output and the elements."""
    from lowering.kernels.v32 import kv_a_proj as kvp

    cfg, _, tr = tiny
    region = tr.region("kv_a_proj")
    w = region.inputs["wkv_a"]
    other = dict(region.inputs, wkv_a=(w.astype(np.float32) * 1.1).astype(w.dtype))
    rep, out = run_region(MODEL, cfg, region, other)
    assert rep.status == PASS and rep.outputs[0].preset == "bound"
    assert (out["kv_a_out"].view("u2") != region.outputs["kv_a_out"].view("u2")).mean() > 0.5
    real = kvp.make_tiling
    monkeypatch.setattr(kvp, "make_tiling", lambda c, s: dataclasses.replace(real(c, s),
                                                                              mode="trunc"))
    rep, _ = run_region(MODEL, cfg, region, other)
    o = rep.outputs[0]
    assert rep.status == FAIL and not o.ok and "outside the bound" in o.message
    assert o.outside > 0 and len(o.first_mismatches) == 8
