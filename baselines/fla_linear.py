"""flash-linear-attention's chunked linear-attention Triton kernel (``fla.ops.linear_attn.chunk_linear_attn``).

An optional, GPU-only backend: installed with the ``triton`` extra. fla's kernels autotune on a GPU, so they
do not run in the Triton interpreter on a CPU; without a CUDA device this backend is unavailable.

Limits, read from fla-core 0.5.0-0.5.2 (``fla/ops/linear_attn/chunk.py`` -> ``fla/ops/simple_gla/chunk.py``
-> ``fla/ops/common/chunk_h.py``, ``chunk_o.py``): ``chunk_linear_attn`` is causal only; it takes
(B, T, H, K) tensors and, in these versions, neither checks T against H (older releases warned when T < H,
suspecting a head-first layout; this module always passes (B, T, H, K)) nor caps the key width K: its
kernels loop over K in tiles of at most 64 (128 on Hopper), so LRPE-unitary's K = 2 D = 256 at D = 128 is
within what it accepts (the ``K <= 256`` assertions of fla sit in the delta-rule kernels, not here). Whether
a tile fits the GPU is the support probe's question: Triton's ``OutOfResources`` makes a config
unsupported; any other failure of the probe propagates (a bug, recorded as an error).
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from torch import Tensor

from baselines.flash_common import failure_text
from baselines.refusal import is_refusal

# the probe's tiny input: batch 1, 2 heads, two chunks and a ragged tail
_PROBE_BATCH, _PROBE_HEADS, _PROBE_LENGTH = 1, 2, 150


@cache
def fla_availability() -> str | None:
    """None when fla's chunk_linear_attn can run here, else why not (package or GPU missing).

    An ImportError of ``chunk_linear_attn`` (fla installed without it) is a reason; anything else its import
    raises (version skew with Triton or torch) propagates, to be recorded as an error."""
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention (fla-core) not installed (pip install '.[triton]')"
    if not torch.cuda.is_available():
        return "fla's Triton kernels need a CUDA GPU (they autotune on the device)"
    try:
        from fla.ops.linear_attn import chunk_linear_attn  # noqa: F401
    except ImportError as exc:
        return f"fla is installed but fla.ops.linear_attn.chunk_linear_attn does not import: {exc}"
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


@cache
def fla_unsupported_reason(key_width: int, value_width: int, dtype: torch.dtype, backward: bool) -> str | None:
    """None when fla's kernel takes keys of ``key_width``, values of ``value_width`` in ``dtype`` (with a
    backward pass when ``backward``) on this GPU, else the config and the kernel's words. Cached.

    Decided by running it on a tiny input; only a documented refusal (Triton's ``OutOfResources``) is a
    reason, any other failure propagates. Call only where :func:`fla_availability` is None.
    """
    config = (f"fla chunk_linear_attn with key width {key_width}, value width {value_width}, "
              f"dtype={str(dtype).removeprefix('torch.')}{', backward' if backward else ''}")
    generator = torch.Generator().manual_seed(0)
    shape = (_PROBE_BATCH, _PROBE_HEADS, _PROBE_LENGTH)
    q, k = (torch.rand(*shape, key_width, generator=generator).to("cuda", dtype).requires_grad_(backward)
            for _ in range(2))
    v = torch.randn(*shape, value_width, generator=generator).to("cuda", dtype).requires_grad_(backward)
    try:
        with torch.set_grad_enabled(backward):
            out = fla_linear_attention(q, k, v)
            if backward:
                out.float().sum().backward()
    except Exception as exc:
        if is_refusal(exc, ()):
            return f"{config}: {failure_text(exc, [])}"
        raise
    if tuple(out.shape) != (*shape, value_width):
        raise RuntimeError(f"{config}: returned shape {tuple(out.shape)}, expected {(*shape, value_width)}")
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"{config}: returned non-finite values on finite random inputs")
    return None
