"""A ``golden`` module compatible with pypto-lib's, for kernel files outside a checkout.

pypto-lib kernel files import ``TensorSpec``, ``ScalarSpec``, ``run_jit`` / ``run`` and the
comparators ``ratio_allclose`` / ``validate_golden`` from the checkout's ``golden`` package.
Inside a checkout :mod:`lowering.harness` uses that package itself; outside one it installs
this module as ``golden``. Same interface (names, arguments, the ``(ok, message)`` comparator
protocol), our own implementation. ``run_jit`` / ``run`` here only raise: the harness replaces
them with the emulator runner. Needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

_FACTORIES = (torch.randn, torch.rand, torch.zeros, torch.ones)


@dataclass
class _TensorFields:
    """The fields of a tensor spec and its ``create_tensor``: ``init_value`` None (zeros), a
    number (filled), a tensor, a torch factory (called with the shape and dtype) or a
    no-argument callable."""

    name: str
    shape: list[int]
    dtype: torch.dtype
    init_value: Any = None
    is_output: bool = False

    def create_tensor(self) -> torch.Tensor:
        v = self.init_value
        if v is None:
            return torch.zeros(self.shape, dtype=self.dtype)
        if isinstance(v, int | float):
            return torch.full(self.shape, v, dtype=self.dtype)
        if isinstance(v, torch.Tensor):
            return v.to(dtype=self.dtype)
        if v in _FACTORIES:
            return v(self.shape, dtype=self.dtype)
        if callable(v):
            return torch.as_tensor(v(), dtype=self.dtype)
        raise TypeError(f"TensorSpec {self.name!r}: unsupported init_value {type(v).__name__}")


@dataclass
class TensorSpec(_TensorFields):
    """A kernel tensor (``golden.TensorSpec``)."""

    resident: Any = None


class _MadeAt:
    """A spec of ``pypto.runtime``: it keeps where it was made (``site``), for the harness's
    message."""

    site: str

    def __post_init__(self) -> None:
        from lowering.pypto_compat.language import _site

        self.site = _site(3)  # past the dataclass __init__


@dataclass
class RuntimeTensorSpec(_MadeAt, _TensorFields):
    """``pypto.runtime.TensorSpec``: the runtime's own spec class, a *different* class from
    ``golden.TensorSpec``. pypto-lib's ``golden.run`` sorts specs by ``isinstance`` against its
    own classes, so it makes no input for one of these; the harness says so (a FAIL of the
    file) rather than running it as if it were a golden spec."""

    site: str = field(default="", repr=False)


@dataclass
class RuntimeScalarSpec(_MadeAt):
    """``pypto.runtime.ScalarSpec``: like :class:`RuntimeTensorSpec`, not ``golden``'s."""

    name: str
    dtype: Any
    value: Any
    site: str = field(default="", repr=False)


# named as pypto names them, in reprs and in the harness's message alike
for _cls, _name in ((RuntimeTensorSpec, "TensorSpec"), (RuntimeScalarSpec, "ScalarSpec")):
    _cls.__module__, _cls.__qualname__ = "pypto.runtime", _name


@dataclass
class ScalarSpec:
    """A scalar argument, kept as a 0-dim tensor of ``dtype``."""

    name: str
    dtype: torch.dtype
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.value, torch.Tensor):
            self.value = torch.tensor(self.value, dtype=self.dtype)

    def to_python(self) -> int | float | bool:
        return self.value.item()


@dataclass
class RunResult:
    passed: bool
    error: str | None = None
    execution_time: float | None = None
    work_dir: Any = None
    bench: Any = field(default=None)


def _not_patched(*_a: Any, **_k: Any) -> RunResult:
    raise RuntimeError("golden.run_jit / golden.run run only under lowering's harness")


run_jit = _not_patched
run = _not_patched


def ratio_allclose(atol: float = 1e-4, rtol: float = 1e-4, max_error_ratio: float = 0.005
                   ) -> Callable[..., tuple[bool, str]]:
    """Pass when at most ``max_error_ratio`` of the elements are outside
    ``|a − e| <= atol + rtol·|e|``; NaN/Inf on either side fails."""

    def ratio_allclose_cmp(actual: torch.Tensor, expected: torch.Tensor, **_kw: Any
                           ) -> tuple[bool, str]:
        a, e = actual.double(), expected.double()
        if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
            return False, "    illegal values (NaN/Inf) in comparison"
        bad = (a - e).abs() > atol + rtol * e.abs()
        ratio = bad.double().mean().item() if bad.numel() else 0.0
        ok = ratio <= max_error_ratio
        return ok, (f"    error ratio {ratio:.6f} (limit {max_error_ratio}); "
                    f"{int(bad.sum())}/{bad.numel()} elements outside atol={atol} rtol={rtol}")

    ratio_allclose_cmp.__name__ = "ratio_allclose"
    return ratio_allclose_cmp


def validate_golden(outputs: dict[str, torch.Tensor], golden: dict[str, torch.Tensor],
                    rtol: float = 1e-5, atol: float = 1e-5,
                    compare_fn: dict[str, Callable] | None = None,
                    inputs: dict[str, torch.Tensor] | None = None) -> None:
    """``torch.allclose`` per output unless ``compare_fn`` names it; raises AssertionError
    with one ``  'NAME' FAIL ...`` block per failing output."""
    compare_fn = compare_fn or {}
    failures = []
    for name, actual in outputs.items():
        expected = golden[name]
        fn = compare_fn.get(name)
        if fn is not None:
            ok, detail = fn(actual, expected, actual_outputs=outputs, expected_outputs=golden,
                            inputs=inputs or {}, rtol=rtol, atol=atol)
        else:
            ok = torch.allclose(actual, expected, rtol=rtol, atol=atol)
            bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol)
            detail = f"    Mismatched elements: {int(bad.sum())}/{bad.numel()}"
        print(f"[RUN]   '{name}' {'PASS' if ok else 'FAIL'}")
        if not ok:
            failures.append((name, f"  '{name}' FAIL\n{detail}"))
    if failures:
        raise AssertionError(f"Output(s) does not match golden: {[n for n, _ in failures]}\n"
                             + "\n".join(m for _, m in failures))
