"""sparse_attn — every head's attention over the top-k selected cache rows of its batch entry,
online softmax in fp32 (pypto-lib HEAD decode_front.py stages 4.3-4.5 ``s4_softmax``).

    n_b = min(TOPK, seq_lens[b]);  row_j = b·MAX_SEQ + topk_idx[b, j],  j < n_b
    s_j = f32( f32(q_lat_h @ kv_j) + f32(q_pe_h @ pe_j) ) · scale                (fp32)
    row 0:  m = s_0,  l = exp(m − m) = 1,  o = kv_0
    row j:  m' = max(m, s_j),  α = exp(m − m'),  β = exp(s_j − m')
            l = α·l + β,  o = o·α + kv_j·β,  m = m'
    ctx_latent[b, h·KL:(h+1)·KL] = bf16( o / l )

``attn_probs="exact"`` (HEAD): this recurrence is the exact softmax mean up to rounding — each
op above one fp32 rounding (``pl.exp`` the float64 exp rounded once), in HEAD's order per row;
dsref sums in float64 and divides once, so the output is not bitwise (judged within a bound).
``attn_probs="bf16"`` (ds32: the probabilities rounded to bf16 before ``p @ kv``) is the plain
softmax, three passes over the selected rows with the scores recomputed in each (no [HG, TOPK]
score tile fits beside the rest at full dims):

    m = max_j s_j (row_max per row tile, pl.maximum across);  Σ = Σ_tiles f32(row_sum(e)),
    e_j = exp(f32(s_j − m));  ctx = Σ_tiles bf16(f32(e_j / Σ)) @ kv_tile   (matmul_acc)

each tile's sums one float64-accumulated rounding, the tiles added in fp32 (dsref: float64 e
and Σ, one rounding of the whole p @ kv); slots past n_b score −inf (zero probability, zero kv
rows). ``scale``: ``dsref.v32.attn_scale`` (``attn_scale="yarn"`` folds in mscale²).

Tiling: HEAD runs one head at a time, scalar per row (a [16, KL] tile of one repeated row);
here a group of ``head_group`` heads is one ``[HG, KL]`` tile (rows = heads) so the recurrence's
vector ops work on all of them at once, and the scores of ``row_tile`` selected rows come from
two cube matmuls per group (``[HG, KL] fp32 @ [TB, KL]ᵀ`` and ``[HG, R] bf16 @ [TB, R]ᵀ``:
exact products, one rounding each — the reference's dots; HEAD forms them on the vector unit as
``row_sum(q · kv)`` with fp32-rounded products). The selected rows are gathered row by row
(``pl.gather_row``, HEAD's per-row cache loads) into a ``[TB, KL]`` bf16 tile, widened to fp32
once for both the score matmul and the ``o`` update. Heads are grouped so that the fp32
``[HG, KL]`` tiles stay within the Vec budget; a group smaller than 16 is zero-padded to 16
rows for the cube and its scores sliced back.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsref.v32 import attn_scale
from lowering.kernels.blocks import cast_mode
from lowering.tile import pl

HEAD_GROUP = 16  # heads per [HG, KL] tile
ROW_TILE = 16  # selected rows per score matmul
CUBE_M = 16


@dataclass(frozen=True, kw_only=True)
class Tiling:
    heads: int  # H
    head_group: int  # HG: heads per tile (divides H)
    kv_lora: int  # KL
    rope: int  # R
    max_seq: int  # cache rows per batch entry
    topk: int  # TOPK
    row_tile: int  # TB: selected rows per score matmul
    scale: float  # fp32 softmax scale
    online: bool  # attn_probs="exact": HEAD's online softmax; "bf16": ds32's plain softmax
    mode: str  # pl.cast mode of the bf16 output

    def __post_init__(self) -> None:
        if self.heads % self.head_group:
            raise ValueError(f"sparse_attn: head group {self.head_group} does not divide H "
                             f"{self.heads}")


def make_tiling(cfg, shapes) -> Tiling:
    hg = HEAD_GROUP if cfg.heads % HEAD_GROUP == 0 else cfg.heads if cfg.heads < HEAD_GROUP \
        else 1
    return Tiling(heads=cfg.heads, head_group=hg, kv_lora=cfg.kv_lora, rope=cfg.rope,
                  max_seq=cfg.max_seq, topk=cfg.index_topk,
                  row_tile=min(ROW_TILE, cfg.index_topk), scale=attn_scale(cfg),
                  online=cfg.attn_probs == "exact",
                  mode=cast_mode(cfg.cast))


def _cube_rows(x):
    """``x`` zero-padded to a whole number of 16-row cube groups."""
    m = x.shape[0]
    return x if m % CUBE_M == 0 else pl.fillpad_expand(x, [-(-m // CUBE_M) * CUBE_M, x.shape[1]])


def _gather_rows(kv_cache, pe_cache, topk_idx, b: int, j0: int, rows: int, t: Tiling,
                 zero: bool):
    """The cache rows of top-k slots ``j0 .. j0+rows`` of entry ``b``: ``[TB, KL]`` and
    ``[TB, R]`` bf16 tiles (rows past ``rows`` undefined, or zero)."""
    if zero:
        kv = pl.full([t.row_tile, t.kv_lora], pl.BF16, 0.0)
        pe = pl.full([t.row_tile, t.rope], pl.BF16, 0.0)
    else:
        kv = pl.create_tile([t.row_tile, t.kv_lora], pl.BF16)
        pe = pl.create_tile([t.row_tile, t.rope], pl.BF16)
    for i in pl.range(rows):
        row = b * t.max_seq + pl.read(topk_idx, [b, j0 + i])
        kv = pl.gather_row(kv, kv_cache, [i, 0], [row, 0], [1, t.kv_lora])
        pe = pl.gather_row(pe, pe_cache, [i, 0], [row, 0], [1, t.rope])
    return kv, pe


def _scores(ql, qp, kv, pe, t: Tiling):
    """``f32(f32(ql @ kvᵀ) + f32(qp @ peᵀ)) · scale`` → fp32 ``[HG, TB]``."""
    nope = pl.matmul(ql, kv, b_trans=True, out_dtype=pl.FP32)
    rope = pl.matmul(qp, pe, b_trans=True, out_dtype=pl.FP32)
    s = pl.mul(pl.add(nope, rope), t.scale)
    if s.shape[0] != t.head_group:
        s = pl.slice(s, [t.head_group, t.row_tile], [0, 0])
    return s


def _block(ql, qp, kv_cache, pe_cache, topk_idx, b: int, j0: int, rows: int, t: Tiling,
           zero: bool = False):
    """Top-k slots ``j0 .. j0+rows`` of entry ``b``: their kv rows widened to fp32
    ``[TB, KL]`` (``zero``: rows past ``rows`` zero), their bf16 kv rows, and the scores
    ``[HG, TB]``."""
    kv, pe = _gather_rows(kv_cache, pe_cache, topk_idx, b, j0, rows, t, zero)
    kvf = pl.cast(kv, target_type=pl.FP32)
    return kvf, kv, _scores(ql, qp, kvf, pe, t)


def _update(mi, li, oi, cur, kv_i):
    """One row of the online softmax: ``m' = max(m, s)``, ``α = exp(m − m')``,
    ``β = exp(s − m')``, ``l = α·l + β``, ``o = o·α + kv·β`` (each one fp32 op)."""
    mi_new = pl.maximum(mi, cur)
    alpha = pl.exp(pl.sub(mi, mi_new))
    beta = pl.exp(pl.sub(cur, mi_new))
    li = pl.add(pl.mul(alpha, li), beta)
    oi = pl.add(pl.row_expand_mul(oi, alpha), pl.row_expand_mul(kv_i, beta))
    return mi_new, li, oi


def _selected(seq_lens, b: int, t: Tiling) -> int:
    """``n_b = min(TOPK, seq_lens[b])``: the top-k slots of entry ``b`` that hold a position."""
    return pl.min(t.topk, pl.read(seq_lens, [b]))


def _online(ql, qp, kv_cache, pe_cache, topk_idx, b: int, n: int, t: Tiling):
    """HEAD's online softmax over the ``n`` selected rows, row by row → fp32 ``o / l``."""
    hg, kl = t.head_group, t.kv_lora
    shape = pl.full([hg, kl], pl.FP32, 0.0)  # col_expand's target shape
    for j0 in pl.range(0, n, t.row_tile):
        rows = pl.min(t.row_tile, n - j0)
        kvf, _, s = _block(ql, qp, kv_cache, pe_cache, topk_idx, b, j0, rows, t)
        for i in pl.range(rows):
            cur = pl.slice(s, [hg, 1], [0, i])
            kv_i = pl.col_expand(shape, pl.slice(kvf, [1, kl], [i, 0]))
            if j0 + i == 0:
                mi, li, oi = cur, pl.exp(pl.sub(cur, cur)), kv_i
                continue
            mi, li, oi = _update(mi, li, oi, cur, kv_i)
    return pl.row_expand_div(oi, li)


def _plain(ql, qp, kv_cache, pe_cache, topk_idx, b: int, n: int, t: Tiling):
    """ds32's softmax, three passes over the ``n`` selected rows (the scores recomputed in
    each): the row max ``m``; ``Σ e``, ``e = exp(s − m)``; ``Σ bf16(e / Σe) @ kv`` → fp32."""
    hg, tb = t.head_group, t.row_tile

    def scores(j0):
        rows = pl.min(tb, n - j0)
        _, kv, s = _block(ql, qp, kv_cache, pe_cache, topk_idx, b, j0, rows, t, rows < tb)
        if rows < tb:  # the slots past n_b: −inf scores, zero probabilities
            s = pl.fillpad(pl.slice(s, [hg, tb], [0, 0], valid_shape=[hg, rows]),
                           pad_value=pl.PadValue.min)
        return kv, s

    m = total = acc = None
    for j0 in pl.range(0, n, tb):
        block_max = pl.row_max(scores(j0)[1])
        m = block_max if m is None else pl.maximum(m, block_max)
    for j0 in pl.range(0, n, tb):
        block_sum = pl.row_sum(pl.exp(pl.row_expand_sub(scores(j0)[1], m)))
        total = block_sum if total is None else pl.add(total, block_sum)
    for j0 in pl.range(0, n, tb):
        kv, s = scores(j0)
        p = _cube_rows(pl.cast(pl.row_expand_div(pl.exp(pl.row_expand_sub(s, m)), total),
                               target_type=pl.BF16, mode=t.mode))
        acc = pl.matmul(p, kv, out_dtype=pl.FP32) if acc is None else pl.matmul_acc(acc, p, kv)
    return acc if acc.shape[0] == hg else pl.slice(acc, [hg, t.kv_lora], [0, 0])


def sparse_attn(q_latent, q_pe_out, topk_idx, seq_lens, kv_cache, pe_cache, ctx_latent, *,
                tiling: Tiling) -> None:
    t = tiling
    hg, kl, r = t.head_group, t.kv_lora, t.rope
    nb = q_latent.shape[0]
    q_lat = pl.reshape(q_latent, [nb * t.heads, kl])  # row b·H + h: one head (GM views)
    q_pe = pl.reshape(q_pe_out, [nb * t.heads, r])
    ctx_out = pl.reshape(ctx_latent, [nb * t.heads, kl])
    softmax = _online if t.online else _plain
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="sparse_attn"):
        for b in pl.parallel(0, nb, 1):
            n = _selected(seq_lens, b, t)
            for h0 in pl.parallel(0, t.heads, hg):
                r0 = b * t.heads + h0
                ql = _cube_rows(q_lat[r0:r0 + hg, :])
                qp = _cube_rows(q_pe[r0:r0 + hg, :])
                ctx = softmax(ql, qp, kv_cache, pe_cache, topk_idx, b, n, t)
                ctx_out[r0:r0 + hg, :] = pl.cast(ctx, target_type=pl.BF16, mode=t.mode)
