"""Triton device helpers: the feature map and the LRPE transform applied to a chunk of rows, and their adjoint.

A chunk is C consecutive rows of one (batch, head) of a row-major (N, D) tensor. The transformed features of
a chunk are held as one or two float32 tiles (C, W), never written to memory:

- KIND_NONE: ``f1 = phi(x)``, W = D.
- KIND_UNITARY: ``f1 = phi(x) cos``, ``f2 = phi(x) sin`` (the doubled width 2D as two tiles), W = D.
- KIND_ORTHOGONAL: with a = phi(x[:, 0::2]), b = phi(x[:, 1::2]) (the interleaved pairs),
  ``f1 = a cos - b sin``, ``f2 = a sin + b cos``, W = D / 2. The dot product of two rotated rows is
  ``f1 . f1' + f2 . f2'``, the same as on the interleaved layout, so the order of coordinates inside the
  kernel does not matter (the state is internal).
- KIND_PERMUTATION: ``f1[:, j] = phi(x[:, pi^s(j)])``, a gathered load, W = D.

A kernel may take the tiles in column blocks of BW (the backward does): every transform above acts on each
feature column (or pair) alone, so a block of feature columns needs only its own input columns.

phi is 1 + elu (FEATURE_ELU1), or the identity (FEATURE_IDENTITY: the caller passes features already
mapped, e.g. by another feature map, and the kernels apply only the LRPE transform). The phasor of
position s = offset + c C + i is the product of a coarse table entry (row c, the chunk start, computed in
float64 on the host) and a fine one (row i < C): float32 error of a few ulp at any position, where a
float32 angle s theta would be off by ulp(s theta) (~4e-3 rad at s = 65535).
Rows at or past N give zero features (1 + elu(0) = 1 would not be zero).
"""

from __future__ import annotations

import triton
import triton.language as tl

KIND_NONE, KIND_UNITARY, KIND_ORTHOGONAL, KIND_PERMUTATION = 0, 1, 2, 3
FEATURE_ELU1, FEATURE_IDENTITY = 0, 1


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    # FEATURE_ELU1 (0): 1 + elu(x), x + 1 above zero, exp(x) at or below. FEATURE_IDENTITY (1): x.
    if FEATURE == 1:
        return x
    else:
        return tl.where(x > 0, x + 1.0, tl.exp(x))


@triton.jit
def _dphi(x, FEATURE: tl.constexpr):
    if FEATURE == 1:
        return tl.full(x.shape, 1.0, tl.float32)
    else:
        return tl.where(x > 0, 1.0, tl.exp(x))


@triton.jit
def _table_offsets(bh, H, angle_heads, perm_heads, n_chunks, W: tl.constexpr, C: tl.constexpr, D: tl.constexpr):
    """(coarse, fine, permutation) offsets of program row ``bh`` (batch x head) into the position tables, which
    are shared (their heads = 1: offset 0) or per head (heads = H)."""
    h = bh % H
    return (h % angle_heads) * n_chunks * W, (h % angle_heads) * C * W, (h % perm_heads) * D


@triton.jit
def _phasors(COS_C, SIN_C, COS_F, SIN_F, c, coarse_off, fine_off, f, W: tl.constexpr, C: tl.constexpr):
    """cos and sin (C, len(f)) of the chunk c's positions for the angle columns f: coarse (chunk start) times
    fine (row in chunk), tables of row length W."""
    i = tl.arange(0, C)
    cc = tl.load(COS_C + coarse_off + c * W + f)[None, :]
    sc = tl.load(SIN_C + coarse_off + c * W + f)[None, :]
    cf = tl.load(COS_F + fine_off + i[:, None] * W + f[None, :])
    sf = tl.load(SIN_F + fine_off + i[:, None] * W + f[None, :])
    return cc * cf - sc * sf, sc * cf + cc * sf


@triton.jit
def _perm_cols(MEMBERS, START, POS, LENGTH, perm_off, s, j):
    """pi^s(j) (C, len(j)) for the positions s (C,): members[start[j] + (pos[j] + s) mod length[j]]."""
    start = tl.load(START + perm_off + j)
    pos = tl.load(POS + perm_off + j)
    length = tl.load(LENGTH + perm_off + j)
    m = (pos[None, :] + s[:, None]) % length[None, :]
    return tl.load(MEMBERS + perm_off + start[None, :] + m)


