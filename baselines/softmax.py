"""Softmax attention with an explicit N x N score matrix: the oracle every FlashAttention backend must equal.

``softmax(Q K^T / sqrt(D) + mask) V`` computed in float32 (float64 for float64 inputs), docs/math.md section 5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lrpe.checks import check_qkv
from lrpe.core import encode_pair


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, scale: float | None = None) -> Tensor:
    """Naive softmax attention. q, k: (B, H, N, D); v: (B, H, N, Dv). Returns (B, H, N, Dv) in v's dtype.

    Scores are built explicitly (B, H, N, N) in float32, or float64 for float64 inputs; the causal mask
    keeps key t for query s when t <= s. ``scale`` defaults to 1/sqrt(D).
    """
    check_qkv(q, k, v)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v.to(compute)).to(v.dtype)


class SoftmaxAttention(nn.Module):
    """Attention core: optional positional transform of q and k (e.g. RoPE), then naive softmax attention.

    forward(q, k, v, offset=0): q, k (B, H, N, D), v (B, H, N, Dv) -> (B, H, N, Dv). ``positional`` is any
    module mapping (x, offset) -> x of the same shape; ``offset`` is the position of the first token.
    """

    def __init__(self, *, causal: bool = True, positional: nn.Module | None = None) -> None:
        super().__init__()
        self.causal = causal
        self.positional = positional

    def forward(self, q: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
        if self.positional is not None:
            # forward_pair when it exists (RoPE: phasors once for q and k); not in place: q, k are the caller's.
            q, k = encode_pair(self.positional, q, k, offset)
        return softmax_attention(q, k, v, causal=self.causal)
