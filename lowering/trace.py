"""jaxpr → regions: one region per named dsref stage, with the reference value of every
region input and output.

The model is traced with ``jax.make_jaxpr``; each top-level ``jit[name=<stage>]`` equation of
a registered stage becomes a region whose inputs/outputs take the stage's argument and
output names. Other top-level equations are glue, evaluated by the reference; a ``jit`` call
that is not a stage of this model, or a primitive outside the glue list, is recorded in
``Trace.unrecognised`` (and still evaluated, so values flow) rather than skipped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.extend.core import Literal

import dsref
from dsref.model import STAGES
from dsref.numerics import x64

GLUE = {"reshape", "squeeze", "expand_dims", "slice", "dynamic_slice", "concatenate",
        "broadcast_in_dim", "convert_element_type", "transpose", "copy", "copy_p"}


@dataclass
class Region:
    """One stage of the model as it appears in the jaxpr."""

    name: str
    index: int  # equation index in the top-level jaxpr
    inputs: dict[str, np.ndarray]  # reference values, by stage argument name
    outputs: dict[str, np.ndarray]  # reference values, by stage output name
    eqn: Any = field(repr=False, default=None)


@dataclass
class Trace:
    model: str
    cfg: Any
    jaxpr: Any = field(repr=False)
    regions: list[Region]
    glue: list[str]  # primitive names of glue equations, in order
    unrecognised: list[str]  # one line each: what was found where

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(f"region {name!r} not in {[r.name for r in self.regions]}")


def stage_of(eqn: Any, model: str) -> str | None:
    """The dsref stage an equation calls, if it is a stage call of ``model``."""
    if eqn.primitive.name not in ("jit", "pjit"):
        return None
    name = eqn.params.get("name")
    st = STAGES.get(name)
    return name if st is not None and st.model == dsref.get_model(model).family else None


def evaluate(trace_jaxpr: Any, env_in: Mapping[str, Any], hook=None) -> dict:
    """Evaluate a closed jaxpr's top-level equations in order.

    ``hook(i, eqn, invals) -> outvals | None`` may replace an equation's results (the
    pipeline runs kernels there); ``None`` means evaluate it with the reference.
    Returns ``{var: value}`` for every variable.
    """
    jaxpr = trace_jaxpr.jaxpr
    env: dict = {}
    for v, c in zip(jaxpr.constvars, trace_jaxpr.consts, strict=True):
        env[v] = c
    for v, val in zip(jaxpr.invars, env_in["__flat__"], strict=True):
        env[v] = val

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    with x64():
        for i, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            outvals = hook(i, eqn, invals) if hook else None
            if outvals is None:
                outvals = eqn.primitive.bind(*invals, **eqn.params)
                if not eqn.primitive.multiple_results:
                    outvals = [outvals]
            for v, val in zip(eqn.outvars, outvals, strict=True):
                env[v] = val
    return env


def flat_inputs(inputs: Mapping[str, np.ndarray]) -> list:
    """Model inputs in the order of the jaxpr's invars (a dict pytree flattens by key)."""
    return jax.tree_util.tree_leaves(dict(inputs))


def trace(model: str, cfg: Any, inputs: Mapping[str, np.ndarray]) -> Trace:
    """Trace ``model`` at ``cfg`` on ``inputs`` into regions with reference values."""
    dsref.validate(model, cfg, inputs)
    closed = dsref.model_jaxpr(model, cfg, inputs)
    m = dsref.get_model(model)
    regions, glue, unrecognised = [], [], []
    captured: dict[int, list] = {}  # equation index -> its input values

    def hook(i, eqn, invals):
        captured[i] = invals
        return None  # evaluate with the reference

    env = evaluate(closed, {"__flat__": flat_inputs(inputs)}, hook)
    for i, eqn in enumerate(closed.jaxpr.eqns):
        stage = stage_of(eqn, model)
        if stage is None:
            prim = eqn.primitive.name
            if prim in ("jit", "pjit"):
                unrecognised.append(f"equation {i}: jit call {eqn.params.get('name')!r} is not a "
                                    f"stage of {model}")
            elif prim not in GLUE:
                unrecognised.append(f"equation {i}: primitive {prim!r} outside any stage")
            glue.append(prim)
            continue
        st = STAGES[stage]
        ins = {n: np.asarray(v) for n, v in zip(st.inputs, captured[i], strict=True)}
        outs = {n: np.asarray(env[v]) for n, v in zip(st.outputs, eqn.outvars, strict=True)}
        regions.append(Region(name=stage, index=i, inputs=ins, outputs=outs, eqn=eqn))
    missing = [s for s in m.stages if s not in {r.name for r in regions}]
    unrecognised += [f"stage {s!r} of {model} has no call in the jaxpr" for s in missing]
    return Trace(model=model, cfg=cfg, jaxpr=closed, regions=regions, glue=glue,
                 unrecognised=unrecognised)
