"""Binding a kernel's own tensors to a dsref model or stage range (``run-kernel --reference
dsref`` on a file that makes its own inputs).

A pypto-lib file at HEAD names and shapes its tensors its own way: ``rmsnorm.py`` takes the
token ``x [T, D]`` and a bf16 ``norm_w`` and writes ``x_normed``; ``qkv_proj_rope.py`` takes the
*normalised* token as ``x [T, D]``. :func:`bind` finds the dsref model, stage range
(``MODEL[A:B]``), config and token count the kernel's tensors fit, without flags:

- a kernel tensor binds to the dsref tensor of its name, or of which it is a known kernel name
  (``Model.kernel_names``: ``tok`` is ``x`` into a range and ``x_normed`` out of one);
- a range fits when every input it takes is bound and at least one output is; of those that
  fit, the one binding the most kernel tensors;
- the config is the preset of the model whose dims the tensors have; the token count is read
  off them;
- a tensor is viewed in dsref's shape when only the grouping of its elements differs
  (``[T, D]`` ↔ ``[B, S, D]``, a flat ↔ blocked scale row), and a kernel input of a narrower
  float type than dsref's (a bf16 ``norm_w`` for dsref's fp32) is widened, exactly; an
  output of another dtype or shape than dsref's is named and not judged (``unjudged``);
- kernel tensors dsref does not have are *not modelled*: listed, and judged only by the file's
  own golden.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import dsref
from dsref.model import Model
from lowering.backends._rounding import is_float_dtype


class NoBinding(ValueError):
    """The kernel's tensors fit no dsref model or stage range (one line: why)."""


@dataclass
class Binding:
    """A kernel's tensors bound to ``model`` (a model or ``MODEL[A:B]``) at ``cfg``."""

    model: str
    cfg: Any
    batch: int
    seq: int
    inputs: dict[str, np.ndarray]  # dsref input name -> value, in dsref's shape and dtype
    observed: dict[str, np.ndarray]  # dsref output name -> the kernel's value, dsref's shape
    labels: dict[str, str]  # dsref output name -> how the report names it
    kernel_of: dict[str, str]  # dsref name -> kernel tensor name
    not_modelled: list[str] = field(default_factory=list)  # kernel tensors dsref lacks
    notes: list[str] = field(default_factory=list)  # the views and widenings made
    #: kernel outputs dsref has but whose shape or dtype is not dsref's: why, not judged
    unjudged: dict[str, str] = field(default_factory=dict)

    def unbound_notes(self, instead: str) -> list[str]:
        """One line for the tensors dsref lacks (``instead``: what judges them) and one per
        output it has but cannot judge."""
        lines = [f"not modelled by dsref ({instead}): " + ", ".join(self.not_modelled)
                 ] if self.not_modelled else []
        return lines + [f"not judged against dsref: {k} ({why})"
                        for k, why in self.unjudged.items()]


@dataclass(frozen=True)
class KernelTensor:
    """One tensor parameter of a kernel call: ``given`` what it was given (inputs, in/out
    tensors), ``result`` what the kernel left in it (outputs, in/out tensors)."""

    name: str
    direction: str  # 'in' | 'out' | 'inout'
    given: np.ndarray | None = None
    result: np.ndarray | None = None


def _names(model: Model, name: str) -> tuple[str, ...]:
    """The kernel names a dsref tensor may have: its own, then its ``kernel_names``."""
    return (name, *dict(model.kernel_names).get(name, ()))


def _ranges(family: str) -> list[str]:
    stages = dsref.get_model(family).stages
    return [dsref.range_name(family, a, b)
            for i, a in enumerate(stages) for b in stages[i:]]


def _match(model: Model, tensors: Mapping[str, KernelTensor]) -> tuple[dict, dict] | None:
    """(dsref input -> kernel tensor, dsref output -> kernel tensor), or None when an input of
    ``model`` is unbound or no output is bound."""
    used: set[str] = set()

    def find(name: str, directions: tuple[str, ...]) -> str | None:
        for k in _names(model, name):
            t = tensors.get(k)
            if t is not None and t.direction in directions and k not in used:
                return k
        return None

    ins, outs = {}, {}
    for n in model.input_names:
        k = find(n, ("inout",) if n in model.inouts else ("in", "inout"))
        if k is None:
            return None
        ins[n] = k
        used.add(k)
    for n in model.output_names:
        if n in model.inouts:
            outs[n] = ins[n]
            continue
        k = find(n, ("out", "inout"))
        if k is not None:
            outs[n] = k
            used.add(k)
    return (ins, outs) if outs else None


