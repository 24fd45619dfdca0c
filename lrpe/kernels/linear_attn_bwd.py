"""Backward Triton kernels of ``linear_attn_fwd``: dq in one, dk and dv in the other, one program per
(batch x head), full widths. With G = dO V^T and P = Q~ K~^T (each masked to t <= s when causal):

    dQ~ = G K~            causal: a forward scan with state T = sum_t v_t k~_t^T (DV x W)
    dK~ = G^T Q~          causal: a reverse scan with state U = sum_s q~_s do_s^T (W x DV)
    dV  = P^T dO                  (the same reverse scan: dV_c = tril(P_c)^T dO_c + K~_c U_{>c})

dQ~, dK~ go through the adjoint of the feature map and LRPE (``_store_feature_grad``) before they are stored,
so transformed features never touch memory here either. Shapes as in the forward; dq, dk, dv come out in
the dtypes of q, k, v.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lrpe.kernels.features import _features, _mm, _store_feature_grad


@triton.jit
def lrpe_linear_bwd_dq(Q, K, V, DO, DQ, COS_C, SIN_C, COS_F, SIN_F, MEMBERS, START, POS, LENGTH,
                       n, offset, H, n_chunks, angle_heads, perm_heads,
                       D: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                       KIND: tl.constexpr, TWO: tl.constexpr, CAUSAL: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    dt = V.dtype.element_ty
    h = bh % H
    coarse_off = (h % angle_heads) * n_chunks * W
    fine_off = (h % angle_heads) * C * W
    perm_off = (h % perm_heads) * D
    q_base, k_base, dq_base = Q + bh * n * D, K + bh * n * D, DQ + bh * n * D
    v_base, do_base = V + bh * n * DV, DO + bh * n * DV
    i = tl.arange(0, C)
    cols = tl.arange(0, DV)
    t1 = tl.zeros((DV, W), dtype=tl.float32)
    t2 = tl.zeros((DV, W), dtype=tl.float32)
    if not CAUSAL:
        for c in range(0, n_chunks):
            rows = c * C + i
            rmask = rows < n
            k1, k2 = _features(k_base, rows, rmask, c, offset + rows, COS_C, SIN_C, COS_F, SIN_F, coarse_off,
                               fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
            v = tl.load(v_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
            t1 += _mm(tl.trans(v), k1, dt)
            if TWO:
                t2 += _mm(tl.trans(v), k2, dt)
    for c in range(0, n_chunks):
        rows = c * C + i
        rmask = rows < n
        s = offset + rows
        do = tl.load(do_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
        dq1 = _mm(do, t1, dt)
        dq2 = dq1
        if TWO:
            dq2 = _mm(do, t2, dt)
        if CAUSAL:
            k1, k2 = _features(k_base, rows, rmask, c, s, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
                               MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
            v = tl.load(v_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
            g = tl.where(i[:, None] >= i[None, :], _mm(do, tl.trans(v), dt), 0.0)
            dq1 += _mm(g, k1, dt)
            t1 += _mm(tl.trans(v), k1, dt)
            if TWO:
                dq2 += _mm(g, k2, dt)
                t2 += _mm(tl.trans(v), k2, dt)
        _store_feature_grad(q_base, dq_base, rows, rmask, c, s, dq1, dq2, COS_C, SIN_C, COS_F, SIN_F,
                            coarse_off, fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)


@triton.jit
def lrpe_linear_bwd_dkdv(Q, K, V, DO, DK, DV_, COS_C, SIN_C, COS_F, SIN_F, MEMBERS, START, POS, LENGTH,
                         n, offset, H, n_chunks, angle_heads, perm_heads,
                         D: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, C: tl.constexpr,
                         KIND: tl.constexpr, TWO: tl.constexpr, CAUSAL: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    dt = V.dtype.element_ty
    h = bh % H
    coarse_off = (h % angle_heads) * n_chunks * W
    fine_off = (h % angle_heads) * C * W
    perm_off = (h % perm_heads) * D
    q_base, k_base, dk_base = Q + bh * n * D, K + bh * n * D, DK + bh * n * D
    v_base, do_base, dv_base = V + bh * n * DV, DO + bh * n * DV, DV_ + bh * n * DV
    i = tl.arange(0, C)
    cols = tl.arange(0, DV)
    u1 = tl.zeros((W, DV), dtype=tl.float32)
    u2 = tl.zeros((W, DV), dtype=tl.float32)
    if not CAUSAL:
        for c in range(0, n_chunks):
            rows = c * C + i
            rmask = rows < n
            q1, q2 = _features(q_base, rows, rmask, c, offset + rows, COS_C, SIN_C, COS_F, SIN_F, coarse_off,
                               fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
            do = tl.load(do_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
            u1 += _mm(tl.trans(q1), do, dt)
            if TWO:
                u2 += _mm(tl.trans(q2), do, dt)
    for step in range(0, n_chunks):
        # Causal: last chunk first, so that U holds the later chunks' queries.
        c = n_chunks - 1 - step if CAUSAL else step
        rows = c * C + i
        rmask = rows < n
        s = offset + rows
        k1, k2 = _features(k_base, rows, rmask, c, s, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
                           MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
        v = tl.load(v_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
        dk1 = _mm(v, tl.trans(u1), dt)
        dk2 = dk1
        dv = _mm(k1, u1, dt)
        if TWO:
            dk2 = _mm(v, tl.trans(u2), dt)
            dv += _mm(k2, u2, dt)
        if CAUSAL:
            q1, q2 = _features(q_base, rows, rmask, c, s, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
                               MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
            do = tl.load(do_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None], other=0.0)
            keep = i[:, None] >= i[None, :]
            g = tl.where(keep, _mm(do, tl.trans(v), dt), 0.0)
            p = _mm(q1, tl.trans(k1), dt)
            dk1 += _mm(tl.trans(g), q1, dt)
            u1 += _mm(tl.trans(q1), do, dt)
            if TWO:
                p += _mm(q2, tl.trans(k2), dt)
                dk2 += _mm(tl.trans(g), q2, dt)
                u2 += _mm(tl.trans(q2), do, dt)
            dv += _mm(tl.trans(tl.where(keep, p, 0.0)), do, dt)
        tl.store(dv_base + rows[:, None] * DV + cols[None, :], dv.to(DV_.dtype.element_ty), mask=rmask[:, None])
        _store_feature_grad(k_base, dk_base, rows, rmask, c, s, dk1, dk2, COS_C, SIN_C, COS_F, SIN_F,
                            coarse_off, fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, C)
