"""Forward Triton kernel (pass 2): chunked linear attention (no denominator), phi = 1 + elu and LRPE fused.

One program per (batch x head, block of BV value columns, segment): it walks its segment's chunks
(``seg_chunks`` consecutive chunks, see ``linear_attn_state``) in order, starting from the state INIT holds
for the segment, and keeps ``S = sum_t k~_t v_t^T`` (W x BV per feature tile, float32) in registers:

    causal:     O_c = tril(Q~_c K~_c^T) V_c + Q~_c S_{<c},   then S += K~_c^T V_c
    non-causal: O_c = Q~_c S with S the total state of every chunk (INIT holds it for every segment)

With REVERSE (causal only) it walks its chunks backwards with triu and S_{>c}: the anti-causal sum
``o_t = sum_{s >= t} (q~_t . k~_s) v_s``, which is the backward's dV with (q, k, v) = (k, q, dO); INIT then
holds the sum over the later segments. Q~, K~ are the transformed features of ``features._features``; they
exist only in registers.
Shapes: q, k (B, H, N, D), v and out (B, H, N, DV), contiguous; any N (the last chunk is masked). INIT:
float32, tile t of segment g of head bh at ``INIT + bh init_bh_stride + g init_seg_stride + t W DV`` as a
row-major (W, DV) matrix (init_seg_stride = 0: one state for every segment).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lrpe.kernels.features import _features, _mm, _table_offsets


@triton.jit
def lrpe_linear_fwd(Q, K, V, OUT, INIT, COS_C, SIN_C, COS_F, SIN_F, MEMBERS, START, POS, LENGTH,
                    n, offset, H, n_chunks, seg_chunks, init_bh_stride, init_seg_stride, angle_heads, perm_heads,
                    D: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                    KIND: tl.constexpr, TWO: tl.constexpr, CAUSAL: tl.constexpr, REVERSE: tl.constexpr,
                    FEATURE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    seg = tl.program_id(2)
    dt = V.dtype.element_ty
    coarse_off, fine_off, perm_off = _table_offsets(bh, H, angle_heads, perm_heads, n_chunks, W, C, D)
    q_base, k_base = Q + bh * n * D, K + bh * n * D
    v_base, o_base = V + bh * n * DV, OUT + bh * n * DV
    cols = vb * BV + tl.arange(0, BV)
    cmask = cols < DV
    i = tl.arange(0, C)
    init = INIT + bh * init_bh_stride + seg * init_seg_stride + tl.arange(0, W)[:, None] * DV + cols[None, :]
    s1 = tl.load(init, mask=cmask[None, :], other=0.0)
    s2 = s1
    if TWO:
        s2 = tl.load(init + W * DV, mask=cmask[None, :], other=0.0)
    first = seg * seg_chunks
    count = tl.minimum(seg_chunks, n_chunks - first)
    for step in range(0, count):
        c = first + count - 1 - step if REVERSE else first + step
        rows = c * C + i
        rmask = rows < n
        vmask = rmask[:, None] & cmask[None, :]
        s = offset + rows
        q1, q2 = _features(q_base, rows, rmask, c, s, 0, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
                           MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, W, C, FEATURE)
        if CAUSAL:
            k1, k2 = _features(k_base, rows, rmask, c, s, 0, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
                               MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, W, C, FEATURE)
            v = tl.load(v_base + rows[:, None] * DV + cols[None, :], mask=vmask, other=0.0)
            scores = _mm(q1, tl.trans(k1), dt)
            out = _mm(q1, s1, dt)
            if TWO:
                scores += _mm(q2, tl.trans(k2), dt)
                out += _mm(q2, s2, dt)
            keep = (i[:, None] <= i[None, :]) if REVERSE else (i[:, None] >= i[None, :])
            scores = tl.where(keep, scores, 0.0)
            out += _mm(scores, v, dt)
            tl.store(o_base + rows[:, None] * DV + cols[None, :], out.to(dt), mask=vmask)
            s1 += _mm(tl.trans(k1), v, dt)
            if TWO:
                s2 += _mm(tl.trans(k2), v, dt)
        else:
            out = _mm(q1, s1, dt)
            if TWO:
                out += _mm(q2, s2, dt)
            tl.store(o_base + rows[:, None] * DV + cols[None, :], out.to(dt), mask=vmask)
