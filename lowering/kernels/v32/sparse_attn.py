"""sparse_attn — every head's attention over the top-k selected cache rows of its batch entry,
online softmax in fp32 (pypto-lib HEAD decode_front.py stages 4.3-4.5 ``s4_softmax``), a block
of ``TB`` selected rows at a time.

    n_b = min(TOPK, seq_lens[b]);  row_j = b·MAX_SEQ + topk_idx[b, j],  j < n_b
    s_j = f32( f32(q_lat_h @ kv_j) + f32(q_pe_h @ pe_j) ) · scale                (fp32)
    block 0:  m = rowmax(s),  p = exp(s − m),  l = Σp,  o = p @ kv
    block k:  m' = max(m, rowmax(s)),  α = exp(m − m'),  p = exp(s − m')
              l = α·l + Σp,  o = o·α + p @ kv,  m = m'
    ctx_latent[b, h·KL:(h+1)·KL] = bf16( o / l )

``attn_probs="exact"`` (HEAD): each op above one fp32 rounding (``pl.exp`` the float64 exp
rounded once, ``Σp`` and ``p @ kv`` float64 sums rounded once). With ``TB = 1`` this is HEAD's
recurrence bit for bit (m = s₀, l = 1, o = kv₀; then α, β = exp(s − m'), l = α·l + β,
o = o·α + kv·β, one row at a time — ``tests/test_lowering_v32_attn.py`` checks it against a
numpy version); the default ``TB = 32`` sums a block's rows in one rounding and rescales once
per block (flash-decoding's order: 32× fewer ops on the emulator, the rounding a bound covers).
dsref sums in float64 and divides once, so the output is not bitwise (judged within a bound).
``attn_probs="bf16"`` (ds32: the probabilities rounded to bf16 before ``p @ kv``) is the plain
softmax, three passes over the selected rows with the scores recomputed in each (no [HG, TOPK]
score tile fits beside the rest at full dims):

    m = max_j s_j (row_max per row tile, pl.maximum across);  Σ = Σ_tiles f32(row_sum(e)),
    e_j = exp(f32(s_j − m));  ctx = Σ_tiles bf16(f32(e_j / Σ)) @ kv_tile   (matmul_acc)

each tile's sums one float64-accumulated rounding, the tiles added in fp32 (dsref: float64 e
and Σ, one rounding of the whole p @ kv); slots past n_b score −inf (zero probability, zero kv
rows). ``scale``: ``dsref.v32.attn_scale`` (``attn_scale="yarn"`` folds in mscale²).

Tiling: first, per batch entry, its selected rows are gathered row by row (``pl.gather_row``,
HEAD's per-row cache loads) into GM work tensors ``[TOPK, KL]`` / ``[TOPK, R]`` in slot order,
once for all head groups (scope ``sparse_attn_gather``). Then HEAD runs one head at a time,
scalar per row (a [16, KL] tile of one repeated row); here a group of ``head_group`` heads is
one ``[HG, KL]`` tile (rows = heads) so the softmax's vector ops work on all of them at once,
and the scores of a block of ``TB`` rows come from two cube matmuls per group (``[HG, KL] fp32
@ [TB, KL]ᵀ`` and ``[HG, R] bf16 @ [TB, R]ᵀ``: exact products, one rounding each — the
reference's dots; HEAD forms them on the vector unit as ``row_sum(q · kv)`` with fp32-rounded
products), the block's kv rows widened to fp32 once for both the score matmul and ``p @ kv``.
Heads are grouped so that the fp32 ``[HG, KL]`` tiles stay within the Vec budget; a group
smaller than 16 is zero-padded to 16 rows for the cube and its results sliced back.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsref.v32 import attn_scale
from lowering.kernels.blocks import cast_mode
from lowering.tile import pl

HEAD_GROUP = 16  # heads per [HG, KL] tile
ROW_TILE = 32  # selected rows per block (the most whose tiles fit the a2a3 Vec budget beside o)
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


def _gather_rows(kv_cache, pe_cache, topk_idx, b: int, j0: int, rows: int, t: Tiling):
    """The cache rows of top-k slots ``j0 .. j0+rows`` of entry ``b``: ``[TB, KL]`` and
    ``[TB, R]`` bf16 tiles, rows past ``rows`` zero."""
    kv = pl.full([t.row_tile, t.kv_lora], pl.BF16, 0.0)
    pe = pl.full([t.row_tile, t.rope], pl.BF16, 0.0)
    for i in pl.range(rows):
        row = b * t.max_seq + pl.read(topk_idx, [b, j0 + i])
        kv = pl.gather_row(kv, kv_cache, [i, 0], [row, 0], [1, t.kv_lora])
        pe = pl.gather_row(pe, pe_cache, [i, 0], [row, 0], [1, t.rope])
    return kv, pe


def _gather(kv_cache, pe_cache, topk_idx, seq_lens, b: int, t: Tiling):
    """Entry ``b``'s selected cache rows, in top-k slot order, into GM work tensors
    ``[TOPK_pad, KL]`` / ``[TOPK_pad, R]`` bf16 (a partial last block padded with zero rows):
    gathered once per entry, read by every head group."""
    slots = -(-t.topk // t.row_tile) * t.row_tile
    sel_kv = pl.create_tensor([slots, t.kv_lora], dtype=pl.BF16)
    sel_pe = pl.create_tensor([slots, t.rope], dtype=pl.BF16)
    with pl.at(level=pl.Level.CORE_GROUP, name_hint="sparse_attn_gather"):
        n = _selected(seq_lens, b, t)
        for j0 in pl.range(0, n, t.row_tile):
            kv, pe = _gather_rows(kv_cache, pe_cache, topk_idx, b, j0,
                                  pl.min(t.row_tile, n - j0), t)
            sel_kv[j0:j0 + t.row_tile, :] = kv
            sel_pe[j0:j0 + t.row_tile, :] = pe
    return sel_kv, sel_pe


def _scores(ql, qp, kv, pe, t: Tiling):
    """``f32(f32(ql @ kvᵀ) + f32(qp @ peᵀ)) · scale`` → fp32 ``[HG, TB]``."""
    nope = pl.matmul(ql, kv, b_trans=True, out_dtype=pl.FP32)
    rope = pl.matmul(qp, pe, b_trans=True, out_dtype=pl.FP32)
    s = pl.mul(pl.add(nope, rope), t.scale)
    if s.shape[0] != t.head_group:
        s = pl.slice(s, [t.head_group, t.row_tile], [0, 0])
    return s


def _block(ql, qp, sel_kv, sel_pe, j0: int, n: int, t: Tiling):
    """Top-k slots ``j0 .. j0+TB`` of the entry: their kv rows as bf16 and widened to fp32
    ``[TB, KL]``, and the scores ``[HG, TB]`` — the slots past ``n`` scored −inf (zero
    probability; their kv rows are zero)."""
    hg, tb = t.head_group, t.row_tile
    kv = sel_kv[j0:j0 + tb, :]
    kvf = pl.cast(kv, target_type=pl.FP32)
    s = _scores(ql, qp, kvf, sel_pe[j0:j0 + tb, :], t)
    rows = pl.min(tb, n - j0)
    if rows < tb:
        s = pl.fillpad(pl.slice(s, [hg, tb], [0, 0], valid_shape=[hg, rows]),
                       pad_value=pl.PadValue.min)
    return kvf, kv, s


def _update(mi, li, oi, s, kv):
    """One block of the online softmax: ``m' = max(m, rowmax(s))``, ``α = exp(m − m')``,
    ``p = exp(s − m')``, ``l = α·l + Σp``, ``o = o·α + p @ kv`` (each one fp32 rounding; the
    first block starts from ``m = rowmax(s)``, ``l = Σp``, ``o = p @ kv``)."""
    block_max = pl.row_max(s)
    mi_new = block_max if mi is None else pl.maximum(mi, block_max)
    p = pl.exp(pl.row_expand_sub(s, mi_new))
    pv = pl.matmul(_cube_rows(p), kv, out_dtype=pl.FP32)
    if pv.shape[0] != p.shape[0]:
        pv = pl.slice(pv, [p.shape[0], kv.shape[1]], [0, 0])
    if mi is None:
        return mi_new, pl.row_sum(p), pv
    alpha = pl.exp(pl.sub(mi, mi_new))
    li = pl.add(pl.mul(alpha, li), pl.row_sum(p))
    oi = pl.add(pl.row_expand_mul(oi, alpha), pv)
    return mi_new, li, oi


def _selected(seq_lens, b: int, t: Tiling) -> int:
    """``n_b = min(TOPK, seq_lens[b])``: the top-k slots of entry ``b`` that hold a position."""
    return pl.min(t.topk, pl.read(seq_lens, [b]))


def _online(ql, qp, sel_kv, sel_pe, n: int, t: Tiling):
    """The online softmax over the ``n`` selected rows, ``TB`` at a time → fp32 ``o / l``."""
    mi = li = oi = None
    for j0 in pl.range(0, n, t.row_tile):
        kvf, _, s = _block(ql, qp, sel_kv, sel_pe, j0, n, t)
        mi, li, oi = _update(mi, li, oi, s, kvf)
    return pl.row_expand_div(oi, li)


def _plain(ql, qp, sel_kv, sel_pe, n: int, t: Tiling):
    """ds32's softmax, three passes over the ``n`` selected rows (the scores recomputed in
    each): the row max ``m``; ``Σ e``, ``e = exp(s − m)``; ``Σ bf16(e / Σe) @ kv`` → fp32."""
    hg = t.head_group
    m = total = acc = None
    for j0 in pl.range(0, n, t.row_tile):
        block_max = pl.row_max(_block(ql, qp, sel_kv, sel_pe, j0, n, t)[2])
        m = block_max if m is None else pl.maximum(m, block_max)
    for j0 in pl.range(0, n, t.row_tile):
        s = _block(ql, qp, sel_kv, sel_pe, j0, n, t)[2]
        block_sum = pl.row_sum(pl.exp(pl.row_expand_sub(s, m)))
        total = block_sum if total is None else pl.add(total, block_sum)
    for j0 in pl.range(0, n, t.row_tile):
        _, kv, s = _block(ql, qp, sel_kv, sel_pe, j0, n, t)
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
    for b in pl.parallel(0, nb, 1):
        sel_kv, sel_pe = _gather(kv_cache, pe_cache, topk_idx, seq_lens, b, t)
        for h0 in pl.parallel(0, t.heads, hg):
            with pl.at(level=pl.Level.CORE_GROUP, name_hint="sparse_attn"):
                n = _selected(seq_lens, b, t)
                r0 = b * t.heads + h0
                ql = _cube_rows(q_lat[r0:r0 + hg, :])
                qp = _cube_rows(q_pe[r0:r0 + hg, :])
                ctx = softmax(ql, qp, sel_kv, sel_pe, n, t)
                ctx_out[r0:r0 + hg, :] = pl.cast(ctx, target_type=pl.BF16, mode=t.mode)
