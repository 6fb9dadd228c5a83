"""Deterministic model inputs with pypto-lib tensor names, shapes, dtypes and realistic scales.

Same (model, config, batch, seq, seed, options) → same bits, on every platform: values come
from ``numpy.random.default_rng(seed)`` (PCG64) and are rounded with ml_dtypes.

Normal values are drawn by quantile (:data:`INPUTS_VERSION` 2): 16 random bits per element
pick one of 65536 equiprobable standard-normal quantiles, scaled and rounded once to the
tensor's dtype through a 65536-entry table — the normal to within 1/65536 in probability
(|z| ≤ 4.3), at a table lookup per element instead of a float64 draw and two conversions.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

import ml_dtypes
import numpy as np

from dsref.config import Config, V4Config, YarnRope, config
from dsref.model import base_reads, get_model
from dsref.run import InputError, aligned_empty, range_inputs

BF16 = ml_dtypes.bfloat16
TABLES = ("real", "adversarial")
#: the generator of the input bits, recorded in a golden's meta.json: 1 drew float64 normals;
#: 2 draws them by quantile (module docstring), rolls one random cache block per batch entry,
#: and draws W8 codes on a 2.6σ grid
INPUTS_VERSION = 2


def rope_freqs(rope_dim: int, p: YarnRope) -> np.ndarray:
    """Inverse frequencies ``f_i = θ^(−2i/R)`` in fp32, YaRN-corrected as ds32's
    ``precompute_freqs_cis`` does when the model's context exceeds ``original_seq_len``."""
    f32 = np.float32
    exponent = np.arange(0, rope_dim, 2, dtype=f32) / f32(rope_dim)
    # θ^e correctly rounded to fp32 (what torch computes; numpy's float32 pow is 1 ulp off
    # on 4 of V3.2's 32 frequencies)
    power = (float(p.theta) ** exponent.astype(np.float64)).astype(f32)
    freqs = f32(1.0) / power
    if not p.yarn:
        return freqs.astype(f32)
    low, high = yarn_correction_range(rope_dim, p)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rope_dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1)
    smooth = f32(1) - ramp.astype(f32)
    return (freqs / f32(p.factor) * (f32(1) - smooth) + freqs * smooth).astype(f32)


def yarn_correction_range(rope_dim: int, p: YarnRope) -> tuple[int, int]:
    """ds32 ``find_correction_range(beta_fast, beta_slow, ...)``: (low, high) clamped dims."""

    def dim(num_rotations: float) -> float:
        return (rope_dim * math.log(p.original_seq_len / (num_rotations * 2 * math.pi))
                / (2 * math.log(p.theta)))

    low = math.floor(dim(p.beta_fast))
    high = math.ceil(dim(p.beta_slow))
    return max(low, 0), min(high, rope_dim - 1)


def rope_tables(positions: np.ndarray, rope_dim: int, p: YarnRope) -> tuple[np.ndarray, np.ndarray]:
    """fp32 ``(cos, sin)`` rows for ``positions``: angle ``pos·f_i`` in fp32, cos/sin correctly
    rounded to fp32, halves duplicated ``[cos(a_0..a_{R/2-1}) | cos(a_0..a_{R/2-1})]``."""
    freqs = rope_freqs(rope_dim, p)
    angles = np.asarray(positions, dtype=np.float32)[:, None] * freqs[None, :]  # fp32 product
    cos = np.cos(angles.astype(np.float64)).astype(np.float32)
    sin = np.sin(angles.astype(np.float64)).astype(np.float32)
    return np.concatenate([cos, cos], axis=1), np.concatenate([sin, sin], axis=1)


def _bf16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(BF16)


@functools.cache
def _quantiles() -> np.ndarray:
    """The standard normal's quantiles at ``(i + 0.5) / 65536``, i = 0 .. 65535 (float64)."""
    nd = statistics.NormalDist()
    upper = np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(32768, 65536)])
    return np.concatenate([-upper[::-1], upper])


#: elements per step of :func:`_draw` (a multiple of 4; their intp copy, 2 MiB, stays in cache)
DRAW_CHUNK = 1 << 18


