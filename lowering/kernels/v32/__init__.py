"""V3.2 decode front kernels (PR #134 tiling)."""
