"""Lowering checker: jaxpr regions, tile kernels on a CPU emulator, per-region diffs."""
