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
from triton.runtime import JITFunction

from lrpe.encoding import LRPE
from lrpe.kernels.dispatch import FUSED_HEAD_DIMS
from lrpe.kernels.features import KIND_ORTHOGONAL, KIND_UNITARY
from lrpe.kernels.linear_attn_bwd import lrpe_linear_bwd_qk
from lrpe.kernels.linear_attn_fwd import lrpe_linear_fwd
from lrpe.kernels.tables import KernelTables, build_tables

HEAD_DIMS: tuple[int, ...] = FUSED_HEAD_DIMS
GPU_CHUNKS: tuple[int, ...] = (64,)
"""Chunk sizes on a GPU (the compiled and checked one); the interpreter also takes 16 and 32 (CPU tests)."""
INTERPRETER_CHUNKS: tuple[int, ...] = (16, 32, 64)
INTERPRETED: bool = not isinstance(lrpe_linear_fwd, JITFunction)  # an InterpretedFunction otherwise
"""Whether these kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
GPU_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
"""float32 runs in the interpreter (the tests' exact path) but is not shipped for GPUs: its IEEE float32 dots
(no tensor-core form) spill hundreds to thousands of bytes of registers at these blocks (compile_check)."""


@dataclass(frozen=True)
class LaunchConfig:
    """Block choices: BV value columns per forward program, BW feature columns per dq/dk program, warps and
    software-pipeline stages per program."""

    block_v: int
    block_w: int
    num_warps: int
    num_stages: int


def launch_config(kind: int, head_dim: int, value_dim: int, capability: int = 90) -> LaunchConfig:
    """Blocks for a KIND_* code, head dim D and value dim DV (each in HEAD_DIMS) on sm_<capability>.

    sm_90 (wgmma, accumulators partly off the register file): the forward holds q~, k~ (C x W per tile,
    input dtype) and the state (W x BV per tile, float32) in registers; unitary (two D-wide tiles) takes
    BV = 32 to fit. The dq/dk kernel holds two (DV, BW) float32 states for the two-tile kinds: BW = 32 there.
    Two pipeline stages. Before sm_90 (mma.sync, every accumulator in registers) the same blocks spill a few
    to a few hundred bytes: 8 warps, BV = 32, BW = 32 (16 for the two-tile kinds) and one stage.
    Each choice is the smallest change that ``compile_check`` found free of spills.
    """
    wide = max(head_dim, value_dim) > 64
    two_tiles = kind in (KIND_UNITARY, KIND_ORTHOGONAL)
    width = head_dim // 2 if kind == KIND_ORTHOGONAL else head_dim
    if capability < 90:
        return LaunchConfig(32, 16 if two_tiles else min(width, 32), 8, 1)
    block_v = 32 if kind == KIND_UNITARY else min(value_dim, 64)
    return LaunchConfig(block_v, 32 if two_tiles else min(width, 64), 8 if wide else 4, 2)


def _capability(x: Tensor) -> int:
    """sm_XY of x's GPU as XY; 90 for CPU tensors (the interpreter ignores the blocks' resources)."""
    if x.device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


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
    on_gpu = q.device.type == "cuda"
    if on_gpu and q.dtype not in GPU_DTYPES:
        raise ValueError(f"fused kernels on a GPU take {[str(d) for d in GPU_DTYPES]}, got {q.dtype}")
    if on_gpu and _capability(q) < 80:
        raise ValueError(f"fused kernels need sm_80 or newer (compiled and checked for sm_80, sm_90), "
                         f"got sm_{_capability(q)}")
    chunks = GPU_CHUNKS if on_gpu else INTERPRETER_CHUNKS
    if chunk not in chunks:
        raise ValueError(f"chunk_size must be one of {chunks} for the fused kernels here, got {chunk}")


def _common(tables: KernelTables, n: int, offset: int, heads: int, chunk: int) -> tuple:
    return (*tables.args(), n, offset, heads, -(-n // chunk), tables.angle_heads, tables.perm_heads)


class FusedLinearAttention(torch.autograd.Function):
    """Fused forward and backward; see the module docstring. Inputs are made contiguous.

    Backward: dv is the forward kernel on (k, q, dO) run anti-causally (REVERSE); dq and dk are
    ``lrpe_linear_bwd_qk`` on (dO, v, k -> q) and, reversed, on (v, dO, q -> k).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, tables: KernelTables, causal: bool, offset: int,
                chunk: int) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(v)
        _launch_linear(q, k, v, out, tables, causal, False, offset, chunk)
        ctx.save_for_backward(q, k, v)
        ctx.tables, ctx.causal, ctx.offset, ctx.chunk = tables, causal, offset, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v = ctx.saved_tensors
        tables, causal, offset, chunk = ctx.tables, ctx.causal, ctx.offset, ctx.chunk
        grad_out = grad_out.contiguous().to(v.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _launch_linear(k, q, grad_out, dv, tables, causal, causal, offset, chunk)
        _launch_grad(grad_out, v, k, q, dq, tables, causal, False, offset, chunk)
        _launch_grad(v, grad_out, q, k, dk, tables, causal, causal, offset, chunk)
        return dq, dk, dv, None, None, None, None


def _launch_linear(q: Tensor, k: Tensor, v: Tensor, out: Tensor, tables: KernelTables, causal: bool,
                   reverse: bool, offset: int, chunk: int) -> None:
    b, h, n, d = q.shape
    dv = v.shape[-1]
    cfg = launch_config(tables.kind, d, dv, _capability(q))
    grid = (b * h, triton.cdiv(dv, cfg.block_v))
    lrpe_linear_fwd[grid](q, k, v, out, *_common(tables, n, offset, h, chunk), D=d, DV=dv, W=tables.width,
                          BV=cfg.block_v, C=chunk, KIND=tables.kind, TWO=tables.two, CAUSAL=causal,
                          REVERSE=reverse, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _launch_grad(a: Tensor, b_: Tensor, xf: Tensor, xg: Tensor, dxg: Tensor, tables: KernelTables,
                 causal: bool, reverse: bool, offset: int, chunk: int) -> None:
    b, h, n, d = xg.shape
    dv = a.shape[-1]
    cfg = launch_config(tables.kind, d, dv, _capability(xg))
    grid = (b * h, triton.cdiv(tables.width, cfg.block_w))
    lrpe_linear_bwd_qk[grid](a, b_, xf, xg, dxg, *_common(tables, n, offset, h, chunk), D=d, DV=dv,
                             W=tables.width, BW=cfg.block_w, C=chunk, KIND=tables.kind, TWO=tables.two,
                             CAUSAL=causal, REVERSE=reverse, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


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
