"""dsref — an executable numerical spec of the DeepSeek V3.2 / V4 attention front.

Pure functional JAX references with every rounding point pinned (``dsref spec NAME``)::

    import dsref
    cfg = dsref.config("v32-tiny")
    ins = dsref.make_inputs("v32.decode_front", cfg, batch=4, seed=0)
    outs = dsref.run("v32.decode_front", cfg, ins)
"""

from dsref import v4, v32  # noqa: F401  (registers the models and their stages)
from dsref.config import (
    SEMANTICS,
    VARIANTS,
    V4Config,
    V32Config,
    config,
    config_names,
    parse_variants,
    semantics_names,
    semantics_of,
    variant_values,
    with_semantics,
    with_variants,
)
from dsref.inputs import make_inputs, rope_tables
from dsref.io import load_golden, write_golden
from dsref.model import MODELS, STAGES, get_model, model_names, range_name
from dsref.prepared import Prepared, prepare
from dsref.run import InputError, model_jaxpr, range_inputs, run, run_stage, validate
from dsref.spec import spec, spec_names

__version__ = "0.1.0"

__all__ = [
    "MODELS", "SEMANTICS", "STAGES", "VARIANTS", "InputError", "V32Config", "V4Config", "config",
    "config_names", "get_model", "load_golden", "make_inputs", "model_jaxpr", "model_names",
    "Prepared", "parse_variants", "prepare", "range_inputs", "range_name", "rope_tables", "run",
    "run_stage", "semantics_names", "semantics_of", "spec", "spec_names", "validate",
    "variant_values", "with_semantics", "with_variants", "write_golden",
]
