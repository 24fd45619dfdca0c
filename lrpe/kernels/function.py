"""Launch of the fused kernels and their torch.autograd.Function.

``fused_lrpe_linear_attention(q, k, v, positional, ...)`` takes the *projections* q, k (B, H, N, D) (before
the feature map) and v (B, H, N, DV) and returns the unnormalised numerator ``sum_t (M_s phi(q_s)) .
(M_t phi(k_t)) v_t`` (t <= s when causal), (B, H, N, DV) in v's dtype: what ``LinearAttentionCore`` with
feature map "elu1", the LRPE ``positional`` and ``normalize=False`` computes. Gradients flow to q, k and v
(not to a learned theta: the dispatch sends those to the torch path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from lrpe.encoding import LRPE
from lrpe.kernels.linear_attn_bwd import lrpe_linear_bwd_dkdv, lrpe_linear_bwd_dq
from lrpe.kernels.linear_attn_fwd import lrpe_linear_fwd
from lrpe.kernels.tables import KernelTables, build_tables

HEAD_DIMS: tuple[int, ...] = (16, 32, 64, 128)
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class LaunchConfig:
    """Block choices of one launch: BV value columns per forward program, warps per program."""

    block_v: int
    num_warps_fwd: int
    num_warps_bwd: int


def launch_config(head_dim: int, value_dim: int) -> LaunchConfig:
    """Blocks for head dim D and value dim DV (each a power of two in HEAD_DIMS).

    BV = 64 at most: the forward state is (W, BV) float32 per tile, 2 x 128 x 64 x 4 B = 64 KiB of registers
    for unitary at D = 128 with 8 warps; the backward keeps full (W, DV) states, hence 8 warps above D = 64.
    """
    wide = max(head_dim, value_dim) > 64
    return LaunchConfig(min(value_dim, 64), 8 if wide else 4, 8 if wide else 4)


def check_supported(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> None:
    """Raise ValueError naming what the fused kernels cannot take (shapes, dtypes, chunk)."""
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, N, D) and v (B, H, N, DV), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"fused kernels take D, DV in {HEAD_DIMS}, got D={q.shape[-1]}, DV={v.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        raise ValueError(f"fused kernels take one dtype of {[str(d) for d in DTYPES]} for q, k, v, "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if chunk not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be one of (16, 32, 64, 128) for the fused kernels, got {chunk}")


def _common(tables: KernelTables, n: int, offset: int, heads: int, chunk: int) -> tuple:
    return (*tables.args(), n, offset, heads, -(-n // chunk), tables.angle_heads, tables.perm_heads)


class FusedLinearAttention(torch.autograd.Function):
    """Fused forward and backward; see the module docstring. Inputs are made contiguous."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, tables: KernelTables, causal: bool, offset: int,
                chunk: int) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, h, n, d = q.shape
        dv = v.shape[-1]
        cfg = launch_config(d, dv)
        out = torch.empty_like(v)
        grid = (b * h, triton.cdiv(dv, cfg.block_v))
        lrpe_linear_fwd[grid](q, k, v, out, *_common(tables, n, offset, h, chunk), D=d, DV=dv, W=tables.width,
                              BV=cfg.block_v, C=chunk, KIND=tables.kind, TWO=tables.two, CAUSAL=causal,
                              num_warps=cfg.num_warps_fwd)
        ctx.save_for_backward(q, k, v)
        ctx.tables, ctx.causal, ctx.offset, ctx.chunk = tables, causal, offset, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v = ctx.saved_tensors
        tables, causal, chunk = ctx.tables, ctx.causal, ctx.chunk
        grad_out = grad_out.contiguous().to(v.dtype)
        b, h, n, d = q.shape
        dv_dim = v.shape[-1]
        cfg = launch_config(d, dv_dim)
        common = _common(tables, n, ctx.offset, h, chunk)
        meta = {"D": d, "DV": dv_dim, "W": tables.width, "C": chunk, "KIND": tables.kind, "TWO": tables.two,
                "CAUSAL": causal, "num_warps": cfg.num_warps_bwd}
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        lrpe_linear_bwd_dq[(b * h,)](q, k, v, grad_out, dq, *common, **meta)
        lrpe_linear_bwd_dkdv[(b * h,)](q, k, v, grad_out, dk, dv, *common, **meta)
        return dq, dk, dv, None, None, None, None


def fused_lrpe_linear_attention(q: Tensor, k: Tensor, v: Tensor, positional: LRPE | None = None, *,
                                causal: bool = True, offset: int = 0, chunk_size: int = 64) -> Tensor:
    """phi = 1 + elu, then LRPE (or nothing), then causal or full linear attention without denominator.

    q, k: (B, H, N, D) projections; v: (B, H, N, DV); one dtype of DTYPES; D, DV in HEAD_DIMS; token n at
    position offset + n (offset >= 0). positional: None or an LRPE with P = identity of width D.
    Returns (B, H, N, DV) in v's dtype. Raises ValueError for anything the kernels do not take.
    """
    check_supported(q, k, v, chunk_size)
    if positional is not None and positional.head_dim != q.shape[-1]:
        raise ValueError(f"positional head_dim {positional.head_dim} != D = {q.shape[-1]}")
    tables = build_tables(positional, q.shape[-1], q.shape[-2], offset, chunk_size, q.device)
    return FusedLinearAttention.apply(q, k, v, tables, causal, offset, chunk_size)
