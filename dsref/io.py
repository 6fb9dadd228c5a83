"""Golden export and import: a model's inputs and outputs on disk, bit-exact, in three layouts.

``safetensors`` (default): ``DIR/inputs.safetensors`` and ``DIR/outputs.safetensors`` — bf16,
int8, int32 and fp32 stored natively (``safetensors.torch.load_file`` gives torch.bfloat16).
``npz``: ``DIR/inputs.npz`` and ``DIR/outputs.npz``; bf16 is stored as its uint16 bit pattern
and ``meta.json["dtypes"]`` records the real dtype of every array (the sidecar).
``pypto-lib``: ``DIR/in/<name>.pt`` and ``DIR/out/<name>.pt``, one torch tensor per file, the
layout pypto-lib's golden harness replays with ``--golden-data``; in/out tensors (the V3.2
caches) are in both. Needs the ``torch`` extra.

Every layout has ``DIR/meta.json``: model, config, variants, batch, seq, seed, format, dsref
version, and the dtypes and shapes of every tensor — everything needed to regenerate it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from dsref.config import Config, config, semantics_of, variant_values, with_variants
from dsref.inputs import INPUTS_VERSION, make_inputs
from dsref.model import get_model
from dsref.progress import progress_steps
from dsref.run import run

FORMATS = ("safetensors", "npz", "pypto-lib")
GROUPS = ("inputs", "outputs")
BF16 = np.dtype(ml_dtypes.bfloat16)
PROGRESS_BYTES = 32 << 20  # inputs larger than this take about a second or more to write


class ExtraMissing(ImportError):
    """An optional extra (torch) is absent or fails to import; the message is one line."""


class DataFileError(ValueError):
    """A golden file is corrupted, truncated or not what its name says: one line naming it."""


def _read(path: Path, what: str, reader: Callable[[], Any]) -> Any:
    """``reader()``, with any failure to parse ``path`` as a :class:`DataFileError`."""
    try:
        return reader()
    except (DataFileError, ExtraMissing):
        raise
    except Exception as e:  # noqa: BLE001 - every parser's own error types: one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataFileError(f"{path}: unreadable {what} ({type(e).__name__}: {first})") from None


@dataclass(frozen=True)
class Golden:
    """A golden read back: ``inputs`` and ``outputs`` by tensor name, and ``meta.json``."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    meta: dict[str, Any]


