"""Freed memory kept in the process, for command-line runs.

A run works on whole tensors in float64: every interval op of a bound, every comparison and
many reference steps make a temporary of tens of MB and free it. glibc's ``malloc`` serves any
block over 32 MB with a fresh ``mmap`` and unmaps it on ``free``, so each such temporary is
memory the process has never touched: the kernel must fault in and zero every page again, and
on the virtual machines this project is measured on a first touch costs up to several seconds
per GB. :func:`keep_freed_memory` has ``malloc`` serve every block from its heap and keep what
is freed there, so the next temporary reuses pages already touched (V4 Flash ``q_head_rms_rope``
bounds at full dims: 0.65–1.66 s → 0.48–0.57 s, interleaved rounds in one process, Intel Xeon
@ 2.80GHz, 2 cores).

The price is that a process keeps its peak heap until it exits, which is what a one-shot
command wants and a long-lived host program may not, and that large blocks freed in the
middle of the heap fragment it: code with its own allocation pattern can need far more
(pypto-lib kernel files with their torch goldens peaked at 1.3-2.2x the memory). The ``dsref``
commands and ``lowering``'s commands on our own models call it (not ``run-kernel`` /
``sweep``); the library never does. ``DSREF_KEEP_FREED_MEMORY=0`` in the environment turns it
off for the commands too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "DSREF_KEEP_FREED_MEMORY"

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

#: bytes of free memory at the top of the heap kept before any is returned to the system
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` serve large blocks from its heap (no ``mmap``) and return at
    most :data:`TRIM_THRESHOLD` freed bytes to the system. Returns whether it took effect
    (False off glibc: other allocators are left as they are; False when ``$DSREF_KEEP_FREED_MEMORY``
    is ``0``)."""
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
