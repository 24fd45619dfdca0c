"""Rotary position embedding (RoFormer, Su et al.), MATH.md section 3.

``rope(x)_m = R(m theta) x_m``: coordinate pairs of the token at position m rotate by ``m theta_i`` with
``theta_i = base ** (-2 i / D)``, i < D/2, so that ``rope(q)_m . rope(k)_n = q^T R((n - m) theta) k``.
Two pairings ("layouts") exist and are not interchangeable: "interleaved" pairs (2i, 2i+1) as in RoFormer,
"half" pairs (i, i + D/2) as in GPT-NeoX. The frequencies, positions and the rotation itself come from
``lrpe.rotation``, the one place those formulas live; angles are float32 (float64 for float64 inputs).

Used with softmax attention by rotating q and k; with linear attention the suite rotates phi(q), phi(k) in the
numerator and keeps the unrotated features in the denominator (RoFormer Eq. 19).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from lrpe.rotation import LAYOUTS, Layout, angle_dtype, inverse_frequencies, rotate_pairs, rotation_angles


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _check_head_dim(head_dim: int) -> None:
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim >= 2, got {head_dim}")


@lru_cache(maxsize=64)
def _theta(head_dim: int, base: float, device: torch.device) -> Tensor:
    # Cached per device so a forward on GPU does not copy the frequencies from the host at every call;
    # kept in float64 and cast to the angle dtype by rotation_angles.
    return inverse_frequencies(head_dim // 2, head_dim, base).to(device)


def apply_rope(x: Tensor, *, offset: int = 0, base: float = 10000.0, layout: Layout = "half") -> Tensor:
    """Rotate x (B, H, N, D) by the RoPE angles of positions ``offset + arange(N)``.

    D must be even. Returns a tensor of x's shape and dtype; angles and the rotation are computed in
    float32 (float64 for float64 input), so low-precision inputs keep accurate angles at large offsets.
    """
    _check_layout(layout)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, H, N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    head_dim = x.shape[-1]
    _check_head_dim(head_dim)
    theta = _theta(head_dim, float(base), x.device)
    angles = rotation_angles(theta, x.shape[-2], offset, angle_dtype(x.dtype))
    return rotate_pairs(x, angles.cos(), angles.sin(), layout)


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

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if x.dim() == 4 and x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have head_dim {self.head_dim} last, got {tuple(x.shape)}")
        return apply_rope(x, offset=offset, base=self.base, layout=self.layout)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}"
