"""The torch array backend of the tile emulator: the same kernels on torch tensors, on
``cpu``, ``cuda[:N]`` or ``npu[:N]`` (``torch_npu``, imported only for npu).

Numerics are those of ``NumpyBackend``, op for op, so results are bitwise identical on CPU
except where a float64 summation order enters (``matmul`` and ``row_sum``/``col_sum``: the
float64 sum of exact products / values is rounded once to fp32, so the two backends differ
only when that sum lies within a float64 rounding error of an fp32 rounding boundary):

- fp32 elementwise ops are torch float32 kernels (one IEEE operation each; ``add``/``sub``
  with alpha = 1 stay single-rounded even where torch uses a fused multiply-add); fp16/bf16 ops
  compute in float32 and round once with ``.to()`` (round to nearest even);
- except ``div``, ``recip`` and ``sqrt``, whose torch kernels are not correctly rounded on
  every CPU (torch 2.13's fp32 ``sqrt`` is 1 ulp off on ~17% of random elements on an
  AVX2-only AMD EPYC, AVX2 and scalar ATen kernels alike; docs/backends.md): quotients are
  computed in float64 and rounded once (exact: 53 >= 2·24 + 2), square roots in float64,
  rounded, then corrected by an exact residual test against the two neighbouring midpoints —
  correctly rounded on any CPU, bitwise equal to numpy;
- a Python-number operand is an fp32 *device* tensor, never a CPU scalar (torch's CUDA divide
  turns a CPU-scalar divisor into a multiplication by its reciprocal);
- casts: widening and round-to-nearest-even narrowing of fp32/fp16/bf16 use ``.to()``; every
  other mode (and wide integer sources) brackets the exact value between two consecutive
  narrow values with ``torch.nextafter`` and picks one by exact float64 arithmetic — the
  construction of ``_rounding``; float → int rounds in float64 and saturates;
- ``exp``/``log``/``rsqrt`` (faithful, not hardware ops) go through numpy so that their
  float64 library results match the numpy backend exactly.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from lowering.backends import _rounding
from lowering.backends._torch import open_device
from lowering.backends.numpy_backend import _NATIVE, NumpyBackend

_BF16_NP = np.dtype(ml_dtypes.bfloat16)


class TorchBackend:
    """Array backend on torch tensors on one device (see the module docstring)."""

    name = "torch"

    def __init__(self, device: str | None = "cpu") -> None:
        torch, dev = open_device(device)
        self.torch = torch
        self.device = dev
        self._np = NumpyBackend()
        t = torch
        self._tdt = {
            "FP32": t.float32, "FP16": t.float16, "BF16": t.bfloat16, "FP64": t.float64,
            "INT8": t.int8, "INT16": t.int16, "INT32": t.int32, "INT64": t.int64,
            "INDEX": t.int64, "UINT8": t.uint8, "UINT16": t.uint16, "UINT32": t.uint32,
            "UINT64": t.uint64, "BOOL": t.bool,
        }
        self._by_tdt = {v: k for k, v in self._tdt.items() if k != "INDEX"}
        self._binary = {"add": t.add, "sub": t.sub, "mul": t.mul, "div": t.div,
                        "maximum": t.maximum, "minimum": t.minimum}

    def __str__(self) -> str:
        return f"torch:{self.device}"

    __repr__ = __str__

    def _name(self, x: Any) -> str:
        return self._by_tdt[x.dtype]

    # -- storage -----------------------------------------------------------------------
    def native(self, dtype: str) -> np.dtype:
        """The numpy dtype that values of ``dtype`` cross the interface in."""
        return _NATIVE[dtype]

    def from_numpy(self, arr: np.ndarray, dtype: str) -> Any:
        a = np.asarray(arr)
        if a.dtype != _NATIVE[dtype]:
            raise TypeError(f"array of dtype {a.dtype} given where {dtype} is expected")
        a = np.ascontiguousarray(a)
        if a.dtype == _BF16_NP:
            t = self.torch.from_numpy(a.view(np.int16).copy()).view(self.torch.bfloat16)
        else:
            t = self.torch.from_numpy(a.copy())
        return t.to(self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        t = x.detach().to("cpu").contiguous()
        if t.dtype == self.torch.bfloat16:
            return np.array(t.view(self.torch.int16).numpy().view(_BF16_NP), copy=True)
        return np.array(t.numpy(), copy=True)

    def full(self, shape: tuple[int, ...], dtype: str, value: float | int) -> Any:
        """Filled with ``value`` converted exactly as numpy converts it."""
        v = self.from_numpy(np.full((), value, dtype=_NATIVE[dtype]), dtype)
        return v.expand(tuple(shape)).contiguous()

    def scalar(self, value: float | int, dtype: str) -> Any:
        """A 0-d device tensor (fp32: the RNE-rounded double)."""
        return self.from_numpy(np.asarray(_NATIVE[dtype].type(value)), dtype)

    def read(self, x: Any, key: Any) -> Any:
        return x[key].clone(memory_format=self.torch.contiguous_format)

    def write(self, x: Any, key: Any, value: Any) -> None:
        dst = x[key]
        x[key] = value.reshape(dst.shape)

    def item(self, x: Any, index: tuple[int, ...]) -> float | int:
        return x[index].item()

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        return x.view(tuple(shape)) if x.is_contiguous() else x.reshape(tuple(shape))

    def reshape_view(self, x: Any, shape: tuple[int, ...], what: str) -> Any:
        """``x`` with a new shape, sharing its storage (``Tensor.view``); see the numpy
        backend."""
        try:
            return x.view(tuple(shape))
        except RuntimeError:
            raise NotImplementedError(f"{what}: this GM window cannot be reshaped in place (its "
                                      "elements are not evenly strided); not emulated") from None

    def copy(self, x: Any) -> Any:
        return x.clone()

    # -- compute -----------------------------------------------------------------------
    def binary(self, op: str, a: Any, b: Any, dtype: str) -> Any:
        nat = self._tdt[dtype]
        if op == "div" and not (nat.is_floating_point or nat == self.torch.bool):
            raise TypeError("integer division is not a tile op the emulator supports")
        fn = self._binary[op]
        if op == "div" and nat in (self.torch.float32, self.torch.bfloat16, self.torch.float16):
            f64 = self.torch.float64  # one rounding of the float64 quotient: the IEEE fp32 one
            return (a.to(f64) / b.to(f64)).to(self.torch.float32).to(nat)
        if nat in (self.torch.bfloat16, self.torch.float16):
            f32 = self.torch.float32
            return fn(a.to(f32), b.to(f32)).to(nat)
        return fn(a, b).to(nat)

    def unary(self, op: str, x: Any) -> Any:
        t = self.torch
        if op == "neg":
            return t.neg(x)
        if op == "abs":
            return t.abs(x)
        if op == "trunc":
            return t.trunc(x)
        if op in ("exp", "rsqrt", "log"):
            name = self._name(x)
            return self.from_numpy(self._np.unary(op, self.to_numpy(x)), name)
        wide = x.to(t.float32) if x.element_size() < 4 else x
        if op == "sqrt":
            r = self._sqrt(wide)
        elif op == "recip":
            r = (1.0 / wide.to(t.float64)).to(wide.dtype) if wide.dtype == t.float32 else \
                t.div(t.ones((), dtype=wide.dtype, device=wide.device), wide)
        else:
            raise KeyError(op)
        return r.to(x.dtype)

    def _sqrt(self, x: Any) -> Any:
        """Correctly rounded ``sqrt`` of an fp32 (or fp64) tensor on any CPU / device.

        fp32: the float64 root rounded to fp32 is within one ulp even if the library root is
        not correctly rounded; then with ``m± = (r + next±(r)) / 2`` (exact in float64, and so
        are ``m±²``: 25 significant bits each), the correctly rounded root is ``next+(r)`` when
        ``x > m+²``, ``next−(r)`` when ``x < m−²``, else ``r`` (``x = m²`` is impossible: ``m²``
        has more than 24 significant bits)."""
        t = self.torch
        if x.dtype != t.float32:
            return t.sqrt(x)
        x64 = x.to(t.float64)
        r = t.sqrt(x64).to(t.float32)
        up = t.nextafter(r, t.full((), float("inf"), dtype=t.float32, device=r.device))
        dn = t.nextafter(r, t.zeros((), dtype=t.float32, device=r.device))
        r64 = r.to(t.float64)
        m_up, m_dn = (r64 + up.to(t.float64)) * 0.5, (r64 + dn.to(t.float64)) * 0.5
        fix = t.isfinite(x64) & (x64 > 0) & t.isfinite(up)
        r = t.where(fix & (x64 > m_up * m_up), up, r)
        return t.where(fix & (x64 < m_dn * m_dn), dn, r)

    def _reduce(self, op: str, x: Any, dim: int) -> Any:
        t = self.torch
        if op == "sum":
            acc = t.float64 if x.dtype.is_floating_point else t.int64
            return x.to(acc).sum(dim=dim, keepdim=True).to(x.dtype)
        if op == "max":
            return t.amax(x, dim=dim, keepdim=True)
        if op == "min":
            return t.amin(x, dim=dim, keepdim=True)
        raise KeyError(op)

    def row_reduce(self, op: str, x: Any) -> Any:
        """Reduce the last axis (sum: float64 accumulation rounded once)."""
        return self._reduce(op, x, -1)

    def col_reduce(self, op: str, x: Any) -> Any:
        """Reduce the first axis of a 2-D array (sum: float64 accumulation rounded once)."""
        return self._reduce(op, x, 0)

    def matmul(self, a: Any, b: Any, out_dtype: str) -> Any:
        """Exact products summed in float64 (BLAS order), rounded once / converted exactly."""
        f64 = self.torch.float64
        return self.torch.matmul(a.to(f64), b.to(f64)).to(self._tdt[out_dtype])

    def cast(self, x: Any, dtype: str, mode: str) -> Any:
        t = self.torch
        dst = self._tdt[dtype]
        src = x.dtype
        if src == dst:
            return x.clone()
        if dst.is_floating_point:
            if src.is_floating_point and t.finfo(dst).bits > t.finfo(src).bits:
                return x.to(dst)  # widening: exact
            return self._round_to_float(x, dst, mode)
        if dst == t.bool:
            return x != 0
        if src.is_floating_point:
            return self._round_to_int(x, dst, "trunc" if mode == "none" else mode)
        return self._int_to_int(x, dst)

    def _round_to_float(self, x: Any, dst: Any, mode: str) -> Any:
        """``_rounding.round_to_float`` on torch tensors (same construction, same results)."""
        t = self.torch
        f64 = t.float64
        mode = "rint" if mode == "none" else mode
        single = (x.dtype.is_floating_point and x.element_size() <= 4) or (
            not x.dtype.is_floating_point and x.element_size() <= 2)
        r0 = x.to(dst) if single else x.to(f64).to(dst)
        if mode == "rint" and single:
            return r0
        x64 = x.to(f64)
        r64 = r0.to(f64)
        inf = t.full((), float("inf"), dtype=dst, device=x.device)
        toward = t.where(r64 < x64, inf, -inf)
        nb = t.nextafter(r0, toward)
        below = r64 <= x64
        lo = t.where(below, r0, nb)
        hi = t.where(below, nb, r0)
        big = _rounding._overflow_value(_NATIVE[self._by_tdt[dst]])
        lo64 = lo.to(f64).clamp(-big, big)
        hi64 = hi.to(f64).clamp(-big, big)
        exact = r64 == x64
        if mode == "floor":
            out = lo
        elif mode == "ceil":
            out = hi
        elif mode == "trunc":
            out = t.where(x64 > 0, lo, hi)
        else:
            dl = x64 - lo64
            dh = hi64 - x64
            if mode == "rint":
                bits = {2: t.int16, 4: t.int32, 8: t.int64}[lo.element_size()]
                lo_even = ((lo.view(bits) & 1) == 0) | (lo64.abs() == big)
                tie_pick = t.where(lo_even, lo, hi)
            else:  # round: ties away from zero
                tie_pick = t.where(x64 > 0, hi, lo)
            out = t.where(dl < dh, lo, t.where(dh < dl, hi, tie_pick))
        out = t.where(exact | t.isnan(x64), r0, out)
        zero = out.to(f64) == 0.0
        if bool(zero.any()):
            signed = t.copysign(t.zeros((), dtype=f64, device=x.device), x64).to(dst)
            out = t.where(zero, signed, out)
        return out.to(dst)

    def _round_to_int(self, x: Any, dst: Any, mode: str) -> Any:
        t = self.torch
        x64 = x.to(t.float64)
        if mode == "rint":
            r = t.round(x64)  # half to even
        elif mode == "round":
            r = t.where(x64 >= 0, t.floor(x64 + 0.5), t.ceil(x64 - 0.5))
        elif mode == "floor":
            r = t.floor(x64)
        elif mode == "ceil":
            r = t.ceil(x64)
        else:
            r = t.trunc(x64)
        info = np.iinfo(_NATIVE[self._by_tdt[dst]])
        r = t.clamp(r, float(info.min), float(info.max))
        r = t.where(t.isnan(r), t.zeros((), dtype=t.float64, device=x.device), r)
        return r.to(dst)

    def _int_to_int(self, x: Any, dst: Any) -> Any:
        info = np.iinfo(_NATIVE[self._by_tdt[dst]])
        lo, hi = max(int(info.min), -(1 << 63)), min(int(info.max), (1 << 63) - 1)
        return x.to(self.torch.int64).clamp(lo, hi).to(dst)

    def gather_last(self, x: Any, start: int, step: int) -> Any:
        return x[..., start::step].contiguous()

    def concat(self, a: Any, b: Any, axis: int) -> Any:
        return self.torch.cat([a, b], dim=axis)

    def transpose(self, x: Any, axis1: int, axis2: int) -> Any:
        return x.transpose(axis1, axis2).contiguous()

    def count_nan(self, x: Any) -> int:
        return int(self.torch.isnan(x).sum().item())

    # -- index, sort and compare ops (lowering.tile.ops_index) ----------------------------
    # Pure data movement and comparisons: the torch kernels are exact; the sorts, the merges,
    # the arg-reductions (NaN rules) and the bit views go through the numpy backend so the
    # two backends cannot differ.
    def arange(self, start: int, step: int, n: int, dtype: str) -> Any:
        return self.from_numpy(self._np.arange(start, step, n, dtype), dtype)

    def bitcast(self, x: Any, dtype: str) -> Any:
        return self.from_numpy(self._np.bitcast(self.to_numpy(x), dtype), dtype)

    def take(self, x: Any, index: Any, axis: int | None) -> Any:
        idx = index.to(self.torch.int64)
        if axis is None:
            return self.torch.take(x.contiguous(), idx).contiguous()
        cut = tuple(slice(None) if d == axis % x.dim() else slice(0, n)
                    for d, n in enumerate(idx.shape))
        return self.torch.gather(x[cut], axis, idx).contiguous()

    def compare(self, op: str, a: Any, b: Any) -> Any:
        t = self.torch
        fn = {"eq": t.eq, "ne": t.ne, "lt": t.lt, "le": t.le, "gt": t.gt, "ge": t.ge}[op]
        return fn(a, b)

    def select(self, mask: Any, a: Any, b: Any, dtype: str) -> Any:
        nat = self._tdt[dtype]
        a = a if isinstance(a, self.torch.Tensor) else self.scalar(a, dtype)
        b = b if isinstance(b, self.torch.Tensor) else self.scalar(b, dtype)
        return self.torch.where(mask, a.to(nat), b.to(nat)).to(nat)

    def pack_bits(self, mask: Any, width: int) -> Any:
        return self.from_numpy(self._np.pack_bits(self.to_numpy(mask), width), "UINT8")

    def unpack_bits(self, packed: Any, n: int) -> Any:
        return self.from_numpy(self._np.unpack_bits(self.to_numpy(packed), n), "BOOL")

    def arg_reduce(self, op: str, x: Any, axis: int) -> Any:
        return self.from_numpy(self._np.arg_reduce(op, self.to_numpy(x), axis), "INT32")

    def sort32(self, src: Any, idx: Any) -> Any:
        out = self._np.sort32(self.to_numpy(src), self.to_numpy(idx))
        return self.from_numpy(out, self._name(src))

    def mrgsort_blocks(self, x: Any, block_len: int) -> Any:
        return self.from_numpy(self._np.mrgsort_blocks(self.to_numpy(x), block_len),
                               self._name(x))

    def mrgsort_lists(self, lists: list, out_structs: int, exhausted: bool) -> tuple[Any, int]:
        out, n = self._np.mrgsort_lists([self.to_numpy(a) for a in lists], out_structs,
                                        exhausted)
        return self.from_numpy(out, self._name(lists[0])), n
