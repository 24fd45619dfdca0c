"""FlexAttention (``torch.nn.attention.flex_attention``) compiled with ``torch.compile``.

Uncompiled, flex_attention materialises the full (N, N) score matrix, so this backend always means compiled:
``fullgraph=True`` makes a graph break or dynamo's recompile limit an error instead of a silent run of the
eager version. ``dynamic=False`` specialises one kernel per shape, as a benchmark should time it; since a
sweep compiles one graph per (shape, dtype, device, mask, grad mode), dynamo's recompile limit (8 by default,
process-wide) is raised, never lowered, to :data:`RECOMPILE_LIMIT` when the first flex core is built.
Causal masking is a block mask built once per (N, device) and cached. On CPU flex takes float32, float16
and bfloat16 (not float64) and has no backward. Compiling costs seconds per new config (about 20 s for the
first one in a fresh process on 2 CPU cores).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from baselines.flash_common import BackendSpec, FlashCore, import_module
from baselines.refusal import Refusal

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

# flex_attention arrived in torch 2.5 and the suite allows older torch: imported where used
_FLEX_MODULE = "torch.nn.attention.flex_attention"

BLOCK_SIZE = 128
"""Tile of the block mask, flex_attention's default sparse block size."""
RECOMPILE_LIMIT = 256


def causal_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """flex mask_mod of causal attention: query s sees key t when t <= s."""
    return q_idx >= kv_idx


@lru_cache(maxsize=32)
def causal_block_mask(n: int, device: torch.device) -> BlockMask:
    """The causal BlockMask for N = ``n`` queries and keys, broadcast over batch and heads.

    Built from its block structure, query tile i: tiles j < i fully visible, tile i partial (masked by
    :func:`causal_mask_mod`), which takes O((N / 128)^2) memory; ``create_block_mask`` evaluates the mask
    densely, an (N, N) temporary (4 GiB at N = 64k). Both mask the same entries (tested); in a ragged last
    query tile this one marks the tiles below the diagonal full, where create_block_mask's padding makes them
    partial, so the kernel skips mask_mod there.
    """
    from torch.nn.attention.flex_attention import BlockMask

    tiles = -(-n // BLOCK_SIZE)
    index = torch.arange(tiles, dtype=torch.int32, device=device)
    one_partial = torch.ones(1, 1, tiles, dtype=torch.int32, device=device)
    diagonal = index.view(1, 1, tiles, 1).expand(1, 1, tiles, tiles).contiguous()
    below = index.view(1, 1, 1, tiles).expand(1, 1, tiles, tiles).contiguous()
    return BlockMask.from_kv_blocks(
        one_partial, diagonal, index.view(1, 1, tiles).clone(), below,
        BLOCK_SIZE=BLOCK_SIZE, mask_mod=causal_mask_mod, seq_lengths=(n, n),
    )


@cache
def compiled_flex() -> Callable[..., Tensor]:
    """flex_attention under ``torch.compile(fullgraph=True, dynamic=False)``, made once per process."""
    from torch.nn.attention.flex_attention import flex_attention

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(flex_attention, fullgraph=True, dynamic=False)


class FlexCore(FlashCore):
    """Compiled FlexAttention, causal through :func:`causal_block_mask`; see :class:`FlashCore`."""

    backend = "flex"

    def __init__(self, *, causal: bool, positional: nn.Module | None) -> None:
        super().__init__(causal=causal, positional=positional)
        self._flex = compiled_flex()

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        mask = causal_block_mask(q.shape[-2], q.device) if self.causal else None
        return self._flex(q, k, v, block_mask=mask)

    @property
    def kernel(self) -> str:
        return f"torch {torch.__version__} flex_attention, torch.compile(fullgraph=True, dynamic=False)"


def _requirement() -> str | None:
    # whether compiling works here is the support probe's question (it compiles a tiny call)
    module, why = import_module(_FLEX_MODULE)
    return None if module is not None else f"{_FLEX_MODULE} not importable (torch {torch.__version__}): {why}"


# flex_attention's own input validation (torch/nn/attention/flex_attention.py, e.g. "FlexAttention does not
# support backward on CPU") and Inductor's flex lowerings (torch/_inductor/kernel/flex/: CPU float64, head
# dims below 16 on CUDA) raise NotImplementedError for what they have no kernel for. Under fullgraph compile
# the first reaches the caller as dynamo's Unsupported naming the NotImplementedError it observed, the second
# as the text of a LoweringException inside an InductorError. A missing C++ compiler or Triton, or a GPU too
# old for Triton, has its own exception types.
_REFUSALS: tuple[Refusal, ...] = (
    Refusal(NotImplementedError),
    Refusal("torch._dynamo.exc.Unsupported", r"raised exception NotImplementedError\("),
    Refusal("torch._inductor.exc.LoweringException", r"^NotImplementedError: "),
    Refusal("torch._inductor.exc.InvalidCxxCompiler"),
    Refusal("torch._inductor.exc.TritonMissing"),
    Refusal("torch._inductor.exc.GPUTooOldForTriton"),
)

SPECS: tuple[BackendSpec, ...] = (
    BackendSpec("flex", ("cpu", "cuda"), _requirement, FlexCore, (64,), refusals=_REFUSALS),
)
