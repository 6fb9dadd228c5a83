"""A model with its weights resident: the decode-loop form of :func:`dsref.run`.

:func:`dsref.run` is one self-contained call: it validates every input, copies the weights
and the caches to the device, and for the exact dot widens every bf16 weight to float64 —
about 140 ms of the 200 ms a V3.2 call takes at B=16. :func:`prepare` pays all of that once::

    p = dsref.prepare("v32.decode_front", cfg, inputs)   # validates, moves the weights once
    outs = p(hidden_states=h, seq_lens=lens)              # per call: the activations only
    caches = p.state()                                    # the caches, as numpy bf16

Per call only the model's ``step_inputs`` move; the projection weights are stored as
:class:`dsref.numerics.ResidentWeight` (transposed, pre-widened for the exact dot) and the
caches stay on the device, updated in place by each call's row writes. The outputs are
bitwise those of :func:`dsref.run` on the same inputs and cache state (the same products, the
same float64 sums, the same single rounding).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dsref.config import Config
from dsref.model import TensorSpec, get_model
from dsref.numerics import resident_weight, x64
from dsref.run import (
    InputError,
    check_tensors,
    compiled_step,
    device_inouts,
    infer_batch_seq,
    to_host,
    validate,
)


class Prepared:
    """``model`` at ``cfg`` with weights and caches resident; call it with the activations.

    A model with caches (V3.2) keeps the batch of the inputs given to :func:`prepare`: the
    caches are laid out per batch entry. A model without (V4) takes any batch and sequence
    length per call (each new shape compiles once).
    """

    def __init__(self, model: str, cfg: Config, inputs: Mapping[str, np.ndarray], *, check: bool = True):
        if check:
            validate(model, cfg, inputs)
        self.model, self.cfg = get_model(model), cfg
        m = self.model
        self.batch, self.seq = infer_batch_seq(m, inputs)
        resident = [k for k in inputs if k not in m.step_inputs and k not in m.inouts]
        with x64():
            # own copies: XLA CPU may alias a 64-byte-aligned numpy array instead of copying it,
            # and the caller may change its arrays after prepare()
            self._resident = {
                k: (resident_weight(jax.device_put(inputs[k]), cfg.accumulate)
                    if k in m.matmul_weights else jnp.array(inputs[k], copy=True))
                for k in resident
            }
            self._state = device_inouts(m, inputs)
        self._step = compiled_step(m.name, cfg)
        self.calls = 0

    def __call__(self, activations: Mapping[str, np.ndarray] | None = None, *, check: bool = True,
                 **named: np.ndarray) -> dict[str, np.ndarray]:
        """One call on ``activations`` (a mapping, or keywords) → the outputs but the caches,
        which are updated in place (:meth:`state`)."""
        acts = {**(activations or {}), **named}
        if check:
            check_tensors(self.step_specs(acts), self.cfg, acts,
                          f"per-call input of {self.model.name} (weights and caches are resident)")
        with x64():
            outs, self._state = self._step({k: jax.device_put(v) for k, v in acts.items()},
                                           self._resident, self._state)
            self.calls += 1
            return to_host(self.model, outs)

    def step_specs(self, activations: Mapping[str, np.ndarray] | None = None) -> dict[str, TensorSpec]:
        """The per-call tensors: at the prepared batch, or (no caches) at the batch and
        sequence length of ``activations``."""
        m = self.model
        batch, seq = self.batch, self.seq
        if not m.inouts and activations is not None:
            try:
                batch, seq = infer_batch_seq(m, activations)
            except InputError:
                pass  # check_tensors names the missing or malformed tensor
        return {k: s for k, s in m.input_specs(self.cfg, batch, seq).items() if k in m.step_inputs}

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the resident in/out tensors (the V3.2 caches) as numpy arrays."""
        return {k: np.array(v) for k, v in to_host(self.model, self._state).items()}

    def __repr__(self) -> str:
        return (f"Prepared({self.model.name!r}, {self.cfg.name!r}, batch={self.batch}, "
                f"seq={self.seq}, calls={self.calls})")


def prepare(model: str, cfg: Config, inputs: Mapping[str, np.ndarray], *, check: bool = True) -> Prepared:
    """Validate ``inputs`` (as :func:`dsref.run`) and keep ``model``'s weights and caches
    resident for repeated calls; see :class:`Prepared`."""
    return Prepared(model, cfg, inputs, check=check)


__all__ = ["Prepared", "prepare"]