def import_torch() -> Any:
    """``torch``, or :class:`ExtraMissing` with one clear line (torch_npu without CANN raises
    at import time with a long message: only its first line is kept)."""
    try:
        import torch
    except Exception as e:  # any import failure (ImportError, OSError, RuntimeError): no torch
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExtraMissing(
            f"the pypto-lib format needs torch (pip install 'dsref[torch]'); "
            f"importing it failed: {type(e).__name__}: {first}"
        ) from None
    return torch


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_golden(
    out_dir: str | Path, model: str, cfg: Config | str, *, batch: int, seq: int = 1, seed: int = 0,
    fmt: str = "safetensors", variants: Mapping[str, Any] | None = None, progress: bool = False,
    force: bool = False,
) -> Golden:
    """Make inputs (``dsref.make_inputs``), run ``model`` and write both to ``out_dir``.

    ``cfg`` is a Config or a preset name; ``variants`` override its variant fields. Returns
    what was written. ``progress`` shows a progress bar on stderr. ``out_dir`` must be new or
    empty: two goldens in one directory would mix; ``force`` replaces a golden already there
    (a directory holding anything else is never cleared).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    _clear_for_golden(Path(out_dir), force)
    cfg = config(cfg) if isinstance(cfg, str) else cfg
    cfg = with_variants(cfg, **variants) if variants else cfg
    if fmt == "pypto-lib":
        import_torch()  # fail before any work
    with progress_steps(progress, 4) as step:
        step("making inputs")
        inputs = make_inputs(model, cfg, batch=batch, seq=seq, seed=seed)
        step("running the model")
        outs = run(model, cfg, inputs)
        outputs = {k: outs[k] for k in get_model(model).output_specs(cfg, batch, seq)}  # model order
        meta = _meta(model, cfg, batch, seq, seed, fmt, inputs, outputs)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _WRITERS[fmt](out, {"inputs": inputs, "outputs": outputs}, get_model(model).inouts, step)
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Golden(inputs, outputs, meta)


#: what a golden directory holds, in any layout (``write_golden --force`` removes only these)
_GOLDEN_ENTRIES = {"meta.json", "inputs.safetensors", "outputs.safetensors", "inputs.npz",
                   "outputs.npz", "in", "out"}


def _clear_for_golden(out: Path, force: bool) -> None:
    """Check ``out`` can take a new golden before any work; with ``force``, remove the golden
    there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        if not out.parent.is_dir():
            raise ValueError(f"--out {out}: its parent directory {out.parent} does not exist")
        return
    entries = sorted(p.name for p in out.iterdir())
    if not force:
        raise ValueError(f"--out {out}: not empty ({', '.join(entries[:4])}"
                         f"{', …' if len(entries) > 4 else ''}); a second golden would mix with "
                         "it: choose a new directory, or --force to replace the golden there")
    other = [e for e in entries if e not in _GOLDEN_ENTRIES]
    if other:
        raise ValueError(f"--out {out}: --force replaces only a golden, and this directory "
                         f"also holds {', '.join(other[:4])}")
    for e in entries:
        p = out / e
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def golden_bytes(model: str, cfg: Config, batch: int, seq: int = 1) -> int:
    """Total bytes of the model's inputs at these dims (to decide whether to show progress)."""
    specs = get_model(model).input_specs(cfg, batch, seq)
    return sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in specs.values())


