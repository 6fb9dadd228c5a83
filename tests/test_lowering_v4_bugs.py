"""The checks catch the bugs the seed reviews found (``lowering.bugs``): each test runs the broken
kernel and asserts the exact finding; the production kernel under the same conditions (the
control) is clean."""

import re

from lowering.bugs import BUGS, flash_rms_run


def test_per_head_temporaries_without_a_head_dim_race_across_heads():
    h = BUGS["race"].hunt()
    assert {f.tensor for f in h.findings} == {"q_rot_even_bf16", "q_rot_odd_bf16"}
    f = next(f for f in h.findings if f.tensor == "q_rot_even_bf16")
    assert f.severity == "fail" and f.kernel == "q_head_rms_rope"
    assert re.search(r"race on tensor 'q_rot_even_bf16' in pl\.parallel loop 'h' .*iteration "
                     r"h=0 writes q_rot_even_bf16\[0:9, 0:16\] in scope 'q_head_rms_rope' and "
                     r"iteration h=1 writes", f.message), f.message
    assert h.control.ok and not h.control.findings  # head-major temporaries


def test_t_tile_of_half_t_drops_the_last_row_for_odd_t():
    h = BUGS["odd_tail"].hunt()  # T = 9
    (f,) = h.findings
    assert f.severity == "fail" and f.tensor == "q"
    assert f.message == ("kernel 'q_head_rms_rope': output 'q' [9, 4, 160] has unwritten "
                         "elements: rows 8..8 × cols 0..127, 160..287, 320..447, 480..607 "
                         "(512 elements)")
    assert h.control.ok and not h.control.findings  # ceil(T / 2): the last tile shorter


def test_rotated_q_written_into_an_unread_local_buffer_is_a_dead_write():
    h = BUGS["dead_write"].hunt()  # PR #134's q_rope, V3.2
    (f,) = h.findings
    assert h.broken.ok and f.severity == "warning" and f.tensor == "q_proj_out"
    assert f.message == (
        "kernel 'q_rope': kernel-internal tensor 'q_proj_out' [16, 384] has writes never read: "
        "rows 0..15 × cols 64..95, 160..191, 256..287, 352..383 (2048 elements)")
    assert not h.control.findings
    assert (h.broken.outputs["q_pe_out"].view("u2") == h.control.outputs["q_pe_out"].view("u2")).all()


def test_rms_scopes_without_t_tiling_exceed_the_a2a3_budget():
    for stage, kib in (("q_head_rms_rope", 220.5), ("kv_rms_rope", 205.1)):
        run = flash_rms_run(stage, tiles=1)
        fails = run.by_check("budget")
        assert len(fails) == 1 and fails[0].scope == stage and fails[0].severity == "fail"
        assert re.match(rf"kernel '{stage}', scope '{stage}'(, h=0)?: Vec needs \d+ B "
                        rf"\({kib} KiB, shape model; peak model \d+ B\) > 188416 B \(184 KiB\) "
                        "on a2a3", fails[0].message), fails[0].message
        assert flash_rms_run(stage).ok
    h = BUGS["budget"].hunt()
    assert h.findings and h.control.ok
    assert h.verdict.status == "FAIL" and all(o.ok for o in h.verdict.outputs)  # budget only


def test_default_round_cast_shows_the_tie_mismatches():
    h = BUGS["round_cast"].hunt()
    assert h.verdict.status == "FAIL" and not h.diff.ok and h.diff.preset == "bound"
    assert h.diff.ratio_ok  # pypto-lib's bf16 ratio preset alone would pass it
    assert 0.3 < h.diff.differ_ratio < 0.7 and h.diff.max_ulp == 1
    assert h.diff.first_mismatches  # named indices of tie mismatches
    control = h.control.outputs["tok"].view("u2")
    assert (control != h.broken.outputs["tok"].view("u2")).mean() == h.diff.differ_ratio
