"""Running a model: input validation, the jitted (or eager) reference, jaxprs."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dsref.config import Config, V4Config
from dsref.model import Model, TensorSpec, base_reads, dataflow, get_model
from dsref.numerics import BF16_EXPONENT, x64

BF16 = np.dtype(ml_dtypes.bfloat16)


class InputError(ValueError):
    """A model input has the wrong name, shape, dtype or value (one line, names the tensor)."""


#: XLA CPU takes a C-contiguous host buffer aligned to this many bytes as it is (no copy)
HOST_ALIGN = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer is :data:`HOST_ALIGN`-byte aligned
    (numpy's own large allocations sit 16 bytes past a page: XLA would copy them)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + HOST_ALIGN, np.uint8)
    off = -raw.ctypes.data % HOST_ALIGN
    return raw[off:off + n].view(dtype).reshape(shape)


def to_device(a: np.ndarray) -> jax.Array:
    """A device array of host ``a`` for the length of one call, never written: an aligned
    C-contiguous buffer is taken as it is, any other first copied into an aligned one (numpy's
    copy is 2-3x faster than ``device_put``'s own, measured on 75 MB weights). Not for what a
    caller keeps (:class:`dsref.Prepared` copies its resident tensors)."""
    a = np.asarray(a)
    if a.nbytes >= 1 << 16 and (not a.flags.c_contiguous or a.ctypes.data % HOST_ALIGN):
        b = aligned_empty(a.shape, a.dtype)
        np.copyto(b, a)
        a = b
    return jax.device_put(a)


def infer_batch_seq(model: Model, inputs: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """(batch, seq) implied by the model's leading activation (``x`` or ``hidden_states``);
    for a stage range without it, by the first per-call activation it takes (``[T, ...]``:
    batch T, seq 1)."""
    if model.base and not {"x", "hidden_states"} & set(model.input_names):
        for n in model.step_inputs:
            if n in inputs and np.ndim(inputs[n]) >= 1:
                return int(np.shape(inputs[n])[0]), 1
        raise InputError(f"{model.step_inputs[0]}: missing, cannot infer the number of tokens "
                         f"of {model.name}")
    if model.name.startswith("v4"):
        if "x" in inputs and np.ndim(inputs["x"]) == 3:
            b, s = np.shape(inputs["x"])[:2]
            return int(b), int(s)
        raise InputError("x: missing or not of rank 3 [B, S, D], cannot infer batch and seq")
    if "hidden_states" in inputs and np.ndim(inputs["hidden_states"]) == 2:
        return int(np.shape(inputs["hidden_states"])[0]), 1
    raise InputError("hidden_states: missing or not of rank 2 [B, D], cannot infer the batch")


def validate(model_name: str, cfg: Config, inputs: Mapping[str, np.ndarray]) -> None:
    """Check names, shapes, dtypes, finiteness and index ranges; raise :class:`InputError`."""
    model = get_model(model_name)
    if not isinstance(cfg, model.config_type):
        raise InputError(
            f"config: {model_name} expects a {model.config_type.__name__}, got {type(cfg).__name__}"
        )
    batch, seq = infer_batch_seq(model, inputs)
    check_tensors(model.input_specs(cfg, batch, seq), cfg, inputs, f"input for {model_name}")


def check_tensors(specs: Mapping[str, TensorSpec], cfg: Config, inputs: Mapping[str, np.ndarray],
                  what: str = "input") -> None:
    """Check ``inputs`` against exactly the tensors of ``specs``; raise :class:`InputError`
    (``what`` names the kind of tensor in the unknown-name error)."""
    missing = [k for k in specs if k not in inputs]
    extra = [k for k in inputs if k not in specs]
    if missing:
        raise InputError(f"{missing[0]}: missing input (expected {sorted(specs)})")
    if extra:
        raise InputError(f"{extra[0]}: unknown {what} (expected {sorted(specs)})")
    for name, spec in specs.items():
        a = inputs[name]
        if tuple(np.shape(a)) != spec.shape:
            raise InputError(f"{name}: expected shape {list(spec.shape)}, got {list(np.shape(a))}")
        if np.asarray(a).dtype != spec.dtype:
            raise InputError(f"{name}: expected dtype {spec.dtype.name}, got {np.asarray(a).dtype.name}")
    for name, region in _finite_regions(cfg, inputs).items():
        if _all_finite(region):
            continue
        bad = ~np.isfinite(region.astype(np.float32))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"{name}: expected finite values, got {region[idx]} at index {list(idx)}")
    if "seq_lens" in inputs:
        sl = np.asarray(inputs["seq_lens"])
        bad = np.flatnonzero((sl < 1) | (sl > cfg.max_seq))
        if bad.size:
            b = int(bad[0])
            raise InputError(
                f"seq_lens: expected 1 <= seq_lens[b] <= MAX_SEQ={cfg.max_seq}, "
                f"got seq_lens[{b}]={int(sl[b])}"
            )


#: elements per step of :func:`_all_finite` (a reused 2 MiB buffer)
FINITE_CHUNK = 1 << 20


def _all_finite(a: np.ndarray) -> bool:
    """No inf or NaN in ``a``. bf16 by its magnitude bits, :data:`FINITE_CHUNK` at a time
    through one buffer: a whole-array temporary is fresh memory on every call, and its first
    touch was most of the cost (V3.2 full dims, every input, Intel Xeon: 106-142 ms whole,
    52-70 ms in chunks; the float32 copy ``np.isfinite`` needs took 128 ms; the mask of
    :func:`dsref.numerics.bf16_nonfinite` per chunk 79-84 ms)."""
    if a.dtype != BF16:
        return bool(np.isfinite(a).all())
    bits = np.ascontiguousarray(a).view(np.uint16).reshape(-1)
    buf = np.empty(min(bits.size, FINITE_CHUNK), np.uint16)
    for i in range(0, bits.size, FINITE_CHUNK):  # magnitude bits below the Inf pattern
        part = buf[:min(FINITE_CHUNK, bits.size - i)]
        np.bitwise_and(bits[i:i + part.size], 0x7FFF, out=part)
        if int(part.max()) >= BF16_EXPONENT:
            return False
    return True


def _finite_regions(cfg: Config, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parts of each float input that the model reads (V4 pair tables: columns < R/2)."""
    out = {}
    for name, a in inputs.items():
        a = np.asarray(a)
        if a.dtype.kind not in "fV" and a.dtype.name != "bfloat16":
            continue
        if isinstance(cfg, V4Config) and name in ("rope_cos", "rope_sin") and cfg.rope_table == "pair":
            a = a[:, : cfg.rope // 2]
        out[name] = a
    return out


@functools.cache
def compiled_step(model_name: str, cfg: Config):
    """The jitted model as ``f(inputs, resident, inouts) -> (outputs, inouts)``: the in/out
    tensors (caches) are donated, so the row writes update the caller's device copies in place
    instead of copying the caches. ``run`` passes every input in ``inputs``; ``Prepared`` keeps
    its weights in ``resident`` across calls."""
    model = get_model(model_name)

    def step(ins: dict, resident: dict, inouts: dict):
        outs = model.fn({**ins, **resident, **inouts}, cfg=cfg)
        return ({k: v for k, v in outs.items() if k not in model.inouts},
                {k: outs[k] for k in model.inouts})

    return jax.jit(step, donate_argnums=2)


def device_inouts(model: Model, inputs: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Device copies of the in/out tensors, bf16 carried as raw ``uint16`` words
    (:func:`dsref.cache.write_rows` updates those in place); never the caller's buffers."""
    out = {}
    for k in model.inouts:
        a = np.asarray(inputs[k])
        out[k] = jnp.array(a.view(np.uint16) if a.dtype == BF16 else a, copy=True)
    return out


def to_host(model: Model, outs: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Device outputs → numpy; in/out tensors carried as words come back as bf16."""
    host = {k: np.asarray(v) for k, v in outs.items()}
    for k in model.inouts:
        if k in host and host[k].dtype == np.uint16:
            host[k] = host[k].view(BF16)
    return host


def run(model: str, cfg: Config, inputs: Mapping[str, np.ndarray], *, jit: bool = True,
        check: bool = True) -> dict[str, np.ndarray]:
    """Run ``model`` at ``cfg`` on ``inputs`` → dict of numpy outputs (bf16 as ml_dtypes).

    Inputs are validated first (:class:`InputError`). In/out tensors (the V3.2 caches) come
    back as new arrays; rows the run does not own are bit-identical to the input.
    ``jit=False`` runs every op eagerly (the jit == eager tests). For many calls with the
    same weights, :func:`dsref.prepare` keeps them (and the caches) resident.
    """
    if check:
        validate(model, cfg, inputs)
    m = get_model(model)
    with x64():
        ins = {k: to_device(v) for k, v in inputs.items() if k not in m.inouts}
        inouts = device_inouts(m, inputs)
        if jit:
            outs, inouts = compiled_step(model, cfg)(ins, {}, inouts)
            outs = {**outs, **inouts}
        else:
            with jax.disable_jit():
                outs = m.fn({**ins, **inouts}, cfg=cfg)
        return to_host(m, outs)


def run_stage(stage: str, cfg: Config, *args: np.ndarray, jit: bool = True) -> tuple[np.ndarray, ...]:
    """Run one stage on stored arrays → tuple of numpy outputs (no input validation)."""
    from dsref.model import STAGES

    st = STAGES[stage]
    with x64():
        args = tuple(jnp.asarray(a) for a in args)
        if jit:
            outs = st.fn(*args, cfg=cfg)
        else:
            with jax.disable_jit():
                outs = st.fn(*args, cfg=cfg)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return tuple(np.asarray(o) for o in outs)


def model_jaxpr(model: str, cfg: Config, inputs: Mapping[str, np.ndarray]) -> jax.core.ClosedJaxpr:
    """The model's jaxpr (one ``jit[name=<stage>]`` equation per stage), traced with x64."""
    m = get_model(model)
    with x64():
        return jax.make_jaxpr(functools.partial(m.fn, cfg=cfg))(dict(inputs))


def range_inputs(model: str, cfg: Config, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs of the stage range ``model`` (``MODEL[A:B]``) from the whole model's
    ``inputs``: those it shares with the whole model as given, the values the stages before
    ``A`` produce computed by them (jitted, the reference itself). ``inputs`` needs only the
    whole model's inputs the range reads (:func:`dsref.model.base_reads`)."""
    m = get_model(model)
    whole = get_model(m.family)
    if not isinstance(cfg, whole.config_type):
        raise InputError(f"config: {whole.name} expects a {whole.config_type.__name__}, got "
                         f"{type(cfg).__name__}")
    specs = whole.input_specs(cfg, *infer_batch_seq(whole, inputs))
    reads = set(base_reads(m))
    check_tensors({n: s for n, s in specs.items() if n in reads or n in inputs}, cfg, inputs,
                  f"input for {whole.name}")
    made = tuple(n for n in m.input_names if n not in whole.input_names)
    values: dict = {}
    if made:
        prefix = whole.stages[:whole.stages.index(m.stages[0])]
        fn = functools.partial(dataflow(prefix, made), cfg=cfg)
        with x64():
            values = jax.jit(fn)({k: jnp.asarray(v) for k, v in inputs.items() if k in reads})
            values = {k: np.asarray(v) for k, v in values.items()}
    return {n: np.asarray(inputs[n]) if n in inputs else values[n] for n in m.input_names}
