"""A drop-in linear-attention layer: projections, heads, ``LinearAttentionCore``, output norm, projection.

As in the LRPE paper's code, the heads' outputs are merged and normalised (RMSNorm by default) before the
output projection; this replaces the softmax-style denominator, which LRPE's signed scores make fragile.
"""

from __future__ import annotations

from torch import Tensor, nn

from lrpe.core import LinearAttentionCore
from lrpe.feature_maps import FeatureMap

NORMS: tuple[str, ...] = ("rmsnorm", "layernorm", "none")


def _make_norm(norm: str, width: int) -> nn.Module:
    if norm == "rmsnorm":
        return nn.RMSNorm(width)
    if norm == "layernorm":
        return nn.LayerNorm(width)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; allowed: {list(NORMS)}")


class LinearAttention(nn.Module):
    """Multi-head linear attention with optional LRPE: (B, N, d_model) -> (B, N, d_model).

    Args:
        d_model: model width.
        num_heads: H.
        head_dim: per-head width D; defaults to d_model // num_heads (which must then divide evenly).
        feature_map, positional, p, theta, normalize, causal, impl, chunk_size: passed to
            ``LinearAttentionCore`` (LRPE parameters are shared across heads, as in the paper's code).
            impl defaults to "auto": the torch chunked path, on CUDA too until a GPU run has checked the
            fused Triton kernels (``lrpe.kernels.dispatch.AUTO_TAKES_FUSED``); impl="triton" opts in to them.
        norm: "rmsnorm" (default), "layernorm" or "none", over the merged heads (H * D) before the output
            projection.
        bias: bias in the four projections.
        seed: seeds the LRPE's random parts; the projections draw from torch's global generator, like any
            nn.Linear.

    forward(x, offset=0): x (B, N, d_model), token n at position offset + n; returns (B, N, d_model).
    """

    def __init__(self, d_model: int, num_heads: int, *, head_dim: int | None = None,
                 feature_map: str | FeatureMap = "elu1", positional: str | nn.Module = "none",
                 p: str = "identity", theta: str = "fixed", norm: str = "rmsnorm", normalize: bool = False,
                 causal: bool = True, impl: str = "auto", chunk_size: int = 64, bias: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        if d_model < 1 or num_heads < 1:
            raise ValueError(f"d_model and num_heads must be >= 1, got {d_model} and {num_heads}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(
                    f"d_model={d_model} is not a multiple of num_heads={num_heads}; give head_dim"
                )
            head_dim = d_model // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.k_proj = nn.Linear(d_model, inner, bias=bias)
        self.v_proj = nn.Linear(d_model, inner, bias=bias)
        self.core = LinearAttentionCore(
            head_dim, feature_map=feature_map, positional=positional, p=p, theta=theta, normalize=normalize,
            causal=causal, impl=impl, chunk_size=chunk_size, seed=seed,
        )
        self.norm = _make_norm(norm, inner)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def _heads(self, t: Tensor) -> Tensor:
        """(B, N, H * D) -> (B, H, N, D)."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, N, d_model), got {tuple(x.shape)}")
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        out = self.core(q, k, v, offset)
        b, _, n, _ = out.shape
        return self.out_proj(self.norm(out.transpose(1, 2).reshape(b, n, -1)))
