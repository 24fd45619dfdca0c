"""A user's attention kernels in their own package, outside the suite (docs/your-kernel.md).

The suite finds them by name: ``python -m bench run --variants 'my_kernels:attention'``. Only ``attention`` and
``linear_attention`` are right; the others are wrong on purpose, for the suite's tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.plugins import kernel


def _causal_mask(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


@kernel(backend="my-softmax", family="softmax", causal=(True, False), devices=("cpu", "cuda"),
        about="explicit softmax in float32")
def attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """Exact softmax attention: q, k (B, H, N, D), v (B, H, N, Dv) -> (B, H, N, Dv) in v's dtype."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(_causal_mask(q.shape[-2], q.device), float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(v.dtype)


@kernel(backend="no-scale", family="softmax", causal=True)
def attention_without_scale(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """Wrong on purpose: the 1/sqrt(D) scale is missing."""
    scores = (q @ k.transpose(-1, -2)).masked_fill(_causal_mask(q.shape[-2], q.device), float("-inf"))
    return scores.softmax(-1) @ v


@kernel(backend="raises", family="softmax", causal=True)
def attention_that_raises(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """Broken on purpose: raises at every call."""
    raise RuntimeError("my kernel's launch failed")


class _NoKeyGradient(torch.autograd.Function):
    """Identity forward; drops the gradient (wrong on purpose)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad)


@kernel(backend="no-dk", family="softmax", causal=True)
def attention_without_key_gradient(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """Right forward, wrong backward on purpose: no gradient reaches k."""
    return attention.fn(q, _NoKeyGradient.apply(k), v, causal=causal)


@kernel(backend="my-linear", family="linear", causal=True)
def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> Tensor:
    """The suite's linear attention (feature map 1 + elu, no denominator), causal, as a running sum of
    phi(k_j) v_j^T: (B, H, N, D, Dv) states, fine at test sizes."""
    fq, fk = F.elu(q.float()) + 1, F.elu(k.float()) + 1
    states = torch.einsum("bhnd,bhne->bhnde", fk, v.float()).cumsum(2)
    return torch.einsum("bhnd,bhnde->bhne", fq, states).to(v.dtype)
