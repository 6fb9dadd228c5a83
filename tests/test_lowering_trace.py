"""jaxpr → regions: names, order, reference values, unrecognised structure."""

import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from conftest import assert_bitwise

import dsref
from dsref.model import MODELS, STAGES
from lowering.trace import trace

CASES = {"v32.decode_front": ("v32-tiny", dict(batch=3)),
         "v4.qkv_proj_rope": ("v4-tiny", dict(batch=2, seq=3))}


@pytest.mark.parametrize("model", list(CASES))
def test_one_region_per_stage_in_order_with_reference_values(model):
    cfg_name, kw = CASES[model]
    cfg = dsref.config(cfg_name)
    ins = dsref.make_inputs(model, cfg, seed=4, **kw)
    tr = trace(model, cfg, ins)
    assert [r.name for r in tr.regions] == list(MODELS[model].stages)
    assert tr.unrecognised == []
    want = {**ins, **oracle.chain(model, cfg, ins)}
    seen = dict(ins)  # what each value is when a stage reads it: a cache, once written, updated
    for r in tr.regions:
        assert list(r.inputs) == list(STAGES[r.name].inputs)
        assert list(r.outputs) == list(STAGES[r.name].outputs)
        for n, v in r.inputs.items():
            assert_bitwise(v, seen[n], f"{r.name} input {n}")
        for n, v in r.outputs.items():
            assert_bitwise(v, want[n], f"{r.name} output {n}")
            seen[n] = want[n]


def test_unrecognised_structure_is_reported(monkeypatch):
    """A model with an extra top-level primitive and a missing stage is reported, not skipped."""
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs("v32.decode_front", cfg, batch=2, seed=0)
    m = MODELS["v32.decode_front"]
    original = m.fn

    def altered(inputs, *, cfg):
        out = original(inputs, cfg=cfg)
        out["qr_out"] = jnp.tanh(out["qr_out"].astype(jnp.float32)).astype(out["qr_out"].dtype)
        return out

    monkeypatch.setitem(MODELS, "v32.decode_front",
                        type(m)(**{**m.__dict__, "fn": altered,
                                   "stages": (*m.stages, "made_up_stage")}))
    tr = trace("v32.decode_front", cfg, ins)
    text = "\n".join(tr.unrecognised)
    assert "primitive 'tanh' outside any stage" in text
    assert "stage 'made_up_stage' of v32.decode_front has no call in the jaxpr" in text
    assert len(tr.regions) == len(m.stages)
    np.testing.assert_array_equal(tr.glue.count("tanh"), 1)
