"""flash-linear-attention's chunked linear-attention Triton kernel (``fla.ops.linear_attn.chunk_linear_attn``).

An optional, GPU-only backend: installed with the ``triton`` extra. fla's kernels autotune on a GPU, so they
do not run in the Triton interpreter on a CPU; without a CUDA device this backend is unavailable.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from torch import Tensor


@cache
def fla_availability() -> str | None:
    """None when fla's chunk_linear_attn can run here, else why not."""
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention (fla-core) not installed (pip install '.[triton]')"
    if not torch.cuda.is_available():
        return "fla's Triton kernels need a CUDA GPU (they autotune on the device)"
    try:
        from fla.ops.linear_attn import chunk_linear_attn  # noqa: F401
    except Exception as exc:  # an import that breaks (version skew) makes the backend unavailable
        return f"fla import failed: {type(exc).__name__}: {exc}"
    return None


def fla_linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True) -> Tensor:
    """Causal, unnormalised linear attention ``((Q K^T) * M) V`` by fla's chunked Triton kernel.

    q, k: (B, H, N, Dk) already feature-mapped and positionally transformed; v: (B, H, N, Dv).
    Returns (B, H, N, Dv). fla takes (B, N, H, D) tensors; the transposes are part of what is timed.
    """
    if not causal:
        raise ValueError("fla's chunk_linear_attn is causal only; got causal=False")
    from fla.ops.linear_attn import chunk_linear_attn

    out, _ = chunk_linear_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0,
                               normalize=False)
    return out.transpose(1, 2)
