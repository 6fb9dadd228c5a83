"""V4 qkv_proj_rope kernels (PR #332 tiling)."""