def _draw(rng: np.random.Generator, table: np.ndarray, shape) -> np.ndarray:
    """``table[u]`` for uint16 random bits ``u`` of ``shape`` — four per 64-bit PCG64 output,
    little-endian order — in an aligned buffer (:func:`dsref.run.aligned_empty`).

    Drawn and looked up :data:`DRAW_CHUNK` elements at a time (the same stream of outputs as
    one draw of all of them), as flat takes of unsigned ints of the table's width: numpy's take
    copies a bf16 element through the dtype's generic copy, and converts all the indices to
    intp first — for V3.2's 38M-element ``wq_b`` a 300 MB temporary in fresh memory: 0.13-0.88 s
    as one take, 0.07-0.08 s in chunks (Intel Xeon)."""
    n = math.prod(shape)
    out = aligned_empty(shape, table.dtype)
    raw = np.dtype(f"u{table.dtype.itemsize}")
    src, dst = table.view(raw), out.view(raw).reshape(-1)
    gen = rng.bit_generator
    for i in range(0, n, DRAW_CHUNK):
        m = min(DRAW_CHUNK, n - i)
        bits = gen.random_raw((m + 3) // 4).astype("<u8", copy=False).view("<u2")[:m]
        np.take(src, bits, out=dst[i:i + m], mode="clip")
    return out


def _normal(rng: np.random.Generator, shape, scale: float = 1.0, dtype=np.float32
            ) -> np.ndarray:
    """~N(0, scale²) by quantile (module docstring), each value ``scale · z`` rounded once
    from float64 to ``dtype`` (float32, or bf16 through float32)."""
    table = (_quantiles() * scale).astype(np.float32)
    if dtype is not np.float32:
        table = table.astype(dtype)
    return _draw(rng, table, shape)


def _cache(rng: np.random.Generator, batch: int, rows: int, width: int) -> np.ndarray:
    """A bf16 cache ``[batch · rows, width]`` of N(0, 1) values: one random block of ``rows``,
    rolled by a different number of rows for each batch entry (while ``batch ≤ rows``), so
    that no row holds what the same row of another entry's block holds (a read of the wrong
    entry's row shows)."""
    block = _normal(rng, (rows, width), dtype=BF16)
    shifts = rng.permutation(rows)[:batch] if batch <= rows else rng.integers(0, rows, batch)
    return _rolled(block, shifts, axis=0).reshape(len(shifts) * rows, width)


def _w8(rng: np.random.Generator, shape: tuple[int, int], std: float
        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel W8 weights ``(codes int8 [K, N], scale fp32 [N])`` for
    ``w ~ N(0, std²)``: codes are normal quantiles on a grid of 2.6σ / 127 (clipped at ±127),
    one random row of each column set to ±127 so every channel spans its range, the scales
    ``std · 2.6 / 127`` times a per-channel factor in [0.75, 1.25)."""
    table = np.clip(np.rint(_quantiles() * (127 / 2.6)), -127, 127).astype(np.int8)
    codes = _draw(rng, table, shape)
    top = rng.integers(0, shape[0], shape[1])
    codes[top, np.arange(shape[1])] = np.where(rng.random(shape[1]) < 0.5, -127, 127)
    factor = 0.75 + 0.5 * rng.random(shape[1], dtype=np.float32)
    return codes, (np.float32(std * 2.6 / 127) * factor).astype(np.float32)


def _norm_weight(rng: np.random.Generator, shape) -> np.ndarray:
    """fp32 RMSNorm weight ~ N(1, 0.1²) on the bf16 grid: checkpoints store it in bf16 and
    ds32's RMSNorm holds it as an fp32 parameter."""
    return _bf16(1 + _normal(rng, shape, 0.1)).astype(np.float32)


def _tie_weights(rng: np.random.Generator, shape) -> np.ndarray:
    """fp32 weights with 9 significant bits: ``w · ±1`` lands exactly halfway between bf16s."""
    m = rng.integers(128, 256, size=shape) * 2 + 1  # odd, 9 bits: 257..511
    return (m.astype(np.float32) / np.float32(256)).astype(np.float32)


def _tie_rows(rng: np.random.Generator, shape) -> np.ndarray:
    """±1024 entries: mean(x²) + eps rounds to 2**20, so inv_rms is exactly 2**-10."""
    return _bf16(np.where(rng.random(shape) < 0.5, -1024.0, 1024.0))


def make_inputs(
    model: str, cfg: Config | str, *, batch: int, seed: int = 0, seq: int = 1,
    tables: str = "real", ties: bool = False, seq_lens: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Inputs of ``model`` at ``cfg`` for ``batch`` (× ``seq`` for V4), keyed by tensor name.

    Weights ~ N(0, 1/fan_in) rounded to bf16; norm weights ~ N(1, 0.1²) on the bf16 grid
    (stored fp32, as checkpoints hold them in bf16); RoPE tables real (the official
    ``precompute_freqs_cis``). ``tables="adversarial"``: V3.2 tables whose halves differ
    (the hi half uses angles of a different frequency set); V4 tables with NaN in the
    never-read columns R/2...
    ``ties=True``: the first norm's inputs are built so that most of its outputs are exact bf16
    ties (±1024 rows, 9-bit weights) — for cast-mode tests.
    ``seq_lens``: V3.2's context length per entry (each in ``[1, MAX_SEQ]``) instead of the
    drawn ones; every other tensor is drawn as without it (same seed, same bits). The cost of
    sparse attention grows with ``min(TOPK, seq_len)`` per entry.
    """
    if tables not in TABLES:
        raise ValueError(f"tables: expected one of {TABLES}, got {tables!r}")
    m = get_model(model)
    if isinstance(cfg, str):
        cfg = config(cfg)
    if not isinstance(cfg, m.config_type):
        got = repr(cfg.name) if isinstance(cfg, Config) else type(cfg).__name__
        raise ValueError(f"config: {model} expects a {m.config_type.__name__} (or its name), "
                         f"got {got}")
    if batch < 1 or seq < 1:
        raise ValueError(f"batch/seq: expected >= 1, got batch={batch}, seq={seq}")
    if isinstance(cfg, V4Config) and seq > cfg.max_pos:
        raise InputError(f"seq={seq}: above {cfg.name}'s max_pos {cfg.max_pos} (the positions its "
                         "RoPE tables cover)")
    if seq_lens is not None:
        seq_lens = _check_seq_lens(cfg, batch, seq_lens)
    _fits_in_memory(get_model(m.base) if m.base else m, cfg, batch, seq)
    rng = np.random.default_rng(seed)
    if isinstance(cfg, V4Config):
        ins = _v4_inputs(cfg, rng, batch, seq, tables, ties)
    elif seq != 1:
        raise ValueError(f"seq: v32.decode_front decodes one token per entry, got seq={seq}")
    else:  # a stage range draws the whole model's inputs it reads, with the same bits
        ins = _v32_inputs(cfg, rng, batch, tables, ties, reads=set(base_reads(m)))
        if seq_lens is not None:
            ins["seq_lens"] = seq_lens
    # a stage range: the whole model's inputs carried through the stages before it
    return range_inputs(m.name, cfg, ins) if m.base else ins


def _check_seq_lens(cfg: Config, batch: int, seq_lens: Sequence[int]) -> np.ndarray:
    if isinstance(cfg, V4Config):
        raise InputError("seq_lens: V4 inputs have no per-entry context lengths")
    a = np.asarray(seq_lens)
    if a.shape != (batch,) or a.dtype.kind not in "iu":
        raise InputError(f"seq_lens: expected {batch} integers (one per entry), got "
                         f"{a.dtype.name}{list(a.shape)}")
    if ((a < 1) | (a > cfg.max_seq)).any():
        raise InputError(f"seq_lens: each must lie in [1, {cfg.max_seq}] (MAX_SEQ of {cfg.name}), "
                         f"got {a.tolist()}")
    return a.astype(np.int32)


#: a run's peak memory over its inputs' own bytes: inputs are drawn in float64 (4× a bf16
#: tensor) and every stage carries its values in float64
RUN_MEMORY_FACTOR = 4


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``MemTotal``, ``MemAvailable``, ``SwapTotal``, ...); empty
    where there is none."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                words = rest.split()
                if words and words[0].isdigit():
                    out[key] = int(words[0]) * (1024 if words[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def available_memory() -> int | None:
    """Bytes this machine can still give (``MemAvailable``), None where unknown."""
    return meminfo().get("MemAvailable")


def _fits_in_memory(m, cfg: Config, batch: int, seq: int) -> None:
    """Refuse, before any work, dims whose run cannot fit in this machine's memory."""
    avail = available_memory()
    if avail is None:
        return
    specs = m.input_specs(cfg, batch, seq)
    need = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in specs.values())
    if need * RUN_MEMORY_FACTOR > avail:
        raise InputError(f"batch={batch} seq={seq}: {m.name} at {cfg.name} has {need / 2**30:.1f} "
                         f"GiB of inputs and a run needs about {RUN_MEMORY_FACTOR}× that; this "
                         f"machine has {avail / 2**30:.1f} GiB available")


def _v32_inputs(cfg, rng, batch: int, tables: str, ties: bool, reads: set[str]
                ) -> dict[str, np.ndarray]:
    """V3.2's inputs: scope 1's first, then the sparse stages' (drawn only where ``reads``
    names one of them: a stage range within scope 1 skips 140 MB of draws at full dims)."""
    d, ql, kl, r, h = cfg.hidden, cfg.q_lora, cfg.kv_lora, cfg.rope, cfg.heads
    ins = {
        "hidden_states": _normal(rng, (batch, d), dtype=BF16),
        "input_rms_weight": _norm_weight(rng, (1, d)),
        "wq_a": _normal(rng, (d, ql), d**-0.5, BF16),
        "q_norm_weight": _norm_weight(rng, (1, ql)),
        "wq_b": _normal(rng, (ql, h * cfg.head_dim), ql**-0.5, BF16),
        "wkv_a": _normal(rng, (d, kl + r), d**-0.5, BF16),
        "kv_norm_weight": _norm_weight(rng, (1, kl)),
    }
    seq_lens = rng.integers(1, cfg.max_seq + 1, size=batch)
    seq_lens[0] = 1  # pos 0: the identity rotation
    if batch > 1:
        seq_lens[-1] = cfg.max_seq  # the last cache row of its block
    ins["seq_lens"] = seq_lens.astype(np.int32)
    cos, sin = rope_tables(np.arange(cfg.max_seq), r, cfg.rope_params)
    if tables == "adversarial":  # halves differ: hi half from a frequency set 1.5x higher
        p = cfg.rope_params
        alt_cos, alt_sin = rope_tables(np.arange(cfg.max_seq) * 1.5, r, p)
        cos[:, r // 2:], sin[:, r // 2:] = alt_cos[:, r // 2:], alt_sin[:, r // 2:]
    ins["rope_cos"], ins["rope_sin"] = cos, sin
    ins["kv_cache"] = _cache(rng, batch, cfg.max_seq, kl)
    ins["pe_cache"] = _cache(rng, batch, cfg.max_seq, r)
    if ties:
        ins["hidden_states"] = _tie_rows(rng, (batch, d))
        ins["input_rms_weight"] = _tie_weights(rng, (1, d))
    if reads <= ins.keys():
        return ins
    return ins | _v32_sparse_inputs(cfg, rng, batch)


def _v32_sparse_inputs(cfg, rng, batch: int) -> dict[str, np.ndarray]:
    """The indexer's and the sparse attention's inputs (drawn after scope 1's, whose bits they
    leave as they were): weights ~ N(0, 1/fan_in) in bf16 (``weights_proj`` on the bf16 grid,
    stored fp32 as pypto-lib does), the LayerNorm's weight ~ N(1, 0.1²) and bias ~ N(0, 0.1²),
    both Hadamard matrices the normalised Walsh–Hadamard matrix in bf16 (what the official
    ``rotate_activation`` applies), a random ``layer_id``, and ``dispatch_buf`` filled with one
    random block rolled by a different amount per node (a write to the wrong node shows)."""
    d, ql, kl, h = cfg.hidden, cfg.q_lora, cfg.kv_lora, cfg.heads
    ih, idim, hv = cfg.index_heads, cfg.index_head_dim, cfg.heads * cfg.v_head
    block = _normal(rng, (batch, hv), dtype=BF16)
    shifts = rng.integers(1, hv, cfg.ep_nodes)
    return {
        "wq_b_idx": _normal(rng, (ql, ih * idim), ql**-0.5, BF16),
        "wk_idx": _normal(rng, (d, idim), d**-0.5, BF16),
        "weights_proj": _normal(rng, (d, ih), d**-0.5, BF16).astype(np.float32),
        "k_norm_weight": _norm_weight(rng, (1, idim)),
        "k_norm_bias": _normal(rng, (1, idim), 0.1, BF16).astype(np.float32),
        "hadamard_q": walsh_hadamard(idim), "hadamard_k": walsh_hadamard(idim),
        "layer_id_t": rng.integers(0, cfg.ep_nodes, 1).astype(np.int32),
        "w_q_nope_to_latent": _normal(rng, (h, cfg.nope, kl), cfg.nope**-0.5, BF16),
        "w_latent_to_v": _normal(rng, (h, kl, cfg.v_head), kl**-0.5, BF16),
        "k_cache_idx": _cache(rng, batch, cfg.max_seq, idim),
        "dispatch_buf": _rolled(block, shifts, axis=1),
    }


def _rolled(block: np.ndarray, shifts: np.ndarray, axis: int) -> np.ndarray:
    """``np.stack([np.roll(block, k, axis) for k in shifts])`` for a bf16 2-d ``block`` and
    every ``k`` in ``[0, block.shape[axis])``: one aligned buffer, each part written in place
    as bits (``np.roll`` and a stack copy the 67 MB V3.2 caches twice)."""
    out = aligned_empty((len(shifts), *block.shape), block.dtype)
    src = np.moveaxis(block.view(np.uint16), axis, 0)
    n = src.shape[0]
    for i, k in enumerate(int(k) for k in shifts):
        dst = np.moveaxis(out[i].view(np.uint16), axis, 0)
        dst[k:] = src[:n - k]
        dst[:k] = src[n - k:]
    return out


def walsh_hadamard(n: int) -> np.ndarray:
    """The Sylvester-ordered Walsh–Hadamard matrix of order ``n`` (a power of two) times
    ``n^-½``, in bf16 (``bf16(2^-3.5) = 0.08837890625`` for n = 128: the official transform
    scales by the exact fp32 ``128^-½`` instead)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"index_head_dim: the Hadamard transform needs a power of two, got {n}")
    m = np.ones((1, 1))
    while m.shape[0] < n:
        m = np.block([[m, m], [m, -m]])
    return _bf16(m * n**-0.5)


def v4_positions(cfg: V4Config, rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    """Token positions ``[T]``: entry b's S tokens at ``start_b .. start_b + S − 1``; the first
    entry starts at 0."""
    starts = rng.integers(0, max(cfg.max_pos - seq, 1), size=batch)
    starts[0] = 0
    return (starts[:, None] + np.arange(seq)[None, :]).reshape(-1)


def _v4_inputs(cfg: V4Config, rng, batch: int, seq: int, tables: str, ties: bool):
    d, ql, h, hd, r = cfg.hidden, cfg.q_lora, cfg.heads, cfg.head_dim, cfg.rope
    codes, w_scale = _w8(rng, (ql, h * hd), ql**-0.5)
    ins = {
        "x": _normal(rng, (batch, seq, d), dtype=BF16),
        "norm_w": _norm_weight(rng, (d,)),
        "wq_a": _normal(rng, (d, ql), d**-0.5, BF16),
        "wq_b": codes,
        "wq_b_scale": w_scale,
        "wkv": _normal(rng, (d, hd), d**-0.5, BF16),
    }
    pos = v4_positions(cfg, rng, batch, seq)
    cos, sin = rope_tables(pos, r, cfg.compressed_rope)
    if cfg.rope_table == "element":  # CANN: element j reads column j: [c0, c0, c1, c1, ...]
        cos, sin = np.repeat(cos[:, : r // 2], 2, axis=1), np.repeat(sin[:, : r // 2], 2, axis=1)
    elif tables == "adversarial":
        cos[:, r // 2:] = np.nan
        sin[:, r // 2:] = np.nan
    if cfg.rope_table_dtype == "fp32":  # the official code's fp32 freqs_cis
        ins["rope_cos"], ins["rope_sin"] = cos.astype(np.float32), sin.astype(np.float32)
    else:
        ins["rope_cos"], ins["rope_sin"] = _bf16(cos), _bf16(sin)
    ins["gamma_cq"] = _bf16(1 + _normal(rng, (ql,), 0.1))
    ins["gamma_ckv"] = _bf16(1 + _normal(rng, (hd,), 0.1))
    if ties:
        ins["x"] = _tie_rows(rng, (batch, seq, d))
        ins["norm_w"] = _tie_weights(rng, (d,))
    return ins
