"""Input validation shared by every attention function: errors name the bad value and what was allowed."""

from __future__ import annotations

from torch import Tensor

FLOAT_DTYPES_MSG = "a floating dtype (float16, bfloat16, float32, float64)"


def _check_4d_float(name: str, t: Tensor) -> None:
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape (B, H, N, D), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have {FLOAT_DTYPES_MSG}, got {t.dtype}")


def check_qk(q: Tensor, k: Tensor) -> None:
    """Check q, k of one shape (B, H, N, D): 4-D, floating, N >= 1, D >= 1. Raises ValueError naming the
    offending shape or dtype."""
    _check_4d_float("q", q)
    _check_4d_float("k", k)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.shape[-2] < 1:
        raise ValueError(f"sequence length N must be >= 1, got N={q.shape[-2]}")
    if q.shape[-1] < 1:
        raise ValueError(f"head dim D must be >= 1, got D={q.shape[-1]}")


def check_pair(q: Tensor, k: Tensor) -> None:
    """q and k that a positional transform encodes together (``forward_pair``) share shape and dtype; any rank.
    Raises ValueError naming both."""
    if q.shape != k.shape or q.dtype != k.dtype:
        raise ValueError(f"q and k must share shape and dtype, got {q.dtype} {tuple(q.shape)} and "
                         f"{k.dtype} {tuple(k.shape)}")


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Check q, k of shape (B, H, N, D) and v of shape (B, H, N, Dv): 4-D, floating, matching, N >= 1,
    one dtype and device. Raises ValueError naming the offending shape or dtype.
    """
    check_qk(q, k)
    _check_4d_float("v", v)
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must share (B, H, N) with q, got v {tuple(v.shape)} and q {tuple(q.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
