"""dsref.memory.keep_freed_memory: after it, a freed whole-tensor temporary stays in the
process (the next one reuses its touched pages); without it, glibc unmaps it on free. Each
case runs in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import sys, numpy as np
from dsref.memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] != "plain" else None

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10

before = rss()
a = np.ones(64 << 20)  # 512 MB, touched
del a
print(took, (rss() - before) >> 20)
"""

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="keep_freed_memory acts on glibc's malloc only")


def _run(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, **env}).stdout.split()
    return out[0], int(out[1])


def test_a_freed_temporary_stays_touched_in_the_process():
    took, kept_mb = _run("keep")
    assert took == "True"
    assert kept_mb >= 500  # the 512 MB block is still the process's, its pages touched


def test_without_it_glibc_returns_the_block_on_free():
    took, kept_mb = _run("plain")
    assert took == "None"
    assert kept_mb < 100  # the oracle the test above differs from: mmap'd, unmapped on free


def test_the_environment_turns_it_off():
    took, kept_mb = _run("keep", DSREF_KEEP_FREED_MEMORY="0")
    assert took == "False" and kept_mb < 100


@pytest.mark.parametrize("cli", ["dsref", "lowering"])
def test_the_commands_keep_freed_memory(cli, monkeypatch):
    """``dsref`` and ``lowering`` call it before running a command."""
    import importlib

    mod = importlib.import_module(f"{cli}.cli")
    called = []
    monkeypatch.setattr(mod, "keep_freed_memory", lambda: called.append(1))
    args = ["spec", "rmsnorm"] if cli == "dsref" else ["plan", "v4.qkv_proj_rope", "--config",
                                                       "v4-tiny"]
    try:
        mod.main(args)
    except SystemExit:
        pass
    assert called == [1]


def test_run_kernel_and_sweep_leave_malloc_as_it_is(monkeypatch, tmp_path):
    """The commands that run a kernel file's own code do not call it (its allocations
    fragment a heap that keeps freed memory)."""
    from lowering import cli

    called = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: called.append(1))
    for args in (["run-kernel", str(tmp_path / "none.py")], ["sweep", str(tmp_path)]):
        try:
            cli.main(args)
        except SystemExit:
            pass
    assert called == []
