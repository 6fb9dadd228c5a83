"""PR #134 tile sizes shared by the V3.2 kernels, derived from the config and checked."""

from __future__ import annotations

from dataclasses import dataclass

from lowering.kernels.blocks import cast_mode
from lowering.registry import Unsupported

BATCH_TILE = 16  # cube M tile: 16 rows (tails go one row at a time)
RMSNORM_K = 512  # RMSNorm reduction chunk: [16, 512] fp32 = 32 KiB of Vec per operand
PROJ_K = 512  # projection K chunk: a [512, 64] bf16 weight tile is exactly L0B's 64 KiB
OUT_CHUNK = 64  # projection output columns per accumulator (LoRA / Q / KV chunks)


def chunk(n: int, size: int, what: str) -> int:
    """``size`` if it divides ``n``; a smaller dim is taken whole."""
    if n <= size:
        return n
    if n % size:
        raise ValueError(f"{what}: {n} is not a multiple of the {size}-wide chunk")
    return size


def require(cfg, **wanted) -> None:
    """Raise :class:`Unsupported` when ``cfg`` asks for a variant this kernel does not follow."""
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise Unsupported(f"{key}={getattr(cfg, key)!r} (this kernel follows {key}={value!r})")


@dataclass(frozen=True, kw_only=True)
class RmsNormTiling:
    """The V3.2 RMSNorm kernels' tiling."""

    batch_tile: int  # rows per block (blocks are independent: pl.parallel)
    k: int  # reduction chunk over the normalised dim
    n: int  # normalised dim (D, QL or KL)
    eps: float
    mode: str  # pl.cast mode of the bf16 output
    hf: bool = False  # rmsnorm="hf": HF's two-rounding form
    variance: str = "mean"  # "mean": Σx² / N (pl.div); "mul_inv": Σx² · f32(1/N), PR #134's form
    round_input: bool = False  # q_norm_input="fp32": variance of the fp32 x, normalise bf16(x)

    def __post_init__(self) -> None:
        if self.n % self.k:
            raise ValueError(f"RMSNorm: chunk {self.k} does not divide {self.n}")


def rms_norm_tiling(cfg, n: int, what: str, round_input: bool = False) -> RmsNormTiling:
    return RmsNormTiling(batch_tile=BATCH_TILE, k=chunk(n, RMSNORM_K, what), n=n, eps=cfg.eps,
                         mode=cast_mode(cfg.cast), hf=cfg.rmsnorm == "hf",
                         variance=cfg.variance, round_input=round_input)


@dataclass(frozen=True, kw_only=True)
class ProjTiling:
    """The V3.2 projection kernels' tiling: ``y[B, N] = bf16(x[B, K] @ w[K, N])``."""

    batch_tile: int  # cube M
    n_chunk: int  # output columns per accumulator
    k: int  # K chunk per matmul / matmul_acc call
    mode: str | None  # pl.cast mode of the bf16 output; None: stored fp32 (q_norm_input="fp32")

    def __post_init__(self) -> None:
        if self.batch_tile % 16:
            raise ValueError(f"projection: batch tile {self.batch_tile} is not a multiple of 16")


def proj_tiling(cfg, k: int, n: int, what: str) -> ProjTiling:
    return ProjTiling(batch_tile=BATCH_TILE, n_chunk=chunk(n, OUT_CHUNK, f"{what} N"),
                      k=chunk(k, PROJ_K, f"{what} K"), mode=cast_mode(cfg.cast))


@dataclass(frozen=True, kw_only=True)
class RopeTiling:
    """The V3.2 per-batch RoPE kernels' tiling (one batch entry per parallel iteration)."""

    heads: int
    nope: int
    rope: int
    kv_lora: int
    max_seq: int  # cache rows per batch entry
    mode: str  # pl.cast mode of the bf16 outputs
    layout: str = "half"  # rope_layout: "half" (PR #134) | "interleaved" (official ds32)

    def __post_init__(self) -> None:
        if self.rope % 2:
            raise ValueError(f"RoPE: rope dim {self.rope} is odd")


def rope_tiling(cfg) -> RopeTiling:
    return RopeTiling(heads=cfg.heads, nope=cfg.nope, rope=cfg.rope, kv_lora=cfg.kv_lora,
                      max_seq=cfg.max_seq, mode=cast_mode(cfg.cast), layout=cfg.rope_layout)


@dataclass(frozen=True, kw_only=True)
class HeadProjTiling:
    """The per-head projections of scope 4 (``q_nope_latent``, ``v_proj``): for every head,
    ``[rows, K] @ w[h] [K, N]`` in ``n_chunk``-wide output tiles, the whole K per matmul."""

    batch_tile: int  # cube M
    heads: int  # H
    k: int  # K: the whole reduction in one matmul per head and output tile
    n: int  # N: output columns per head
    n_chunk: int  # output columns per matmul (divides N)
    mode: str  # pl.cast mode of the bf16 rounding
    round_bf16: bool = False  # an fp32 output rounded to bf16 first (q_latent="bf16")

    def __post_init__(self) -> None:
        if self.batch_tile % 16 or self.n % self.n_chunk:
            raise ValueError(f"per-head projection: batch tile {self.batch_tile} or output tile "
                             f"{self.n_chunk} (N {self.n}) not legal")
