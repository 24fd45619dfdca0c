"""Positions, rotation frequencies and pairwise rotation: the one place these formulas live.

LRPE-orthogonal, LRPE-unitary and RoPE (``baselines.rope``) all build on these functions, so the
frequency formula ``theta_j = base ** (-2 j / head_dim)`` and the rotation of a pair of coordinates are
written once.

Position-dependent factors (``position_phasors``) are built from float64 angles and rounded once to the
compute dtype (float32, or float64 for float64 input), whatever the input dtype: a float32 angle
``s * theta`` is already off by ulp(s theta) (6.6e-3 rad near s = 60000), and a bfloat16 position is inexact
beyond 256. LRPE, RoPE and sinusoidal APE all take their cos/sin from ``position_phasors``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Layout = Literal["interleaved", "half"]
LAYOUTS: tuple[str, ...] = ("interleaved", "half")


def angle_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype angles are computed in for inputs of ``dtype``: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def inverse_frequencies(count: int, head_dim: int, base: float = 10000.0, *,
                        device: torch.device | str | None = None) -> Tensor:
    """``theta_j = base ** (-2 j / head_dim)`` for ``j = 0 .. count - 1``, shape (count,), float64, built on
    ``device`` (no host-to-device copy).

    RoPE and LRPE-orthogonal use ``count = head_dim // 2`` (one angle per pair); the LRPE paper's unitary
    variant uses ``count = head_dim`` (one angle per coordinate).
    """
    if count < 1 or head_dim < 1:
        raise ValueError(f"count and head_dim must be >= 1, got count={count}, head_dim={head_dim}")
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    j = torch.arange(count, dtype=torch.float64, device=device)
    return base ** (-2.0 * j / head_dim)


def positions(n: int, offset: int = 0, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """Token positions ``offset + arange(n)``, shape (n,)."""
    return torch.arange(offset, offset + n, device=device, dtype=dtype)


def rotation_angles(theta: Tensor, n: int, offset: int, dtype: torch.dtype) -> Tensor:
    """Angles ``(offset + s) * theta_j`` for s < n.

    theta: (F,) shared by all heads, or (H, F) per head. Returns (n, F) or (H, n, F) in ``dtype``, which
    broadcasts against inputs of shape (B, H, n, ...).
    """
    pos = positions(n, offset, device=theta.device, dtype=dtype)
    theta = theta.to(dtype)
    if theta.dim() == 1:
        return pos[:, None] * theta[None, :]
    return pos[None, :, None] * theta[:, None, :]


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor, layout: Layout = "interleaved") -> Tensor:
    """Rotate coordinate pairs of ``x`` (..., D) by the angles whose cos/sin are given, shape (..., D/2).

    layout "interleaved" pairs (2i, 2i+1); "half" pairs (i, i + D/2) (the GPT-NeoX layout). Each pair (a, b)
    becomes (a cos - b sin, a sin + b cos). Computed in ``cos.dtype`` and returned in ``x.dtype``.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotation needs an even last dimension, got {d}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    xc = x.to(cos.dtype)
    if layout == "interleaved":
        a, b = xc[..., 0::2], xc[..., 1::2]
    else:
        a, b = xc[..., : d // 2], xc[..., d // 2 :]
    ra = a * cos - b * sin
    rb = a * sin + b * cos
    out = torch.stack((ra, rb), dim=-1).flatten(-2) if layout == "interleaved" else torch.cat((ra, rb), dim=-1)
    return out.to(x.dtype)


def position_phasors(theta: Tensor, n: int, offset: int, dtype: torch.dtype) -> Tensor:
    """``exp(i (offset + s) theta_j)`` for s < n: (n, F), or (H, n, F) for theta (H, F); complex of ``dtype``.

    ``dtype`` is the real angle dtype (float32 -> complex64, float64 -> complex128). Each position is split as
    s = b a + c with b about sqrt(n), and the phasor is the product of two small tables exp(i (offset + b a)
    theta) and exp(i c theta) computed with float64 angles. That costs O(sqrt(n) F) trigonometry instead of
    O(n F), and it is more accurate than a float32 angle, which is already off by ulp(s theta) (2e-3 rad at
    s = 65536): the error is a few ulp of ``dtype`` at any position. Differentiable in theta.
    """
    block = max(1, math.isqrt(n - 1) + 1) if n > 0 else 1
    rows = -(-n // block)
    complex_dtype = dtype.to_complex()
    theta64 = theta.to(torch.float64)
    coarse = rotation_angles(theta64 * block, rows, 0, torch.float64) + offset * theta64[..., None, :]
    fine = rotation_angles(theta64, block, 0, torch.float64)
    coarse = torch.polar(torch.ones_like(coarse), coarse).to(complex_dtype)
    fine = torch.polar(torch.ones_like(fine), fine).to(complex_dtype)
    table = coarse[..., :, None, :] * fine[..., None, :, :]
    return table.flatten(-3, -2)[..., :n, :]


def _check_phasors(x: Tensor, phasors: Tensor, what: str) -> None:
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotation needs an even last dimension, got {d}")
    if x.dtype not in (torch.float32, torch.float64) or phasors.dtype != x.dtype.to_complex():
        raise ValueError(
            f"{what} needs float32/float64 x and phasors of the matching complex dtype, "
            f"got {x.dtype} and {phasors.dtype}"
        )


def rotate_interleaved(x: Tensor, phasors: Tensor, *, inplace: bool = False) -> Tensor:
    """``rotate_pairs(x, cos, sin, "interleaved")`` as one complex multiply, given ``phasors = cos + i sin``.

    x: (..., D) float32 or float64 with D even; phasors: (..., D/2) complex of x's precision (see
    ``position_phasors``), broadcastable against x's pairs. Each pair (2i, 2i+1) is read as the complex number
    x[2i] + i x[2i+1] and multiplied by exp(i angle_i): the same rotation (a cos - b sin, a sin + b cos), in
    one elementwise pass and one output allocation instead of the several temporaries of the real form (this
    is LRPE-orthogonal's hot path). Returns (..., D) in x's dtype; differentiable in x and in the phasors.
    With ``inplace`` the product overwrites x where x's layout allows a complex view (x is returned): on a
    CPU, a fresh 64 MiB output costs ~25 ms of page faults against ~4 ms for the multiply itself.
    """
    _check_phasors(x, phasors, "rotate_interleaved")
    d = x.shape[-1]
    pairs = x.unflatten(-1, (d // 2, 2))
    # A complex view needs unit stride within the pair, and even strides and offset elsewhere.
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.clone(memory_format=torch.contiguous_format)
    elif inplace:
        torch.view_as_complex(pairs).mul_(phasors)
        return x
    return torch.view_as_real(torch.view_as_complex(pairs) * phasors).flatten(-2)


# Rows per block of the half-split rotation: about this many bytes of x, so that a block's swapped copy and
# its cos/sin tables stay in cache while the block is rotated (1 MiB measured fastest of 256 KiB..4 MiB).
_HALF_SPLIT_BLOCK_BYTES = 1 << 20


def _rotate_half_split_into(xs: Sequence[Tensor], phasors: Tensor, outs: Sequence[Tensor], *,
                            inverse: bool) -> None:
    """``outs[i] = R xs[i]`` in the half-split layout (``R^T xs[i]`` with ``inverse``), block by block over
    dim -2; every x of one shape, the tables of a block built once for all of them.

    Each pair (a_i, b_i) = (x[i], x[i + D/2]) becomes (a c - b s, a s + b c). Written as two full-width
    contiguous products, ``x * [c, c] + swap(x) * [-s, s]`` with ``swap(x) = [b, a]``: elementwise ops on the
    D/2-wide halves are strided and measured 3x slower than full-width ones on a CPU. Blocks of rows keep the
    swapped copy and the tables small (no full-size temporary), so an output may be its x (in place).
    """
    n, d = xs[0].shape[-2], xs[0].shape[-1]
    half = d // 2
    lead = max(1, xs[0].numel() // max(1, n * d))
    block = max(16, _HALF_SPLIT_BLOCK_BYTES // (lead * d * xs[0].element_size()))
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        p = phasors[..., rows, :]
        cos = torch.cat((p.real, p.real), dim=-1)
        sin = torch.cat((p.imag, p.imag), dim=-1)
        # (-s, s) rotates by the angle, (s, -s) by its opposite
        (sin[..., half:] if inverse else sin[..., :half]).neg_()
        for x, out in zip(xs, outs, strict=True):
            xb, ob = x[..., rows, :], out[..., rows, :]
            swapped = torch.cat((xb[..., half:], xb[..., :half]), dim=-1)  # read before ob (maybe xb) is written
            torch.mul(xb, cos, out=ob)
            ob.addcmul_(swapped, sin)


class _HalfSplitRotation(torch.autograd.Function):
    """Half-split rotation by fixed phasors; the backward rotates the gradient back (R^T = R(-angle)), so
    nothing of x's size is saved for it."""

    @staticmethod
    def forward(ctx, x: Tensor, phasors: Tensor) -> Tensor:
        ctx.save_for_backward(phasors)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        _rotate_half_split_into([x], phasors, [out], inverse=False)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (phasors,) = ctx.saved_tensors
        out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        _rotate_half_split_into([grad], phasors, [out], inverse=True)
        return out, None


def rotate_half_split(xs: Tensor | Sequence[Tensor], phasors: Tensor, *, inplace: bool = False
                      ) -> Tensor | list[Tensor]:
    """``rotate_pairs(x, cos, sin, "half")`` given ``phasors = cos + i sin``: RoPE's GPT-NeoX layout.

    xs: one x, or several of one shape and dtype (q and k: the tables are then built once), each (..., N, D)
    float32 or float64 with D even; phasors: (..., N, D/2) complex of x's precision, broadcastable against
    x's rows (see ``position_phasors``). Pair i is (x[i], x[i + D/2]). Returns the rotated x (a list for a
    sequence). The half-split counterpart of ``rotate_interleaved``, with the same care: one output
    allocation (none with ``inplace``, where each x is overwritten and returned), no full-size temporary, and
    a backward that only rotates the gradient. Differentiable in x; in the phasors too (then through the
    plain real form, ``rotate_pairs``), which RoPE's fixed angles never need. ``inplace`` is ignored when
    autograd records x.
    """
    single = isinstance(xs, Tensor)
    xs = [xs] if single else list(xs)
    for x in xs:
        _check_phasors(x, phasors, "rotate_half_split")
        if x.shape != xs[0].shape or x.dtype != xs[0].dtype:
            raise ValueError(f"every x must share one shape and dtype, got {xs[0].dtype} {tuple(xs[0].shape)} "
                             f"and {x.dtype} {tuple(x.shape)}")
    if phasors.shape[-2] != xs[0].shape[-2]:
        raise ValueError(f"phasors must have one row per position: x has N = {xs[0].shape[-2]}, "
                         f"phasors have {phasors.shape[-2]} rows")
    grad = torch.is_grad_enabled()
    if grad and phasors.requires_grad:
        outs = [rotate_pairs(x, phasors.real, phasors.imag, "half") for x in xs]
    elif grad and any(x.requires_grad for x in xs):
        outs = [_HalfSplitRotation.apply(x, phasors) for x in xs]
    else:
        outs = xs if inplace else [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in xs]
        _rotate_half_split_into(xs, phasors, outs, inverse=False)
    return outs[0] if single else outs
