"""Backward Triton kernel (pass 2) for the gradients of the projections q and k (dV reuses the forward kernel).

With transformed features q~, k~ and G[s, t] = do_s . v_t (masked to t <= s when causal):

    dq~_s = sum_{t <= s} (do_s . v_t) k~_t          dk~_t = sum_{s >= t} (v_t . do_s) q~_s

Both read ``g_r = sum_{r' in window(r)} (a_r . b_r') f_r'``: for dq (a, b, f) = (dO, V, k~) over earlier
rows, for dk (a, b, f) = (V, dO, q~) over later rows (REVERSE). One program per (batch x head, block of BW
feature columns, segment): every LRPE kind acts on each feature column or pair alone, so a block of dq~
columns maps to its own input columns through the adjoint of phi and the transform (``_store_feature_grad``),
and the state ``T = sum b_r'^T f_r'`` (DV x BW per tile, float32) stays small. A program walks its segment's
chunks from the segment's starting state, which INIT holds transposed: T^T is pass 1's ``sum f^T b``
(``linear_attn_state`` on (XF, B)), in the (W, DV) tile layout of ``linear_attn_fwd``'s INIT; non-causal:
the total state, the same for every segment.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lrpe.kernels.features import _features, _mm, _store_feature_grad, _table_offsets


@triton.jit
def lrpe_linear_bwd_qk(A, B, XF, XG, DXG, INIT, COS_C, SIN_C, COS_F, SIN_F, MEMBERS, START, POS, LENGTH,
                       n, offset, H, n_chunks, seg_chunks, init_bh_stride, init_seg_stride, angle_heads,
                       perm_heads,
                       D: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, BW: tl.constexpr, C: tl.constexpr,
                       KIND: tl.constexpr, TWO: tl.constexpr, CAUSAL: tl.constexpr, REVERSE: tl.constexpr,
                       FEATURE: tl.constexpr):
    """A, B: (B, H, N, DV) (dO and V, or V and dO); XF: the projections whose features are summed (k or q);
    XG, DXG: the projections whose gradient this computes, and that gradient (q and dq, or k and dk)."""
    bh = tl.program_id(0).to(tl.int64)
    wb = tl.program_id(1)
    seg = tl.program_id(2)
    dt = A.dtype.element_ty
    coarse_off, fine_off, perm_off = _table_offsets(bh, H, angle_heads, perm_heads, n_chunks, W, C, D)
    xf_base, xg_base, dxg_base = XF + bh * n * D, XG + bh * n * D, DXG + bh * n * D
    a_base, b_base = A + bh * n * DV, B + bh * n * DV
    i = tl.arange(0, C)
    cols = tl.arange(0, DV)
    # T (DV, BW) is the transpose of rows [wb BW, (wb + 1) BW) of the (W, DV) tile.
    feats = wb * BW + tl.arange(0, BW)
    init = INIT + bh * init_bh_stride + seg * init_seg_stride + feats[None, :] * DV + cols[:, None]
    t1 = tl.load(init)
    t2 = t1
    if TWO:
        t2 = tl.load(init + W * DV)
    first = seg * seg_chunks
    count = tl.minimum(seg_chunks, n_chunks - first)
    for step in range(0, count):
        c = first + count - 1 - step if REVERSE else first + step
        rows = c * C + i
        rmask = rows < n
        s = offset + rows
        a = tl.load(a_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
        g1 = _mm(a, t1, dt)
        g2 = g1
        if TWO:
            g2 = _mm(a, t2, dt)
        if CAUSAL:
            f1, f2 = _features(xf_base, rows, rmask, c, s, wb, COS_C, SIN_C, COS_F, SIN_F, coarse_off,
                               fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, BW, C, FEATURE)
            b = tl.load(b_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
            ab = _mm(a, tl.trans(b), dt)
            keep = (i[:, None] <= i[None, :]) if REVERSE else (i[:, None] >= i[None, :])
            ab = tl.where(keep, ab, 0.0)
            g1 += _mm(ab, f1, dt)
            t1 += _mm(tl.trans(b), f1, dt)
            if TWO:
                g2 += _mm(ab, f2, dt)
                t2 += _mm(tl.trans(b), f2, dt)
        _store_feature_grad(xg_base, dxg_base, rows, rmask, c, s, wb, g1, g2, COS_C, SIN_C, COS_F, SIN_F,
                            coarse_off, fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, BW, C, FEATURE)
