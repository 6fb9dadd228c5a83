"""Hand-tiled kernels, one file per dsref stage."""