def _meta(model: str, cfg: Config, batch: int, seq: int, seed: int, fmt: str,
          inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    from dsref import __version__

    def described(arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        return {k: {"dtype": a.dtype.name, "shape": list(a.shape)} for k, a in arrays.items()}

    return {
        "model": model, "config": cfg.name, "semantics": semantics_of(cfg),
        "variants": variant_values(cfg), "batch": batch,
        "seq": seq, "seed": seed, "format": fmt, "dsref_version": __version__,
        "inputs_version": INPUTS_VERSION,
        "tensors": {"inputs": described(inputs), "outputs": described(outputs)},
        "dtypes": {g: {k: a.dtype.name for k, a in arrs.items()}
                   for g, arrs in (("inputs", inputs), ("outputs", outputs))},
    }


def _write_safetensors(out: Path, groups: dict, inouts: tuple[str, ...], step: Callable) -> None:
    from safetensors.numpy import save_file

    for group in GROUPS:
        step(f"writing {group}")
        save_file({k: np.ascontiguousarray(a) for k, a in groups[group].items()},
                  str(out / f"{group}.safetensors"))


def _write_npz(out: Path, groups: dict, inouts: tuple[str, ...], step: Callable) -> None:
    for group in GROUPS:
        step(f"writing {group}")
        arrays = {k: (a.view(np.uint16) if a.dtype == BF16 else a) for k, a in groups[group].items()}
        np.savez(out / f"{group}.npz", **arrays)


def _write_pypto_lib(out: Path, groups: dict, inouts: tuple[str, ...], step: Callable) -> None:
    """``in/<name>.pt`` for every input, ``out/<name>.pt`` for every output (in/out tensors:
    their input value under in/, their output value under out/)."""
    torch = import_torch()
    for group, sub in zip(GROUPS, ("in", "out"), strict=True):
        step(f"writing {sub}/*.pt")
        (out / sub).mkdir(exist_ok=True)
        for name, a in groups[group].items():
            torch.save(to_torch(torch, a), out / sub / f"{name}.pt")


def to_torch(torch: Any, a: np.ndarray) -> Any:
    """A torch tensor with ``a``'s bits; bf16 → torch.bfloat16 through an int16 view."""
    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


_WRITERS = {"safetensors": _write_safetensors, "npz": _write_npz, "pypto-lib": _write_pypto_lib}


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def detect_format(golden_dir: str | Path) -> str:
    """The layout of ``golden_dir``, from the files present; ValueError when none matches."""
    d = Path(golden_dir)
    found = [fmt for fmt, there in (("safetensors", (d / "inputs.safetensors").is_file()),
                                    ("npz", (d / "inputs.npz").is_file()),
                                    ("pypto-lib", (d / "in").is_dir())) if there]
    if len(found) > 1:
        raise DataFileError(f"{d}: holds {' and '.join(found)} goldens at once; which one "
                            "meta.json describes is unknowable: keep one golden per directory")
    if found:
        return found[0]
    raise ValueError(f"{d}: not a golden directory (expected inputs.safetensors, inputs.npz or in/)")


def load_golden(golden_dir: str | Path) -> Golden:
    """Read a golden written by :func:`write_golden` in any layout, bit-exact (bf16 as
    ml_dtypes.bfloat16)."""
    d = Path(golden_dir)
    fmt = detect_format(d)
    meta_path = d / "meta.json"
    meta = _read(meta_path, "meta.json", lambda: json.loads(meta_path.read_text())
                 ) if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise DataFileError(f"{meta_path}: unreadable meta.json (a JSON object expected, got "
                            f"{type(meta).__name__})")
    if meta.get("format", fmt) != fmt:
        raise DataFileError(f"{meta_path}: describes a {meta['format']} golden but the "
                            f"directory holds a {fmt} one")
    groups = _READERS[fmt](d, meta)
    for g in GROUPS:  # the model's tensor order (meta.json), not the file's
        order = [k for k in meta.get("dtypes", {}).get(g, ()) if k in groups[g]]
        groups[g] = {k: groups[g][k] for k in order + sorted(set(groups[g]) - set(order))}
    return Golden(groups["inputs"], groups["outputs"], meta)


def _read_safetensors(d: Path, meta: dict) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    out = {}
    for g in GROUPS:
        f = d / f"{g}.safetensors"
        out[g] = _read(f, "safetensors file", lambda f=f: load_file(str(f)))
    return out


def _read_npz(d: Path, meta: dict) -> dict[str, dict[str, np.ndarray]]:
    """Arrays from the npz files, bf16 restored from uint16 bits by the ``dtypes`` sidecar."""
    if "dtypes" not in meta:
        raise ValueError(f"{d}: an npz golden needs meta.json with 'dtypes' (bf16 is stored as uint16)")
    out = {}
    for g in GROUPS:
        f = d / f"{g}.npz"

        def read(f=f, g=g):
            with np.load(f) as z:
                return {k: _restore(z[k], meta["dtypes"][g][k]) for k in z.files}

        out[g] = _read(f, "npz file", read)
    return out


def _restore(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return a.view(BF16)
    if a.dtype.name != dtype:
        raise ValueError(f"npz golden: expected dtype {dtype}, got {a.dtype.name}")
    return a


def _read_pypto_lib(d: Path, meta: dict) -> dict[str, dict[str, np.ndarray]]:
    torch = import_torch()
    out = {}
    for g, sub in zip(GROUPS, ("in", "out"), strict=True):
        files = sorted((d / sub).glob("*.pt"))
        out[g] = {f.stem: _read(f, ".pt file", lambda f=f: from_torch(
            torch, torch.load(f, weights_only=True))) for f in files}
    return out


def from_torch(torch: Any, t: Any) -> np.ndarray:
    """A numpy array with ``t``'s bits (bf16 as ml_dtypes.bfloat16); ``t`` may be on a device."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(BF16)
    return t.numpy()


_READERS = {"safetensors": _read_safetensors, "npz": _read_npz, "pypto-lib": _read_pypto_lib}
