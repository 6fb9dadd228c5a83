"""dispatch — each batch entry's attention row into its slot of the cross-node dispatch
buffer (pypto-lib HEAD decode_front.py ``s4_dispatch``).

    dispatch_buf[(b + layer_id) % EP, b, :] = attn_front[b, :]   (bf16 copy)

Only those B (node, entry) slots are written; every other one must stay bit-identical
(coverage check over the first two axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsref.v32 import owned
from lowering.tile import pl


@dataclass(frozen=True, kw_only=True)
class Tiling:
    ep_nodes: int  # EP: dispatch_buf's node axis


def make_tiling(cfg, shapes) -> Tiling:
    return Tiling(ep_nodes=cfg.ep_nodes)


def owned_rows(cfg, inputs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"dispatch_buf": owned(cfg, "dispatch_buf", inputs)}  # (node, entry) slots


def dispatch(attn_front, layer_id_t, dispatch_buf, *, tiling: Tiling) -> None:
    layer = pl.read(layer_id_t, [0])
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="dispatch"):
        for b in pl.parallel(0, attn_front.shape[0], 1):
            node = (b + layer) % tiling.ep_nodes
            dispatch_buf[node:node + 1, b:b + 1, :] = pl.reshape(
                attn_front[b:b + 1, :], [1, 1, attn_front.shape[1]])
