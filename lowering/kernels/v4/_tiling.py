"""PR #332 tile sizes shared by the V4 kernels, derived from the config and the token count T.

Every tiling covers any T: row tiles are ``ceil(T / tiles)`` rows with a shorter last tile
(the PR #332 kernel's ``T_TILE = T // 2`` dropped the last row for odd T), and cube M tiles
are multiples of 16 with M = 1 tail rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode
from lowering.registry import Unsupported

NORM_T_MAX = 128  # rows per full-row RMS tile (attn_norm, qr_rms, qr_quant): PR #332's T = 128
CUBE_M_MAX = 128  # cube M tile: the whole T = 128 of the PR #332 decode batch
Q_LORA_CHUNK = 32  # qr projection output columns per accumulator / qr_rms column chunk
Q_PROJ_CHUNK = 128  # int8 q projection K chunk
Q_PROJ_OUT_CHUNK = 128  # int8 q projection output block (one wq_b_scale row in PR #332)
HEAD_CHUNK = 64  # per-head RMS column chunk ([64, 64] fp32 = 16 KiB at T_TILE = 64)
KV_CHUNK = 32  # kv projection output columns / kv_rms column chunk
ROPE_CHUNK = 32  # re-interleave output columns per select matmul (ROPE_CHUNK / 2 pair columns)
RMS_ROWS_MAX = 64  # per-head / kv RMS+RoPE scope: rows per in-core T tile (budget rule below)


def require(cfg, **wanted) -> None:
    """Raise :class:`Unsupported` when ``cfg`` asks for a variant this kernel does not follow."""
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise Unsupported(f"{key}={getattr(cfg, key)!r} (this kernel follows {key}={value!r})")


def divisor_chunk(n: int, size: int, what: str) -> int:
    """The largest of ``size, size/2, …, 16`` dividing ``n`` (tiny dims keep the structure)."""
    c = size
    while c >= 16:
        if n % c == 0:
            return c
        c //= 2
    raise ValueError(f"{what}: {n} has no chunk in {size}..16 dividing it")


def d_chunk(tokens: int) -> int:
    """PR #332's attn_norm / projection K chunk: narrower for larger T (Vec / L0A budget)."""
    return 128 if tokens >= 128 else (256 if tokens >= 64 else 512)


def quant_chunk(tokens: int) -> int:
    """PR #332's qr_quant column chunk."""
    return 32 if tokens >= 128 else (128 if tokens >= 64 else 256)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, kw_only=True)
class RowTiles:
    """In-core T tiling: ``tiles`` sequential tiles of ``t_tile`` rows, the last one shorter;
    together they must cover exactly ``tokens`` rows."""

    tokens: int  # T
    tiles: int
    t_tile: int

    def __post_init__(self) -> None:
        if self.tiles < 1 or self.t_tile < 1:
            raise ValueError(f"T tiling: {self.tiles} tiles of {self.t_tile} rows")
        if self.tiles * self.t_tile < self.tokens or (self.tiles - 1) * self.t_tile >= self.tokens:
            raise ValueError(f"T tiling: {self.tiles} tiles of {self.t_tile} rows do not cover "
                             f"T = {self.tokens} exactly (the last tile must hold 1..{self.t_tile} rows)")


def row_tiles(tokens: int, tiles: int) -> dict:
    """Fields of a :class:`RowTiles` with ``tiles`` tiles of ``ceil(T / tiles)`` rows."""
    tiles = max(1, min(tiles, tokens))
    t_tile = ceil_div(tokens, tiles)
    return {"tokens": tokens, "tiles": ceil_div(tokens, t_tile), "t_tile": t_tile}


@dataclass(frozen=True, kw_only=True)
class NormTiling(RowTiles):
    """Row RMSNorm / quant scopes over ``n`` columns in ``chunk``-wide column chunks."""

    n: int
    chunk: int
    eps: float
    variance: str  # "mean": Σ/N (pl.div); "mul_inv": Σ·f32(1/N), PR #332's form
    mode: str  # pl.cast mode of the bf16 outputs
    scale_form: str = "div"  # qr_quant's sq: "div" 127 / amax | "mul_recip" 127 · (1/amax)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n % self.chunk:
            raise ValueError(f"RMS: chunk {self.chunk} does not divide {self.n}")


