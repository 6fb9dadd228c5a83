"""Stage and model registry: the names that appear in jaxprs, kernels, tests and reports.

A stage is a pure function of stored arrays (bf16 / fp32 / int8 / int32 at its boundary)
returning stored arrays, jitted with the config static, so that ``jax.make_jaxpr`` of a model
shows one ``jit[name=<stage>]`` call per stage. Inside, values are carried fp32
(:mod:`dsref.numerics`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from dsref.config import config, config_names
from dsref.numerics import x64


@dataclass(frozen=True)
class Stage:
    """One named stage: its jitted function, argument names and output names."""

    name: str
    model: str
    fn: Callable  # jitted; call as fn(*arrays, cfg=cfg)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one model input or output."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class Model:
    """A composed model: its function ``fn(inputs, cfg=cfg) -> outputs`` and stage order."""

    name: str
    fn: Callable
    stages: tuple[str, ...]
    config_type: type
    input_specs: Callable  # (cfg, batch, seq) -> dict[str, TensorSpec]
    output_specs: Callable  # (cfg, batch, seq) -> dict[str, TensorSpec]
    inouts: tuple[str, ...]  # inputs that are also outputs (caches)
    doc: str
    step_inputs: tuple[str, ...] = ()  # the per-call activations; the rest is resident
    matmul_weights: tuple[str, ...] = ()  # projection weights (dot / idot operands)
    input_names: tuple[str, ...] = ()  # the names of input_specs, in order
    output_names: tuple[str, ...] = ()  # the names of output_specs, in order
    #: for a stage range (``MODEL[A:B]``), the whole model it is cut from; else ""
    base: str = ""
    #: other names pypto-lib's kernels give a tensor of this model at a stage-range boundary
    #: (V4's normalised token ``tok`` is ``x_normed`` out of ``rmsnorm.py`` and ``x`` into
    #: ``qkv_proj_rope.py`` at pypto-lib HEAD): what a kernel parameter may bind to
    kernel_names: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: ``owned(cfg, name, inputs)``: the index of the elements of in/out tensor ``name`` one run
    #: writes (V3.2's cache rows ``b·MAX_SEQ + pos_b``); None: the whole tensor
    owned: Callable | None = None

    def owned_index(self, cfg: Any, name: str, inputs: Mapping[str, Any]) -> Any:
        """The elements of in/out tensor ``name`` a run on ``inputs`` writes (every other one
        must stay bit-identical); ``slice(None)`` where the run owns all of it."""
        index = None if self.owned is None else self.owned(cfg, name, inputs)
        return slice(None) if index is None else index

    @property
    def family(self) -> str:
        """The whole model's name: its stages' ``Stage.model``, its configs' ``cfg.model``."""
        return self.base or self.name


STAGES: dict[str, Stage] = {}
MODELS: dict[str, Model] = {}


