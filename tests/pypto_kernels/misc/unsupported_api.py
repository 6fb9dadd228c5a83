"""A pypto-lib style kernel calling a pl op the emulator does not provide (test input)."""

import pypto.language as pl

HIDDEN = 1536


@pl.jit
def sort_rows(hidden_states: pl.Tensor[[16, HIDDEN], pl.BF16],
              qr_out: pl.Out[pl.Tensor[[16, 1024], pl.BF16]]):
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="sort"):
        x = hidden_states[:, 0:512]
        qr_out[:, 0:512] = pl.bitonic_sort(x)  # line 13: not a pypto op
