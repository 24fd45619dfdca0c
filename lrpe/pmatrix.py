"""The orthogonal matrix P of LRPE (docs/math.md section 2, "The P matrix"): M_s = Lambda^s P.

Each P is an nn.Module: ``forward(x)`` applies P to the last dimension of x (..., D), i.e. ``x' = P x`` for
column vectors, and ``matrix()`` returns P as a float64 tensor, (D, D), or (H, D, D) when built per head
(``num_heads`` given; then x is (..., H, N, D) and head h uses P[h]).

- "identity": P = I.
- "householder": ``P = I - 2 v v^T / |v|^2`` with v drawn from a seeded generator (a buffer).
- "householder-learned": the same reflection with v an nn.Parameter initialised to the same draw.
- "oddeven": ``out[2i] = x[i]``, ``out[2i+1] = x[ceil(D/2) + i]``; it turns the interleaved rotation that
  follows it into a half-split rotation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

P_CHOICES: tuple[str, ...] = ("identity", "householder", "householder-learned", "oddeven")


def oddeven_index(d: int) -> Tensor:
    """Index (d,) such that ``x[..., oddeven_index(d)]`` interleaves the two halves of x.

    ``out[2i] = x[i]`` and ``out[2i+1] = x[ceil(d/2) + i]``; for odd d the first half is the longer one.
    """
    if d < 1:
        raise ValueError(f"head_dim must be >= 1, got {d}")
    half = (d + 1) // 2
    index = torch.empty(d, dtype=torch.long)
    index[0::2] = torch.arange(half)
    index[1::2] = torch.arange(half, d)
    return index


class _PMatrix(nn.Module):
    """Shared bookkeeping: the width, the optional head count, and the per-head shape of ``matrix()``."""

    def __init__(self, head_dim: int, num_heads: int | None) -> None:
        super().__init__()
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        if num_heads is not None and num_heads < 1:
            raise ValueError(f"num_heads must be >= 1 or None, got {num_heads}")
        self.head_dim = head_dim
        self.num_heads = num_heads

    def _per_head(self, m: Tensor) -> Tensor:
        """A shared (D, D) matrix, repeated to (H, D, D) when this P is per head."""
        return m if self.num_heads is None else m.expand(self.num_heads, -1, -1).clone()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, num_heads={self.num_heads}"


class IdentityP(_PMatrix):
    """P = I: forward returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x

    def matrix(self) -> Tensor:
        return self._per_head(torch.eye(self.head_dim, dtype=torch.float64))


class OddEvenP(_PMatrix):
    """The odd-even interleave permutation (see ``oddeven_index``); the same for every head."""

    def __init__(self, head_dim: int, num_heads: int | None = None) -> None:
        super().__init__(head_dim, num_heads)
        self.register_buffer("index", oddeven_index(head_dim), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self.index]

    def matrix(self) -> Tensor:
        m = torch.zeros(self.head_dim, self.head_dim, dtype=torch.float64)
        m[torch.arange(self.head_dim), self.index.cpu()] = 1.0
        return self._per_head(m)


class HouseholderP(_PMatrix):
    """``P = I - 2 v v^T / |v|^2``: a reflection, orthogonal and symmetric.

    v has shape (D,), or (H, D) per head (one independent draw per head), drawn from
    ``torch.Generator().manual_seed(seed)``; ``learned=True`` makes v an nn.Parameter initialised to it.
    """

    def __init__(self, head_dim: int, num_heads: int | None = None, *, learned: bool = False,
                 seed: int = 0) -> None:
        super().__init__(head_dim, num_heads)
        shape = (head_dim,) if num_heads is None else (num_heads, head_dim)
        v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        if learned:
            self.v = nn.Parameter(v)
        else:
            self.register_buffer("v", v)

    def forward(self, x: Tensor) -> Tensor:
        # v as a row (1, D) or per head (H, 1, D), so that it broadcasts against (..., H, N, D).
        row = (self.v[None, :] if self.num_heads is None else self.v[:, None, :]).to(x.dtype)
        # x - 2 (x . v) v / |v|^2 without forming the D x D matrix: one matvec and one fused multiply-add.
        coef = (x @ row.transpose(-1, -2)) * (2.0 / (row * row).sum(-1, keepdim=True))
        return torch.addcmul(x, coef, row, value=-1.0)

    def matrix(self) -> Tensor:
        v = self.v.detach().to(torch.float64)
        outer = v[..., :, None] * v[..., None, :]
        norm2 = (v * v).sum(-1)[..., None, None]
        return torch.eye(self.head_dim, dtype=torch.float64) - 2.0 * outer / norm2


def make_p(name: str, head_dim: int, *, num_heads: int | None = None, seed: int = 0) -> nn.Module:
    """The P module named ``name`` (one of P_CHOICES). Raises ValueError for an unknown name."""
    if name == "identity":
        return IdentityP(head_dim, num_heads)
    if name == "oddeven":
        return OddEvenP(head_dim, num_heads)
    if name in ("householder", "householder-learned"):
        return HouseholderP(head_dim, num_heads, learned=name == "householder-learned", seed=seed)
    raise ValueError(f"unknown p {name!r}; allowed: {list(P_CHOICES)}")