def stage(model: str, *outputs: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` as a stage of ``model`` producing ``outputs``; returns the jitted fn."""

    def register(fn: Callable) -> Callable:
        params = [
            p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        jitted = jax.jit(fn, static_argnames=("cfg",))
        STAGES[fn.__name__] = Stage(
            name=fn.__name__, model=model, fn=jitted, inputs=tuple(params), outputs=outputs,
            doc=inspect.cleandoc(fn.__doc__ or ""),
        )
        return jitted

    return register


def register_model(model: Model) -> Model:
    """Register ``model``, its input and output names read off its specs."""
    cfg = next(c for c in map(config, config_names()) if isinstance(c, model.config_type))
    model = dataclasses.replace(model, input_names=tuple(model.input_specs(cfg, 1, 1)),
                                output_names=tuple(model.output_specs(cfg, 1, 1)))
    MODELS[model.name] = model
    return model


def get_model(name: str) -> Model:
    """The model ``name``: a registered model, or a stage range of one, ``MODEL[A:B]`` —
    stages ``A`` through ``B`` inclusive, in model order (either end may be left out;
    ``MODEL[A]`` is the one stage) — run on its own: see :func:`range_name`, :func:`range_io`."""
    if "[" in name:
        return _range_model(name)
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}") from None


def range_name(model: str, start: str | None = None, stop: str | None = None) -> str:
    """``MODEL[A:B]`` for stages ``start`` through ``stop`` (``MODEL`` itself when that is all
    of it; ``MODEL[A]`` for one stage)."""
    m = get_model(model)
    stages = get_model(m.family).stages
    a = stages[0] if start is None else start
    b = stages[-1] if stop is None else stop
    for what, s in (("start", a), ("stop", b)):
        if s not in stages:
            raise ValueError(f"{what}: expected a stage of {m.family} ({', '.join(stages)}), "
                             f"got {s!r}")
    if stages.index(a) > stages.index(b):
        raise ValueError(f"stage range: {a!r} comes after {b!r} in {m.family}")
    if (a, b) == (stages[0], stages[-1]):
        return m.family
    if a == b:
        return f"{m.family}[{a}]"
    return f"{m.family}[{'' if a == stages[0] else a}:{'' if b == stages[-1] else b}]"


def _parse_range(name: str) -> tuple[Model, tuple[str, ...], str]:
    base, _, rest = name.partition("[")
    whole = get_model(base)
    if not rest.endswith("]") or "[" in rest:
        raise ValueError(f"model: expected MODEL[START:STOP], got {name!r}")
    a, colon, b = rest[:-1].partition(":")
    a, b = a.strip() or None, b.strip() or None
    if not colon:
        if a is None:
            raise ValueError(f"model: expected MODEL[STAGE] or MODEL[START:STOP], got {name!r}")
        b = a
    canonical = range_name(base, a, b)  # checks the stage names
    stages = whole.stages
    i, j = stages.index(a or stages[0]), stages.index(b or stages[-1])
    return whole, stages[i:j + 1], canonical


def range_io(model: Model, stages: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(inputs, outputs) of running ``stages`` of ``model`` on their own: the inputs are the
    stage arguments no earlier stage of the range produces; the outputs are the model's outputs
    the range produces, plus every value it produces that no later stage of it reads (so a
    prefix ends in its last values)."""
    inputs: list[str] = []
    made: list[str] = []
    for s in stages:
        st = STAGES[s]
        inputs += [n for n in st.inputs if n not in made and n not in inputs]
        made += [n for n in st.outputs if n not in made]
    finals = set(model.output_names)
    outputs = []
    for k, s in enumerate(stages):
        later = {n for t in stages[k + 1:] for n in STAGES[t].inputs}
        outputs += [n for n in STAGES[s].outputs
                    if (n in finals or n not in later) and n not in outputs]
    return tuple(inputs), tuple(outputs)


def dataflow(stages: tuple[str, ...], names: tuple[str, ...]) -> Callable:
    """``fn(inputs, *, cfg) -> {name: value}``: ``stages`` called in order, each on the values
    of its argument names (the models are written this way: a stage's arguments are named
    after the values they take), returning the values ``names``."""

    def fn(inputs: dict, *, cfg):
        values = dict(inputs)
        for s in stages:
            st = STAGES[s]
            out = st.fn(*[values[n] for n in st.inputs], cfg=cfg)
            values.update(zip(st.outputs, out if len(st.outputs) > 1 else (out,), strict=True))
        return {n: values[n] for n in names}

    return fn


_RANGES: dict[str, Model] = {}


def _range_model(name: str) -> Model:
    whole, stages, canonical = _parse_range(name)
    if canonical == whole.name:
        return whole
    hit = _RANGES.get(canonical)
    if hit is not None:
        return hit
    ins, outs = range_io(whole, stages)
    everything = dataflow(whole.stages, tuple(n for s in whole.stages
                                              for n in STAGES[s].outputs))

    def specs_of(names: tuple[str, ...]) -> Callable:
        @functools.cache
        def specs(cfg, batch: int, seq: int = 1) -> dict[str, TensorSpec]:
            full = whole.input_specs(cfg, batch, seq)
            known = dict(full)
            missing = [n for n in names if n not in known]
            if missing:  # the shapes of intermediate values, traced without computing
                with x64():
                    shapes = jax.eval_shape(
                        functools.partial(everything, cfg=cfg),
                        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in full.items()})
                known.update({k: TensorSpec(tuple(v.shape), np.dtype(v.dtype))
                              for k, v in shapes.items()})
            return {n: known[n] for n in names}

        return specs

    m = Model(
        name=canonical, fn=dataflow(stages, outs), stages=stages, config_type=whole.config_type,
        input_specs=specs_of(ins), output_specs=specs_of(outs),
        inouts=tuple(n for n in whole.inouts if n in ins and n in outs),
        doc=f"Stages {stages[0]} .. {stages[-1]} of {whole.name}, run on their own.",
        input_names=ins, output_names=outs,
        step_inputs=tuple(n for n in ins if n in whole.step_inputs or n not in
                          whole.input_names),
        matmul_weights=tuple(n for n in whole.matmul_weights if n in ins),
        base=whole.name, kernel_names=whole.kernel_names, owned=whole.owned,
    )
    _RANGES[canonical] = m
    return m


def base_reads(m: Model) -> tuple[str, ...]:
    """For a stage range, the inputs of its whole model it needs (its own, and those the
    stages before it read to make the rest), in the whole model's order; for a whole model,
    all of its inputs."""
    if not m.base:
        return m.input_names
    whole = get_model(m.base)
    prefix = whole.stages[:whole.stages.index(m.stages[0])]
    read = set(m.input_names).union(*(STAGES[s].inputs for s in prefix))
    return tuple(n for n in whole.input_names if n in read)


def model_names() -> list[str]:
    return list(MODELS)
