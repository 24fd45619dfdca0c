"""A small byte-level decoder-only language model whose attention comes from the variant registry by name.

Read top to bottom: ``ModelConfig`` (sizes and the variant), ``CausalSelfAttention`` (projections, the
registry's attention core, output norm for linear attention, projection), ``MLP``, ``Block`` (pre-norm),
``ByteLM`` (byte embedding, optional sinusoidal APE, blocks, final norm, head tied to the embedding).

Shapes: tokens (B, N) int64 in [0, 256) -> logits (B, N, 256). The attention core maps q, k, v (B, H, N, D)
to (B, H, N, D) (``bench.variant.Builder``); positions inside it (RoPE, LRPE, SPE) are relative to the start of
the window. APE (``pe == "ape"``) acts at the embedding, as ``baselines.absolute`` says; NoPE is the plain
name without an encoding (``softmax@naive``, ``linear@torch-chunked``).

Linear variants use the registry's norm-after cores (no denominator), so, as ``lrpe.layer.LinearAttention``
does, the merged head outputs pass through an RMSNorm before the output projection; softmax and flash
variants are already normalised and have none.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from baselines.absolute import SinusoidalAPE
from bench.registry import get_variant
from bench.variant import AttentionSpec, Variant
from lrpe import LinearAttentionCore

VOCAB_SIZE = 256
INIT_STD = 0.02


@dataclass(frozen=True)
class ModelConfig:
    """variant: a registry name; d_model = n_heads x head dim; the MLP is mlp_ratio x d_model wide."""

    variant: str
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    mlp_ratio: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        get_variant(self.variant)  # ValueError naming an unknown variant
        for name in ("n_layers", "d_model", "n_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class CausalSelfAttention(nn.Module):
    """(B, N, d_model) -> (B, N, d_model): q, k, v projections, the variant's core, [RMSNorm], projection."""

    def __init__(self, config: ModelConfig, variant: Variant, layer: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        spec = AttentionSpec(head_dim=config.head_dim, num_heads=config.n_heads, causal=True,
                             seed=config.seed + layer)
        self.core = variant.builder(spec)
        self.norm = nn.RMSNorm(config.d_model) if variant.family == "linear" else nn.Identity()
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        b, n, width = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self.core(q, k, v, offset)  # (B, H, N, D)
        return self.proj(self.norm(out.transpose(1, 2).reshape(b, n, width)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.mlp_ratio * config.d_model, bias=False)
        self.down = nn.Linear(config.mlp_ratio * config.d_model, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, variant: Variant, layer: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config, variant, layer)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        x = x + self.attn(self.norm1(x), offset)
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    """The language model. Parameters are drawn from ``torch.manual_seed(config.seed)``, so two variants
    whose cores hold no parameters (e.g. softmax-rope@naive and flash-rope@sdpa-flash) start identical."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        torch.manual_seed(config.seed)
        self.config = config
        self.variant = get_variant(config.variant)
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.ape = SinusoidalAPE(config.d_model) if self.variant.pe == "ape" else None
        self.blocks = nn.ModuleList(Block(config, self.variant, i) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE, bias=False)
        self.head.weight = self.embed.weight  # tied
        # nanoGPT's initialisation for our own layers (the registry's cores keep theirs): N(0, 0.02), with the
        # projections into the residual stream scaled down by sqrt(2 x layers).
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=INIT_STD)
            nn.init.normal_(block.mlp.up.weight, std=INIT_STD)
            for residual in (block.attn.proj, block.mlp.down):
                nn.init.normal_(residual.weight, std=INIT_STD / math.sqrt(2 * config.n_layers))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """tokens (B, N) int64 -> logits (B, N, 256); token n sits at position offset + n."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, N), got {tuple(tokens.shape)}")
        # Token embeddings scaled by sqrt(d_model) as in Vaswani et al., so a sinusoidal table (entries in
        # [-1, 1]) does not drown them at the N(0, 0.02) start.
        x = self.embed(tokens) * math.sqrt(self.config.d_model)
        if self.ape is not None:
            x = self.ape(x, offset)
        for block in self.blocks:
            x = block(x, offset)
        return self.head(self.norm(x))


def lm_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy in nats per byte, computed in float32: logits (B, N, 256), targets (B, N)."""
    return F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), targets.reshape(-1), reduction=reduction)


@contextmanager
def linear_impl(model: nn.Module, impl: str | None) -> Iterator[None]:
    """Run the built-in linear-attention cores of ``model`` with ``impl`` ("quadratic", "chunked", ...)
    inside the block, then restore each core's own. These forms compute the same function (lrpe's tests tie
    them); at a short training length the quadratic form is the faster one on a CPU. None changes nothing."""
    cores = [m for m in model.modules() if isinstance(m, LinearAttentionCore) and isinstance(m.impl, str)]
    saved = [core.impl for core in cores]
    try:
        if impl is not None:
            for core in cores:
                core.impl = impl
        yield
    finally:
        for core, own in zip(cores, saved, strict=True):
            core.impl = own
