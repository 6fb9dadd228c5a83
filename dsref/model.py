"""Stage and model registry: the names that appear in jaxprs, kernels, tests and reports.

A stage is a pure function of stored arrays (bf16 / fp32 / int8 / int32 at its boundary)
returning stored arrays, jitted with the config static, so that ``jax.make_jaxpr`` of a model
shows one ``jit[name=<stage>]`` call per stage. Inside, values are carried fp32
(:mod:`dsref.numerics`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np


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
    MODELS[model.name] = model
    return model


def get_model(name: str) -> Model:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}") from None


def model_names() -> list[str]:
    return list(MODELS)