def _fit(value: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, *, widen: bool
         ) -> tuple[np.ndarray | None, str]:
    """``value`` as a dsref tensor of ``shape`` / ``dtype``: (array, note) or (None, why)."""
    a = np.asarray(value)
    note = []
    if a.shape != shape:
        same_rows = a.ndim == 1 or len(shape) == 1 or a.shape[-1] == shape[-1]
        if a.size != int(np.prod(shape)) or not same_rows:
            return None, f"shape {list(a.shape)}, dsref's is {list(shape)}"
        note.append(f"viewed {list(a.shape)} as {list(shape)}")
        a = a.reshape(shape)
    if a.dtype != dtype:
        wider = is_float_dtype(a.dtype) and is_float_dtype(dtype) and \
            a.dtype.itemsize < dtype.itemsize
        if not (widen and wider):
            return None, f"dtype {a.dtype.name}, dsref's is {dtype.name}"
        note.append(f"{a.dtype.name} widened to {dtype.name} (exact)")
        a = a.astype(dtype)
    return a, ", ".join(note)


def _counts(model: Model, bound: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
    """The (batch, seq) the bound activations can have, read off their leading dims: ``[T,
    ...]`` is T entries of one token (dsref's ``[B, S, ...]`` views it whatever B·S is),
    ``[B, S, ...]`` B entries of S."""
    out: list[tuple[int, int]] = []
    for n in model.step_inputs:
        a = bound.get(n)
        if a is None or a.ndim == 0:
            continue
        cands = [(a.shape[0], 1)] + ([(a.shape[0], a.shape[1])] if a.ndim >= 3 else [])
        out += [c for c in cands if c not in out]
    return out or [(1, 1)]


def bind(tensors: Sequence[KernelTensor], *, variants: Mapping[str, Any] | None = None,
         semantics: str | None = None, models: Sequence[str] | None = None,
         configs: Sequence[str] | None = None) -> Binding:
    """The dsref model or stage range, config and token count ``tensors`` fit (see the module
    docstring; ``models`` / ``configs``: only these); :class:`NoBinding` when none does, naming
    the closest misfit."""
    by_name = {t.name: t for t in tensors}
    best: tuple[int, int, str, dict, dict] | None = None
    for family in models or dsref.model_names():
        for name in _ranges(family):
            m = dsref.get_model(name)
            hit = _match(m, by_name)
            if hit is None:
                continue
            key = (len(hit[0]) + len(hit[1]), len(m.stages))
            if best is None or key > best[:2]:
                best = (*key, name, *hit)
    if best is None:
        raise NoBinding(f"no dsref model or stage range takes these tensors "
                        f"({', '.join(by_name)}): models "
                        f"{', '.join(models or dsref.model_names())}")
    _, _, name, ins, outs = best
    m = dsref.get_model(name)
    why, partial = "", None
    counts = _counts(m, {n: np.asarray(by_name[k].given) for n, k in ins.items()})
    for cfg_name in configs or dsref.config_names():
        cfg = dsref.config(cfg_name)
        if not isinstance(cfg, m.config_type):
            continue
        if semantics is not None:
            cfg = dsref.with_semantics(cfg, semantics)
        cfg = dsref.with_variants(cfg, **dict(variants or {}))
        for batch, seq in counts:
            got = _fit_all(m, cfg, batch, seq, by_name, ins, outs)
            if isinstance(got, str):
                why = why or f"{cfg_name}: {got}"
                continue
            got.not_modelled = [t.name for t in tensors if t.name not in
                                set(ins.values()) | set(outs.values())]
            if not got.unjudged:
                return got
            if partial is None or len(got.unjudged) < len(partial.unjudged):
                partial = got  # an output of another shape or dtype: kept if none fits all
    if partial is not None:
        return partial
    raise NoBinding(f"{name}: the kernel's tensors fit no config of {m.family} ({why})")


def _fit_all(m: Model, cfg: Any, batch: int, seq: int, by_name: Mapping[str, KernelTensor],
             ins: Mapping[str, str], outs: Mapping[str, str]) -> Binding | str:
    """The binding at this config and count, or why a tensor does not fit."""
    b = Binding(m.name, cfg, batch, seq, {}, {}, {}, {**ins, **outs})
    for n, k in ins.items():
        a, note = _fit(by_name[k].given, *_spec(m.input_specs(cfg, batch, seq)[n]), widen=True)
        if a is None:
            return f"{k}: {note}"
        b.inputs[n] = a
        b.notes += [f"{k}: {note}"] if note else []
    for n, k in outs.items():
        a, note = _fit(by_name[k].result, *_spec(m.output_specs(cfg, batch, seq)[n]),
                       widen=False)
        if a is None:
            b.unjudged[k] = f"dsref {n}: {note}"
            continue
        b.observed[n] = a
        b.labels[n] = k if k == n else f"{k} (dsref {n})"
        b.notes += [f"{k}: {note}"] if note and n not in ins else []
    if not b.observed:
        return "; ".join(f"{k}: {why}" for k, why in b.unjudged.items())
    return b


def _spec(spec: Any) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(spec.shape), np.dtype(spec.dtype)
