"""Rotary position embedding (RoFormer, Su et al.), docs/math.md section 3.

``rope(x)_m = R(m theta) x_m``: coordinate pairs of the token at position m rotate by ``m theta_i`` with
``theta_i = base ** (-2 i / D)``, i < D/2, so that ``rope(q)_m . rope(k)_n = q^T R((n - m) theta) k``.
Two pairings ("layouts") exist and are not interchangeable: "interleaved" pairs (2i, 2i+1) as in RoFormer,
"half" pairs (i, i + D/2) as in GPT-NeoX. The frequencies, positions and the rotation itself come from
``lrpe.rotation``, the one place those formulas live. cos and sin come from ``position_phasors``: float64
angles rounded once to float32 (float64 for float64 inputs), as LRPE's, so at position 60000 they are exact to
a few float32 ulp where a float32 angle (Hugging Face's and rotary-embedding-torch's way) is off by 6.6e-3.

Used with softmax attention by rotating q and k; with linear attention the suite rotates phi(q), phi(k) in the
numerator and keeps the unrotated features in the denominator (RoFormer Eq. 19).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn

from lrpe.checks import check_pair
from lrpe.rotation import (
    LAYOUTS,
    Layout,
    angle_dtype,
    inverse_frequencies,
    position_phasors,
    rotate_half_split,
    rotate_interleaved,
)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _check_head_dim(head_dim: int) -> None:
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim >= 2, got {head_dim}")


@lru_cache(maxsize=64)
def _theta(head_dim: int, base: float, device: torch.device) -> Tensor:
    # Built on the device (no host-to-device copy) once per device, in float64 for position_phasors.
    return inverse_frequencies(head_dim // 2, head_dim, base, device=device)


def _check_input(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    _check_head_dim(x.shape[-1])


def rope_phasors(n: int, head_dim: int, *, offset: int = 0, base: float = 10000.0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """``exp(i (offset + s) theta_j)`` for s < n, j < head_dim / 2: (n, head_dim / 2), complex of ``dtype``
    (the compute dtype: float32 or float64), from ``position_phasors``."""
    return position_phasors(_theta(head_dim, float(base), torch.device(device)), n, offset, dtype)


def rotate(xs: Tensor | Sequence[Tensor], phasors: Tensor, layout: Layout, *, inplace: bool = False
           ) -> Tensor | list[Tensor]:
    """x (B, H, N, D), or several of one shape (q and k), rotated by ``phasors`` (N, D/2) in ``layout``;
    each result has its x's shape and dtype (a list for a sequence).

    Computed in the phasors' precision. Both layouts take the same care as LRPE-orthogonal: one pass and one
    output allocation, none with ``inplace`` (x is a temporary the caller gives up, outside autograd; a
    float32/float64 x is then overwritten). A bfloat16/float16 x is rotated in a float32 copy.
    """
    single = isinstance(xs, Tensor)
    xs = [xs] if single else list(xs)
    compute = phasors.real.dtype
    xc = [x.to(compute) for x in xs]
    # x.to() made a copy for half inputs: that copy is ours to overwrite whatever the caller said.
    own = [(inplace or c is not x) and not (torch.is_grad_enabled() and c.requires_grad)
           for x, c in zip(xs, xc, strict=True)]
    if layout == "interleaved":
        # one complex multiply, as LRPE-orthogonal: the pairs (2i, 2i+1) are complex numbers
        out = [rotate_interleaved(c, phasors, inplace=o) for c, o in zip(xc, own, strict=True)]
    else:
        out = rotate_half_split(xc, phasors, inplace=all(own))
    out = [o.to(x.dtype) for o, x in zip(out, xs, strict=True)]
    return out[0] if single else out


def apply_rope(x: Tensor, *, offset: int = 0, base: float = 10000.0, layout: Layout = "half") -> Tensor:
    """Rotate x (B, H, N, D) by the RoPE angles of positions ``offset + arange(N)``.

    D must be even. Returns a new tensor of x's shape and dtype. The phasors exp(i (offset + s) theta_j) come
    from ``position_phasors`` (float64 angles, rounded once) and the rotation is computed in float32 (float64
    for float64 input), so every input dtype keeps accurate angles at large offsets.
    """
    _check_layout(layout)
    _check_input(x)
    phasors = rope_phasors(x.shape[-2], x.shape[-1], offset=offset, base=base, device=x.device,
                           dtype=angle_dtype(x.dtype))
    return rotate(x, phasors, layout)


def rope_matrix(r: float, head_dim: int, *, base: float = 10000.0, layout: Layout = "half") -> Tensor:
    """The rotation R(r theta) of RoPE as an explicit (D, D) float64 matrix, in ``layout``'s pairing.

    ``apply_rope`` at position m multiplies each token by ``rope_matrix(m, ...)``; it is the oracle for the
    identity ``rope(q)_m . rope(k)_n = q^T rope_matrix(n - m) k``. Built by placing each 2 x 2 block
    [[cos, -sin], [sin, cos]] at the pair's indices, independently of ``rotate_pairs``.
    """
    _check_layout(layout)
    _check_head_dim(head_dim)
    half = head_dim // 2
    angle = r * inverse_frequencies(half, head_dim, base)
    i = torch.arange(half)
    first, second = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + half)
    out = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    out[first, first] = angle.cos()
    out[first, second] = -angle.sin()
    out[second, first] = angle.sin()
    out[second, second] = angle.cos()
    return out


class RoPE(nn.Module):
    """RoPE as a positional module: ``forward(x, offset=0)`` maps x (B, H, N, head_dim) to the same shape.

    ``offset`` is the position of the first token (decoding passes the length of the cache). The frequencies
    are fixed, not learned, and are not stored as a buffer, so casting the module never degrades them.
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0, layout: Layout = "half") -> None:
        super().__init__()
        _check_head_dim(head_dim)
        _check_layout(layout)
        if not base > 0:
            raise ValueError(f"base must be > 0, got {base}")
        self.head_dim = head_dim
        self.base = float(base)
        self.layout = layout

    def _check(self, x: Tensor) -> None:
        _check_input(x)
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have head_dim {self.head_dim} last, got {tuple(x.shape)}")

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        self._check(x)
        return apply_rope(x, offset=offset, base=self.base, layout=self.layout)

    def forward_pair(self, q: Tensor, k: Tensor, offset: int = 0, *, inplace: bool = False
                     ) -> tuple[Tensor, Tensor]:
        """``(forward(q, offset), forward(k, offset))`` for q, k of one shape, the phasors computed once (as
        ``lrpe.LRPE.forward_pair``, which attention cores call the same way).

        inplace: q and k are temporaries the caller gives up (outside autograd): they may be overwritten and
        returned, as LRPE-orthogonal does with its features."""
        check_pair(q, k)
        self._check(q)
        phasors = rope_phasors(q.shape[-2], self.head_dim, offset=offset, base=self.base, device=q.device,
                               dtype=angle_dtype(q.dtype))
        qr, kr = rotate((q, k), phasors, self.layout, inplace=inplace)
        return qr, kr

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}"