@triton.jit
def _features(X, rows, rmask, c, s, wb, COS_C, SIN_C, COS_F, SIN_F, coarse_off, fine_off,
              MEMBERS, START, POS, LENGTH, perm_off,
              KIND: tl.constexpr, D: tl.constexpr, W: tl.constexpr, BW: tl.constexpr, C: tl.constexpr,
              FEATURE: tl.constexpr):
    """Feature columns [wb BW, (wb + 1) BW) of the transformed tiles (f1, f2) of the chunk's rows of X
    (row-major, width D), in X's dtype (they are only ever matmul operands); f2 = f1 for one-tile kinds."""
    m2 = rmask[:, None]
    f = wb * BW + tl.arange(0, BW)
    if KIND == 2:
        base = X + rows[:, None] * D + 2 * f[None, :]
        a = _phi(tl.load(base, mask=m2, other=0.0).to(tl.float32), FEATURE)
        b = _phi(tl.load(base + 1, mask=m2, other=0.0).to(tl.float32), FEATURE)
        cos, sin = _phasors(COS_C, SIN_C, COS_F, SIN_F, c, coarse_off, fine_off, f, W, C)
        f1 = a * cos - b * sin
        f2 = a * sin + b * cos
    elif KIND == 1:
        p = _phi(tl.load(X + rows[:, None] * D + f[None, :], mask=m2, other=0.0).to(tl.float32), FEATURE)
        cos, sin = _phasors(COS_C, SIN_C, COS_F, SIN_F, c, coarse_off, fine_off, f, W, C)
        f1 = p * cos
        f2 = p * sin
    elif KIND == 3:
        cols = _perm_cols(MEMBERS, START, POS, LENGTH, perm_off, s, f)
        f1 = _phi(tl.load(X + rows[:, None] * D + cols, mask=m2, other=0.0).to(tl.float32), FEATURE)
        f2 = f1
    else:
        f1 = _phi(tl.load(X + rows[:, None] * D + f[None, :], mask=m2, other=0.0).to(tl.float32), FEATURE)
        f2 = f1
    dt = X.dtype.element_ty
    return tl.where(m2, f1, 0.0).to(dt), tl.where(m2, f2, 0.0).to(dt)


@triton.jit
def _store_feature_grad(X, DX, rows, rmask, c, s, wb, df1, df2, COS_C, SIN_C, COS_F, SIN_F, coarse_off,
                        fine_off, MEMBERS, START, POS, LENGTH, perm_off,
                        KIND: tl.constexpr, D: tl.constexpr, W: tl.constexpr, BW: tl.constexpr, C: tl.constexpr,
              FEATURE: tl.constexpr):
    """The adjoint of ``_features`` for feature columns block wb: from d(f1), d(f2) (C, BW) float32, store
    dL/dX at the input columns they come from (each input column belongs to exactly one block)."""
    m2 = rmask[:, None]
    out_ty = DX.dtype.element_ty
    f = wb * BW + tl.arange(0, BW)
    if KIND == 2:
        off = rows[:, None] * D + 2 * f[None, :]
        xe = tl.load(X + off, mask=m2, other=0.0).to(tl.float32)
        xo = tl.load(X + off + 1, mask=m2, other=0.0).to(tl.float32)
        cos, sin = _phasors(COS_C, SIN_C, COS_F, SIN_F, c, coarse_off, fine_off, f, W, C)
        # The inverse rotation (transpose) of each pair, then phi'.
        da = (df1 * cos + df2 * sin) * _dphi(xe, FEATURE)
        db = (df2 * cos - df1 * sin) * _dphi(xo, FEATURE)
        tl.store(DX + off, da.to(out_ty), mask=m2)
        tl.store(DX + off + 1, db.to(out_ty), mask=m2)
    elif KIND == 1:
        off = rows[:, None] * D + f[None, :]
        x = tl.load(X + off, mask=m2, other=0.0).to(tl.float32)
        cos, sin = _phasors(COS_C, SIN_C, COS_F, SIN_F, c, coarse_off, fine_off, f, W, C)
        tl.store(DX + off, ((df1 * cos + df2 * sin) * _dphi(x, FEATURE)).to(out_ty), mask=m2)
    elif KIND == 3:
        # pi^s is a bijection per row: scattering to the gathered columns writes each element once.
        off = rows[:, None] * D + _perm_cols(MEMBERS, START, POS, LENGTH, perm_off, s, f)
        x = tl.load(X + off, mask=m2, other=0.0).to(tl.float32)
        tl.store(DX + off, (df1 * _dphi(x, FEATURE)).to(out_ty), mask=m2)
    else:
        off = rows[:, None] * D + f[None, :]
        x = tl.load(X + off, mask=m2, other=0.0).to(tl.float32)
        tl.store(DX + off, (df1 * _dphi(x, FEATURE)).to(out_ty), mask=m2)


@triton.jit
def _mm(a, b, dtype: tl.constexpr):
    """a @ b with float32 accumulation; operands in dtype (the input dtype). float32 operands take the 3xTF32
    split ("tf32x3": a = hi + lo in TF32, hi hi + hi lo + lo hi on tensor cores, about float32 accuracy; accepted
    by triton 3.6 and 3.9, whose interpreter computes any input_precision as one float32 numpy matmul)."""
    if dtype == tl.float32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="tf32x3")
    else:
        return tl.dot(a.to(dtype), b.to(dtype))