def norm_tiling(cfg, tokens: int, n: int, chunk: int) -> NormTiling:
    return NormTiling(**row_tiles(tokens, ceil_div(tokens, NORM_T_MAX)), n=n, chunk=chunk,
                      eps=cfg.eps, variance=cfg.variance, mode=cast_mode(cfg.cast))


@dataclass(frozen=True, kw_only=True)
class ProjTiling:
    """``y[T, N] = x[T, K] @ w[K, N]``: N in ``n_chunk`` accumulators (parallel), K in ``k``
    chunks (``pl.pipeline(stage=2)``), M in cube tiles of up to ``m`` rows."""

    m: int
    n_chunk: int
    k: int
    round_mode: str | None = None  # proj_out="bf16": the fp32 result rounded to bf16 (this mode)

    def __post_init__(self) -> None:
        if self.m % 16:
            raise ValueError(f"projection: cube M tile {self.m} is not a multiple of 16")


def proj_tiling(tokens: int, k: int, n: int, n_chunk: int, k_chunk: int, what: str,
                cfg=None) -> ProjTiling:
    """``cfg`` (the fp32-output projections): ``proj_out="bf16"`` sets ``round_mode``."""
    round_mode = cast_mode(cfg.cast) if cfg is not None and cfg.proj_out == "bf16" else None
    return ProjTiling(m=CUBE_M_MAX, n_chunk=divisor_chunk(n, n_chunk, f"{what} N"),
                      k=divisor_chunk(k, k_chunk, f"{what} K"), round_mode=round_mode)


@dataclass(frozen=True, kw_only=True)
class RopeTiling(RowTiles):
    """Fused RMS + RoPE scopes (``q_head_rms_rope``, ``kv_rms_rope``).

    ``tiles`` is PR #332's ``RMS_T_TILES``: chosen so that a tile holds at most
    ``RMS_ROWS_MAX`` = 64 rows, which keeps the per-head scope at ≈110 KiB of Vec at FLASH
    dims (one 128-row tile needs ≈217 KiB, over a2a3's 184 usable KiB).
    """

    head_dim: int  # HD (normalised over)
    nope: int
    rope: int
    chunk: int  # RMS column chunk
    eps: float
    variance: str  # "mean": Σ/HD (pl.div); "mul_inv": Σ·f32(1/HD), PR #332's form
    mode: str  # pl.cast mode of the bf16 outputs
    preround: bool  # rope_preround: bf16-round n's rope part before rotating
    table: str  # rope_table: "pair" (pair i reads column i) | "element" (element j, column j)
    rope_chunk: int  # re-interleave output columns per select matmul
    m: int  # cube M tile of the re-interleave

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_dim % self.chunk or self.nope % self.chunk:
            raise ValueError(f"RMS+RoPE: chunk {self.chunk} does not divide HD {self.head_dim} "
                             f"and NOPE {self.nope}")
        if self.rope % self.rope_chunk or self.rope_chunk % 2:
            raise ValueError(f"RoPE: chunk {self.rope_chunk} does not divide {self.rope}")


def rope_tiling(cfg, tokens: int, chunk: int) -> RopeTiling:
    return RopeTiling(**row_tiles(tokens, ceil_div(tokens, RMS_ROWS_MAX)),
                      head_dim=cfg.head_dim, nope=cfg.nope, rope=cfg.rope,
                      chunk=divisor_chunk(math.gcd(cfg.nope, cfg.head_dim), chunk, "RMS chunk"),
                      eps=cfg.eps, variance=cfg.variance, mode=cast_mode(cfg.cast),
                      preround=cfg.rope_preround,
                      table=cfg.rope_table, rope_chunk=divisor_chunk(cfg.rope, ROPE_CHUNK, "rope"),
                      m=CUBE_M_MAX)
