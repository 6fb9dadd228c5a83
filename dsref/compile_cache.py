"""A persistent XLA compilation cache for command-line runs.

Every ``dsref`` / ``lowering`` command is a fresh process, and a fresh process compiles the
same XLA programs again: the jitted model, and the one-op programs a region-by-region
evaluation dispatches. At V3.2 scope 1 that is about a second of every ``lowering diff``.
JAX can keep compiled programs on disk; the command-line entry points turn that on
(:func:`enable`), the library does not (importing ``dsref`` writes nothing).

Where: ``$DSREF_COMPILE_CACHE`` if set (a directory; ``off`` turns the cache off), else
``$XDG_CACHE_HOME/dsref/xla`` (``~/.cache/dsref/xla``), in a subdirectory per host kind —
the JAX and jaxlib versions, the machine and the CPU's model and feature flags — so a program
compiled for one instruction set is never loaded on another (JAX's own key names the
platform, not the CPU's features). A cached program is the same compiled code: results are
bit-identical with or without it.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

ENV = "DSREF_COMPILE_CACHE"
OFF = ("off", "0", "no", "false", "none")


def cache_root() -> Path | None:
    """The directory the cache lives under, or None when ``$DSREF_COMPILE_CACHE`` turns it
    off."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsref" / "xla"


def host_key(cpuinfo: str | None = None) -> str:
    """A short name for this host kind: the JAX and jaxlib versions, the machine, and the
    CPU's model name and feature flags (from ``/proc/cpuinfo`` where there is one)."""
    import jax
    import jaxlib

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = platform.processor()
    cpu = []
    for line in cpuinfo.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
            cpu.append(" ".join(line.split()))
            if len(cpu) >= 2 and key in ("flags", "Features"):
                break  # the first processor's lines: every core of one host is the same kind
    text = "\n".join([jax.__version__, jaxlib.__version__, platform.machine(), *cpu])
    return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def enable() -> Path | None:
    """Turn JAX's persistent compilation cache on, in this host kind's directory, for every
    program however quickly it compiles; call before the process compiles anything. Returns
    the directory, or None when turned off or the directory cannot be made (the run goes on
    without a cache)."""
    root = cache_root()
    if root is None:
        return None
    path = root / host_key()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
