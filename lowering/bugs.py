"""The bugs the seed kernels' code reviews found, as runnable, deliberately broken kernels.

Each :class:`Bug` rebuilds the broken pattern from the production kernels' blocks, runs it on
the emulator next to the production kernel (the control, under the same conditions) and
returns what a user sees: the findings of the check that catches it, the diff it causes, and
the region verdict ``lowering diff`` would give the broken kernel (``Hunt.verdict``: the default
exact-or-bounded judgement plus the emulator checks). The tests assert the exact findings and
the verdicts; ``notebooks/03_bug_hunt.ipynb`` shows them. Nothing here is a production kernel.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dsref
from lowering.diff import OutputDiff
from lowering.kernels import blocks
from lowering.kernels.blocks import rope_selects, t_tiles
from lowering.kernels.v4 import attn_norm as v4_attn_norm
from lowering.kernels.v4 import q_head_rms_rope as v4_q_head
from lowering.kernels.v4._blocks import norm_rope_rows, reassemble
from lowering.kernels.v4._tiling import RopeTiling
from lowering.kernels.v32 import q_rope as v32_q_rope
from lowering.pipeline import judge_run, region_shapes, run_kernel_on
from lowering.registry import kernel_for
from lowering.report import RegionReport
from lowering.tile import Finding, KernelRun, pl
from lowering.trace import Region, trace

V32, V4 = "v32.decode_front", "v4.qkv_proj_rope"


@dataclass
class Hunt:
    """One bug run: the broken kernel's run, the control's, and what shows the bug."""

    bug: Bug
    broken: KernelRun
    control: KernelRun
    findings: list[Finding] = field(default_factory=list)  # broken run, the bug's check
    diff: OutputDiff | None = None  # for bugs only a diff can show
    verdict: RegionReport | None = None  # the broken run as `lowering diff` judges the region


@dataclass(frozen=True)
class Bug:
    name: str
    review: str  # where it was found
    what: str  # the pattern, one line
    check: str  # the emulator check that catches it ('diff' for a numerics bug)
    hunt: Callable[[], Hunt] = field(repr=False)


# ---- kernels with the bugs -----------------------------------------------------------------


def q_head_rms_rope_shared_temps(qf, rope_cos, rope_sin, q, *, tiling):
    """The race the PR #332 review warned of: the rotated halves' temporaries have no head
    dimension and are created once, before ``pl.parallel(H)`` — one GM buffer every head
    writes and reads. (Created inside the loop body, as PR #332 does, they are not shared:
    pypto allocates a body's tensors afresh for each iteration.)"""
    t = tiling
    tokens, heads, hd = q.shape
    q_flat = pl.reshape(q, [tokens, heads * hd])
    even_select, odd_select = rope_selects(t.rope_chunk)
    q_rot_even_bf16 = pl.create_tensor([tokens, t.rope // 2], dtype=pl.BF16)
    q_rot_odd_bf16 = pl.create_tensor([tokens, t.rope // 2], dtype=pl.BF16)
    for h in pl.parallel(heads):
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_head_rms_rope"):
            for t0, rows in t_tiles(tokens, t.tiles, t.t_tile):
                norm_rope_rows(qf, None, rope_cos, rope_sin, q_flat, q_rot_even_bf16,
                               q_rot_odd_bf16, t0=t0, rows=rows, c0=h * hd, tmp_col=0, t=t)
        with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope_reassemble"):
            reassemble(q_rot_even_bf16, q_rot_odd_bf16, even_select, odd_select, q_flat,
                       tokens=tokens, tmp_col=0, c0=h * hd + t.nope, t=t)


class UnguardedTiling(RopeTiling):
    """PR #332's ``T_TILE = T // RMS_T_TILES`` without the guard its review asked for."""

    def __post_init__(self) -> None:
        pass


def q_rope_dead_write(q, seq_lens, rope_cos, rope_sin, q_nope_out, q_pe_out, *, tiling):
    """PR #134's q_rope: the rotated q is also written back into the kernel's local q buffer,
    which nothing reads afterwards."""
    t = tiling
    q_proj_out = pl.create_tensor(list(q.shape), pl.BF16)  # the kernel's local q buffer
    hd, half = t.nope + t.rope, t.rope // 2
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="q_rope"):
        for b in pl.parallel(0, q.shape[0], 1):
            pos = pl.read(seq_lens, [b]) - 1
            table = blocks.rope_rows(rope_cos, rope_sin, pos, half)
            for h in pl.range(t.heads):
                c = h * hd + t.nope
                q_nope_out[b:b + 1, h * t.nope:(h + 1) * t.nope] = q[b:b + 1, h * hd:c]
                lo, hi = blocks.rope_half(pl.cast(q[b:b + 1, c:c + half], target_type=pl.FP32),
                                          pl.cast(q[b:b + 1, c + half:c + t.rope],
                                                  target_type=pl.FP32), *table)
                lo16 = pl.cast(lo, target_type=pl.BF16, mode=t.mode)
                hi16 = pl.cast(hi, target_type=pl.BF16, mode=t.mode)
                q_proj_out[b:b + 1, c:c + half] = lo16  # dead
                q_proj_out[b:b + 1, c + half:c + t.rope] = hi16  # dead
                q_pe_out[b:b + 1, h * t.rope:h * t.rope + half] = lo16
                q_pe_out[b:b + 1, h * t.rope + half:(h + 1) * t.rope] = hi16


# ---- running them --------------------------------------------------------------------------


def tiny_region(model: str, stage: str, *, batch: int, seq: int = 1, seed: int = 0,
                **make: Any) -> tuple[Any, Region]:
    """The tiny-config region of ``stage`` with its reference values."""
    cfg = dsref.config("v32-tiny" if model == V32 else "v4-tiny")
    ins = dsref.make_inputs(model, cfg, batch=batch, seq=seq, seed=seed, **make)
    return cfg, trace(model, cfg, ins).region(stage)


def run_on(fn: Callable, model: str, cfg: Any, region: Region, tiling: Any,
           platform: str = "a2a3") -> KernelRun:
    """Run ``fn`` (a kernel with the stage's signature) on a region's reference inputs."""
    return run_kernel_on(kernel_for(model, region.name), cfg, region, region.inputs, tiling,
                         fn=fn, platform=platform)


def _tiling(model: str, cfg: Any, region: Region) -> Any:
    return kernel_for(model, region.name).tiling(cfg, region_shapes(region))


def _verdict(model: str, cfg: Any, region: Region, run: KernelRun, tiling: Any,
             local: dict | None = None) -> RegionReport:
    """The region verdict of ``lowering diff`` (default tolerance) on a run."""
    return judge_run(model, cfg, region, region.inputs, run, tiling, local=local,
                     kernel=kernel_for(model, region.name).file)


def hunt_race() -> Hunt:
    cfg, region = tiny_region(V4, "q_head_rms_rope", batch=3, seq=3)
    t = _tiling(V4, cfg, region)
    broken = run_on(q_head_rms_rope_shared_temps, V4, cfg, region, t)
    return Hunt(BUGS["race"], broken, run_on(v4_q_head.q_head_rms_rope, V4, cfg, region, t),
                broken.by_check("race"), verdict=_verdict(V4, cfg, region, broken, t))


def hunt_odd_tail() -> Hunt:
    cfg, region = tiny_region(V4, "q_head_rms_rope", batch=3, seq=3)  # T = 9
    good = _tiling(V4, cfg, region)
    tokens = region.inputs["qf"].shape[0]
    fields = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    broken_t = UnguardedTiling(**{**fields, "tiles": 2, "t_tile": tokens // 2})
    control_t = dataclasses.replace(good, tiles=2, t_tile=-(-tokens // 2))  # ceil: last shorter
    broken = run_on(v4_q_head.q_head_rms_rope, V4, cfg, region, broken_t)
    return Hunt(BUGS["odd_tail"], broken, run_on(v4_q_head.q_head_rms_rope, V4, cfg, region, control_t),
                broken.by_check("coverage"), verdict=_verdict(V4, cfg, region, broken, broken_t))


def hunt_dead_write() -> Hunt:
    cfg, region = tiny_region(V32, "q_rope", batch=16)
    t = _tiling(V32, cfg, region)
    broken = run_on(q_rope_dead_write, V32, cfg, region, t)
    return Hunt(BUGS["dead_write"], broken, run_on(v32_q_rope.q_rope, V32, cfg, region, t),
                broken.by_check("dead_write"), verdict=_verdict(V32, cfg, region, broken, t))


def flash_rms_region(stage: str, tokens: int = 128) -> Region:
    """A FLASH-dims region of an RMS stage (attn_norm, q_head_rms_rope, kv_rms_rope) with
    random values: budgets do not depend on values."""
    cfg = dsref.config("v4-flash")
    rng = np.random.default_rng(0)

    def bf(a):
        return np.asarray(a, np.float32).astype(dsref.inputs.BF16)

    rope = {"rope_cos": bf(rng.standard_normal((tokens, cfg.rope))),
            "rope_sin": bf(rng.standard_normal((tokens, cfg.rope)))}
    if stage == "q_head_rms_rope":
        qf = rng.standard_normal((tokens, cfg.heads * cfg.head_dim)).astype(np.float32)
        return Region(stage, -1, {"qf": qf, **rope},
                      {"q": np.zeros((tokens, cfg.heads, cfg.head_dim), dsref.inputs.BF16)})
    if stage == "attn_norm":
        x = bf(rng.standard_normal((tokens // 2, 2, cfg.hidden)))
        return Region(stage, -1, {"x": x, "norm_w": np.ones(cfg.hidden, np.float32)},
                      {"tok": np.zeros((tokens, cfg.hidden), dsref.inputs.BF16)})
    kv32 = rng.standard_normal((tokens, cfg.head_dim)).astype(np.float32)
    gamma = bf(1 + 0.1 * rng.standard_normal(cfg.head_dim))
    return Region(stage, -1, {"kv32": kv32, "gamma_ckv": gamma, **rope},
                  {"kv": np.zeros((tokens, cfg.head_dim), dsref.inputs.BF16)})


def flash_rms_run(stage: str, tiles: int | None = None, platform: str = "a2a3") -> KernelRun:
    """Run a production RMS kernel at FLASH dims, T = 128, with ``tiles`` in-core T tiles
    (default: the kernel's own choice)."""
    region = flash_rms_region(stage)
    cfg = dsref.config("v4-flash")
    t = _tiling(V4, cfg, region)
    if tiles is not None:
        t = dataclasses.replace(t, tiles=tiles, t_tile=-(-128 // tiles))
    return run_on(kernel_for(V4, stage).fn, V4, cfg, region, t, platform)


def hunt_budget() -> Hunt:
    broken = flash_rms_run("q_head_rms_rope", tiles=1)
    cfg, region = dsref.config("v4-flash"), flash_rms_region("q_head_rms_rope")
    t = dataclasses.replace(_tiling(V4, cfg, region), tiles=1, t_tile=128)
    (q,) = dsref.run_stage("q_head_rms_rope", cfg, *(region.inputs[n] for n in
                                                     ("qf", "rope_cos", "rope_sin")))
    return Hunt(BUGS["budget"], broken, flash_rms_run("q_head_rms_rope"), broken.by_check("budget"),
                verdict=_verdict(V4, cfg, region, broken, t, local={"q": q}))


def hunt_round_cast() -> Hunt:
    cfg, region = tiny_region(V4, "attn_norm", batch=2, seq=3, ties=True)
    t = _tiling(V4, cfg, region)
    broken_t = dataclasses.replace(t, mode="round")
    broken = run_on(v4_attn_norm.attn_norm, V4, cfg, region, broken_t)
    verdict = _verdict(V4, cfg, region, broken, broken_t)
    return Hunt(BUGS["round_cast"], broken, run_on(v4_attn_norm.attn_norm, V4, cfg, region, t),
                diff=verdict.outputs[0], verdict=verdict)


BUGS: dict[str, Bug] = {b.name: b for b in (
    Bug("race", "PR #332 review", "per-head temporaries q_rot_even_bf16 / q_rot_odd_bf16 "
        "without a head dimension, created once before pl.parallel(H)", "race", hunt_race),
    Bug("odd_tail", "PR #332 review", "T_TILE = T // 2 with odd T: the last token is never "
        "normalised or rotated", "coverage", hunt_odd_tail),
    Bug("dead_write", "PR #134 review", "rotated q written back into the local q buffer that "
        "nothing reads", "dead_write", hunt_dead_write),
    Bug("budget", "PR #332 (why it T-tiles)", "the RMS+RoPE scope without in-core T tiling at "
        "FLASH dims, T = 128: Vec over a2a3's 184 KiB", "budget", hunt_budget),
    Bug("round_cast", "PyPTO precision guide", "a bf16 cast left at pl.cast's default mode "
        "'round' (ties away) instead of 'rint'", "diff", hunt_round_cast),
)}


# ---- planted single-point bugs: the production kernels / emulator with one thing wrong -----------
#
# Each is a context manager that patches one thing for the duration of a `lowering.diff` run
# (tests/test_verdicts.py, benchmarks/verdicts.py --planted), with the region and output the
# default verdict must FAIL. `probe(cfg, batch, seq, seed)` builds the inputs the bug needs to be
# visible, where random inputs cannot show it (docs/verdicts.md, "Sensitivity").


@dataclass(frozen=True)
class Planted:
    name: str
    model: str
    what: str
    fails: dict[str, list[str]]  # region -> outputs the default verdict fails
    patch: Callable[[], Any] = field(repr=False)  # () -> context manager
    probe: Callable[..., dict] | None = field(default=None, repr=False)


class _Patches:
    """Set attributes for the duration of a ``with`` block, restoring them afterwards."""

    def __init__(self, *targets: tuple[Any, str, Any]) -> None:
        self.targets = targets
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> _Patches:
        for obj, name, value in self.targets:
            self.saved.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)
        return self

    def __exit__(self, *exc: Any) -> None:
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)


class _PlWith:
    """The ``pl`` module with ``cast`` replaced (a kernel module's view of the language)."""

    def __init__(self, cast: Callable) -> None:
        self.cast = cast

    def __getattr__(self, name: str) -> Any:
        return getattr(pl, name)


def _fp32_matmul() -> _Patches:
    from lowering.backends import numpy_backend as nb

    def matmul(self, a, b, out_dtype):
        if out_dtype == "INT32":
            return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int32)
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(nb._NATIVE[out_dtype])
    return _Patches((nb.NumpyBackend, "matmul", matmul))


def _int8_clamp_126() -> _Patches:
    from lowering.kernels.v4 import qr_quant

    def cast(x, target_type=None, mode="round", **kw):
        if target_type == pl.INT32:  # the quant pass: v·sq clamped to ±126 first
            x = pl.minimum(pl.maximum(x, -126.0), 126.0)
        return pl.cast(x, target_type=target_type, mode=mode, **kw)
    return _Patches((qr_quant, "pl", _PlWith(cast)))


def _rope_trunc() -> _Patches:
    """In the V4 RMS + RoPE blocks, every bf16 cast of a sum or difference — the rotated halves
    ``y_e = e·c − o·s``, ``y_o = e·s + o·c`` (the blocks' other sums are never cast to bf16) —
    truncates."""
    from lowering.kernels.v4 import _blocks

    rotated: weakref.WeakSet = weakref.WeakSet()

    def cast(x, target_type=None, mode="round", **kw):
        if target_type == pl.BF16 and x in rotated:
            mode = "trunc"
        return pl.cast(x, target_type=target_type, mode=mode, **kw)

    class Pl(_PlWith):
        def sub(self, a, b):
            r = pl.sub(a, b)
            rotated.add(r)
            return r

        def add(self, a, b):
            r = pl.add(a, b)
            rotated.add(r)
            return r
    return _Patches((_blocks, "pl", Pl(cast)))


def _variance_mul_inv() -> _Patches:
    from lowering.kernels.v4 import _blocks, attn_norm, qr_rms

    real = _blocks.inv_rms_rows

    def mul_inv_always(*a, **kw):
        return real(*a, **{**kw, "variance": "mul_inv"})
    return _Patches(*((m, "inv_rms_rows", mul_inv_always) for m in (_blocks, attn_norm, qr_rms)))


def _round_cast() -> _Patches:
    from lowering.kernels.v4 import attn_norm

    real = attn_norm.make_tiling
    return _Patches((attn_norm, "make_tiling",
                     lambda cfg, shapes: dataclasses.replace(real(cfg, shapes), mode="round")))


def exact_sum_probe(cfg: Any, batch: int, seq: int, seed: int = 0) -> dict:
    """V4 inputs where attn_norm's Σx² is exact in any order and its outputs are bf16 ties:
    rows of ±1024 with 9-bit tie weights, four entries per row replaced by ±2048, 0, 0, ±16
    (Σx² = D·2**20 + 256). For D = 1536, ``Σx²/D`` rounds to 2**20·(1 + 2**-23) and
    ``Σx²·f32(1/D)`` to 2**20·(1 + 2**-22): inv_rms is exactly 2**-10 under ``mean`` and one
    ulp below under ``mul_inv``, so every tie breaks the other way. (For a power-of-two D the
    two variances are equal and the bug does not exist.)"""
    if cfg.hidden != 1536:
        raise ValueError(f"exact_sum_probe: worked out for D = 1536, not {cfg.hidden}")
    ins = dsref.make_inputs(V4, cfg, batch=batch, seq=seq, seed=seed, ties=True)
    rng = np.random.default_rng(seed)
    t, d = batch * seq, cfg.hidden
    x = np.where(rng.random((t, d)) < 0.5, -1024.0, 1024.0)
    for row in x:
        p = rng.permutation(d)[:4]
        row[p] = np.sign(row[p]) * np.array([2048.0, 0.0, 0.0, 16.0])
    ins["x"] = x.reshape(batch, seq, d).astype(np.float32).astype(dsref.inputs.BF16)
    return ins


def _ties(cfg: Any, batch: int, seq: int, seed: int = 0) -> dict:
    return dsref.make_inputs(V4, cfg, batch=batch, seq=seq, seed=seed, ties=True)


PLANTED: dict[str, Planted] = {p.name: p for p in (
    Planted("fp32_matmul", V4, "the emulator's matmul accumulating in float32 (BLAS order) "
            "instead of exactly", {"qr_proj_matmul": ["qr32"], "kv_proj_matmul": ["kv32"]},
            _fp32_matmul),
    Planted("int8_clamp_126", V4, "qr_quant clamping v·sq to ±126 before the cast chain",
            {"qr_quant": ["qr"]}, _int8_clamp_126),
    Planted("rope_trunc", V4, "the rotated halves cast to bf16 by truncation",
            {"q_head_rms_rope": ["q"], "kv_rms_rope": ["kv"]}, _rope_trunc),
    Planted("variance_mul_inv", V4, "the RMS kernels always using Σx²·(1/N) where the config "
            "says variance=mean", {"attn_norm": ["tok"]}, _variance_mul_inv, exact_sum_probe),
    Planted("round_cast", V4, "attn_norm's bf16 cast left at pl.cast's default 'round'",
            {"attn_norm": ["tok"]}, _round_cast, _ties),
)}
