"""The miniature checkout's golden package: pypto-lib's interface (re-exported from
lowering.pypto_compat.golden); each validate_golden call appends a line to the file named by
MINI_GOLDEN_LOG, so a test can see that the checkout's own package judged the outputs."""

import os

from lowering.pypto_compat import golden as _impl
from lowering.pypto_compat.golden import RunResult, ScalarSpec, TensorSpec, ratio_allclose


def validate_golden(outputs, *args, **kwargs):
    log = os.environ.get("MINI_GOLDEN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(" ".join(sorted(outputs)) + "\n")
    return _impl.validate_golden(outputs, *args, **kwargs)


def run_jit(*_a, **_k):
    raise RuntimeError("no device here: the harness replaces golden.run_jit")


run = run_jit

__all__ = ["RunResult", "ScalarSpec", "TensorSpec", "ratio_allclose", "run", "run_jit",
           "validate_golden"]
