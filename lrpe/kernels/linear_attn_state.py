"""Pass 1 of the segment-parallel kernels: each segment's local state ``sum_{t in segment} k~_t v_t^T``.

A head's N / C chunks are cut into segments of ``seg_chunks`` consecutive chunks (the last may be shorter).
One program per (batch x head, block of BV value columns, segment) sums its segment's chunks and stores the
float32 state (W x BV per feature tile) to ``STATE[bh, segment, tile, :, value block]``, STATE being
(B H, S, TILES, W, DV) with TILES = 2 for the two-tile kinds. The host turns the local states into each
segment's starting state (an exclusive prefix over segments, in either direction, or the total), which
pass 2 (``lrpe_linear_fwd``, ``lrpe_linear_bwd_qk``) loads.

The same sum serves three places: on (k, v) it is the forward's state and, transposed, the dq state
(``sum v_t^T k~_t``); on (q, dO) it is the dv state (anti-causal) and, transposed, the dk state.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lrpe.kernels.features import _features, _mm, _table_offsets


@triton.jit
def lrpe_linear_state(K, V, STATE, COS_C, SIN_C, COS_F, SIN_F, MEMBERS, START, POS, LENGTH,
                      n, offset, H, n_chunks, seg_chunks, angle_heads, perm_heads,
                      D: tl.constexpr, DV: tl.constexpr, W: tl.constexpr, BV: tl.constexpr, C: tl.constexpr,
                      KIND: tl.constexpr, TWO: tl.constexpr, FEATURE: tl.constexpr):
    """K: (B, H, N, D) projections whose features are summed; V: (B, H, N, DV); STATE: see the module."""
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    seg = tl.program_id(2)
    n_segs = tl.num_programs(2)
    dt = V.dtype.element_ty
    coarse_off, fine_off, perm_off = _table_offsets(bh, H, angle_heads, perm_heads, n_chunks, W, C, D)
    k_base, v_base = K + bh * n * D, V + bh * n * DV
    cols = vb * BV + tl.arange(0, BV)
    cmask = cols < DV
    i = tl.arange(0, C)
    # The state in the orientation whose dot has the larger M (wgmma on sm_90 needs M >= 64): (W, BV), or
    # (BV, W) = its transpose when W < BV (orthogonal D = 64: W = 32); stored as (W, BV) either way.
    ROWS: tl.constexpr = W >= BV
    s1 = tl.zeros((W, BV) if ROWS else (BV, W), dtype=tl.float32)
    s2 = tl.zeros((W, BV) if ROWS else (BV, W), dtype=tl.float32)
    first = seg * seg_chunks
    for c in range(first, tl.minimum(first + seg_chunks, n_chunks)):
        rows = c * C + i
        rmask = rows < n
        k1, k2 = _features(k_base, rows, rmask, c, offset + rows, 0, COS_C, SIN_C, COS_F, SIN_F, coarse_off,
                           fine_off, MEMBERS, START, POS, LENGTH, perm_off, KIND, D, W, W, C, FEATURE)
        v = tl.load(v_base + rows[:, None] * DV + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        if ROWS:
            s1 += _mm(tl.trans(k1), v, dt)
            if TWO:
                s2 += _mm(tl.trans(k2), v, dt)
        else:
            s1 += _mm(tl.trans(v), k1, dt)
            if TWO:
                s2 += _mm(tl.trans(v), k2, dt)
    out = STATE + (bh * n_segs + seg) * ((2 if TWO else 1) * W * DV)
    if ROWS:
        out += tl.arange(0, W)[:, None] * DV + cols[None, :]
        smask = cmask[None, :]
    else:
        out += cols[:, None] + tl.arange(0, W)[None, :] * DV
        smask = cmask[:, None]
    tl.store(out, s1, mask=smask)
    if TWO:
        tl.store(out + W * DV, s2, mask=smask)
