"""Launch of the fused kernels and their torch.autograd.Function.

``fused_lrpe_linear_attention(q, k, v, positional, ...)`` takes the *projections* q, k (B, H, N, D) (before
the feature map) and v (B, H, N, DV) and returns the unnormalised numerator ``sum_t (M_s phi(q_s)) .
(M_t phi(k_t)) v_t`` (t <= s when causal), (B, H, N, DV) in v's dtype: what ``LinearAttentionCore`` with
feature map "elu1", the LRPE ``positional`` and ``normalize=False`` computes. With ``feature_map="identity"``
q and k are features already (phi(x) = x) and the result is that of feature map "identity". Gradients flow to
q, k and v (not to a learned theta: the dispatch sends those to the torch path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from triton.runtime import JITFunction

from lrpe.encoding import LRPE
from lrpe.feature_maps import elu1
from lrpe.kernels.dispatch import FUSED_HEAD_DIMS, float32_reason
from lrpe.kernels.features import (
    FEATURE_ELU1,
    FEATURE_IDENTITY,
    KIND_NONE,
    KIND_ORTHOGONAL,
    KIND_PERMUTATION,
    KIND_UNITARY,
)
from lrpe.kernels.linear_attn_bwd import lrpe_linear_bwd_qk
from lrpe.kernels.linear_attn_fwd import lrpe_linear_fwd
from lrpe.kernels.linear_attn_state import lrpe_linear_state
from lrpe.kernels.tables import KIND_CODES, KernelTables, build_tables

HEAD_DIMS: tuple[int, ...] = FUSED_HEAD_DIMS
GPU_CHUNKS: tuple[int, ...] = (64,)
"""Chunk sizes on a GPU (the compiled and checked one); the interpreter also takes 16 and 32 (CPU tests)."""
INTERPRETER_CHUNKS: tuple[int, ...] = (16, 32, 64)
INTERPRETED: bool = not isinstance(lrpe_linear_fwd, JITFunction)  # an InterpretedFunction otherwise
"""Whether these kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
GPU_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
"""float32 on a GPU only for the kinds and head dims ``dispatch.float32_reason`` admits."""
KIND_NAMES: dict[int, str] = {code: name for name, code in KIND_CODES.items()}


@dataclass(frozen=True)
class LaunchConfig:
    """Block choices: BV value columns per forward program, BW feature columns per dq/dk program, warps and
    software-pipeline stages per program."""

    block_v: int
    block_w: int
    num_warps: int
    num_stages: int
    chunk: int | None = None
    """The chunk C the kernels run at; None: the caller's chunk_size. float32 on a GPU runs smaller chunks than
    the caller's 64 (a tiling choice: the sums are the same)."""


def launch_config(kind: int, head_dim: int, value_dim: int, capability: int = 90,
                  feature: int = FEATURE_ELU1, float32: bool = False) -> LaunchConfig:
    """Blocks for a KIND_* code, head dim D and value dim DV (each in HEAD_DIMS) on sm_<capability>, for
    the FEATURE_* code ``feature``; ``float32``: for float32 inputs on a GPU (raises ValueError with
    ``float32_reason`` outside the shapes it takes).

    sm_90 (wgmma, accumulators partly off the register file): the forward holds q~, k~ (C x W per tile,
    input dtype) and the state (W x BV per tile, float32) in registers; unitary (two D-wide tiles) takes
    BV = 32 to fit. The dq/dk kernel holds two (DV, BW) float32 states for the two-tile kinds: BW = 32 there.
    Two pipeline stages. Before sm_90 (mma.sync, every accumulator in registers) the same blocks spill a few
    to a few hundred bytes: 8 warps, BV = 32, BW = 32 (16 for the two-tile kinds) and one stage.
    The identity feature map changes register allocation: permutation at D = 128 on sm_90 spills 12 B in
    the causal forward with two stages, none with three (or one); it takes three.
    Each choice is the smallest change that ``compile_check`` found free of spills.
    float32 (3xTF32 dots: a float32 tile and its TF32 hi and lo copies) fits at none of these blocks at C = 64:
    C = 32, BV = BW = 16 and one stage, 8 warps on sm_80 and 4 on sm_90 (8 spill a few bytes there), and
    C = 16 for orthogonal on sm_90 (its C = 32 causal kernels spill 24-120 B at 4 or 8 warps).
    """
    if float32:
        reason = float32_reason(KIND_NAMES[kind], head_dim, value_dim)
        if reason:
            raise ValueError(reason)
        if capability < 90:
            return LaunchConfig(16, 16, 8, 1, chunk=32)
        return LaunchConfig(16, 16, 4, 1, chunk=16 if kind == KIND_ORTHOGONAL else 32)
    wide = max(head_dim, value_dim) > 64
    two_tiles = kind in (KIND_UNITARY, KIND_ORTHOGONAL)
    width = head_dim // 2 if kind == KIND_ORTHOGONAL else head_dim
    if capability < 90:
        return LaunchConfig(32, 16 if two_tiles else min(width, 32), 8, 1)
    block_v = 32 if kind == KIND_UNITARY else min(value_dim, 64)
    stages = 3 if feature == FEATURE_IDENTITY and kind == KIND_PERMUTATION and wide else 2
    return LaunchConfig(block_v, 32 if two_tiles else min(width, 64), 8 if wide else 4, stages)


SM_COUNT: int = 132
"""Streaming multiprocessors of an H100 SXM, the GPU the segment plan is sized for."""
TARGET_PROGRAMS: int = 2 * SM_COUNT
"""At least this many programs per launch when N allows (two per SM): B H x column blocks x S."""
MIN_SEGMENT_CHUNKS: int = 16
"""Shortest segment, in chunks (1024 tokens at C = 64): its state (W x DV float32, written by pass 1,
prefixed on the host, read by pass 2) stays a few per cent of the segment's bytes."""


def default_segment_chunks(n: int, chunk: int, parallel: int) -> int:
    """Chunks per segment of the segment-parallel kernels for N = n tokens and chunk C, where ``parallel``
    programs run side by side for each segment index: B H times the forward's value blocks DV / BV
    (``launch_config``; the dq/dk kernels' feature blocks W / BW are as many at every shipped shape).

    The largest power of two at most n_chunks / ceil(TARGET_PROGRAMS / parallel), so that parallel x S
    reaches TARGET_PROGRAMS when the sequence is long enough, but never below MIN_SEGMENT_CHUNKS and never
    above n_chunks = ceil(N / C) (one segment: short sequences, or enough heads). Powers of two cut
    power-of-two N into equal segments; counting the value blocks keeps the per-segment state traffic the
    same share at every width (wider kinds get fewer, longer segments). Examples (C = 64, N = 65536):
    parallel 16 (B H = 16, one value block): 32 chunks, S = 32; parallel 64: 128 chunks, S = 8 (512 programs
    either way). N <= 1024: S = 1. A pure function of its arguments.
    """
    if n < 0 or chunk < 1 or parallel < 1:
        raise ValueError(f"default_segment_chunks needs n >= 0, chunk >= 1, parallel >= 1, got n={n}, "
                         f"chunk={chunk}, parallel={parallel}")
    n_chunks = max(1, -(-n // chunk))
    per_column = -(-TARGET_PROGRAMS // parallel)
    length = 1 << max(0, (n_chunks // per_column).bit_length() - 1)
    return min(n_chunks, max(MIN_SEGMENT_CHUNKS, length))


def num_segments(n: int, chunk: int, seg_chunks: int) -> int:
    """S, the number of segments of seg_chunks chunks (the last may be shorter) covering ceil(N / C) chunks
    (one, empty, when N = 0)."""
    return -(-max(1, -(-n // chunk)) // seg_chunks)


def _capability(x: Tensor) -> int:
    """sm_XY of x's GPU as XY; 90 for CPU tensors (the interpreter ignores the blocks' resources)."""
    if x.device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(x.device)
    return 10 * major + minor


def _float32_gpu(x: Tensor) -> bool:
    """Whether x takes the float32 GPU launch configuration (float32 on CUDA; the interpreter runs float32 at
    the half-precision blocks and the caller's chunk)."""
    return x.device.type == "cuda" and x.dtype == torch.float32


def check_supported(q: Tensor, k: Tensor, v: Tensor, chunk: int, kind: int | None = None) -> None:
    """Raise ValueError naming what the fused kernels cannot take (shapes, dtypes, chunk); ``kind`` (a KIND_*
    code; None: not checked) matters for float32 on a GPU."""
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
    if _float32_gpu(q) and (reason := float32_reason(KIND_NAMES[KIND_NONE if kind is None else kind], q.shape[-1],
                                                     v.shape[-1])):
        raise ValueError(reason)
    chunks = GPU_CHUNKS if on_gpu else INTERPRETER_CHUNKS
    if chunk not in chunks:
        raise ValueError(f"chunk_size must be one of {chunks} for the fused kernels here, got {chunk}")


FEATURE_CODES: dict[str, int] = {"elu1": FEATURE_ELU1, "identity": FEATURE_IDENTITY}
"""Feature maps the kernels apply: 1 + elu, or none (the caller passes features already mapped)."""


@dataclass(frozen=True)
class _Call:
    """What every launch of one fused call shares: tables, mask, positions, chunk C, chunks per segment and
    the feature map code."""

    tables: KernelTables
    causal: bool
    offset: int
    chunk: int
    seg: int
    feature: int

    def common(self, n: int, heads: int) -> tuple:
        """Table and size arguments of every kernel, up to the INIT strides (pass-2 kernels take those next)."""
        return (*self.tables.args(), n, self.offset, heads, -(-n // self.chunk), self.seg)

    def tail(self) -> tuple:
        return (self.tables.angle_heads, self.tables.perm_heads)

    def constexprs(self) -> dict:
        return {"W": self.tables.width, "C": self.chunk, "KIND": self.tables.kind, "TWO": self.tables.two,
                "FEATURE": self.feature}


class FusedLinearAttention(torch.autograd.Function):
    """Fused forward and backward; see the module docstring. Inputs are made contiguous.

    Forward: pass 1 (``lrpe_linear_state``) on (k, v) gives each segment's local state, the host the
    exclusive prefix over segments (causal) or the total (full), pass 2 (``lrpe_linear_fwd``) the output.
    Backward: pass 1 on (q, dO) and the exclusive suffix over segments (causal) or the total give the
    starting states of dv (the forward kernel on (k, q, dO) run anti-causally, REVERSE) and, transposed, of
    dk (``lrpe_linear_bwd_qk`` on (v, dO, q -> k), reversed); dq (``lrpe_linear_bwd_qk`` on (dO, v, k -> q))
    starts from the forward's states, transposed, which the forward saves.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, call: _Call) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(v)
        init = _segment_states(k, v, call, False)
        _launch_linear(q, k, v, out, init, call, False)
        ctx.save_for_backward(q, k, v, init)
        ctx.call = call
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, init_kv = ctx.saved_tensors
        call = ctx.call
        grad_out = grad_out.contiguous().to(v.dtype)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        init_qo = _segment_states(q, grad_out, call, call.causal)
        _launch_linear(k, q, grad_out, dv, init_qo, call, call.causal)
        _launch_grad(grad_out, v, k, q, dq, init_kv, call, False)
        _launch_grad(v, grad_out, q, k, dk, init_qo, call, call.causal)
        return dq, dk, dv, None


def _segment_states(k: Tensor, v: Tensor, call: _Call, reverse: bool) -> Tensor:
    """The state each segment starts from, (B H, S', TILES, W, DV) float32: the sum of k~_t v_t^T over the
    earlier segments (causal), the later ones (reverse), or over all (full; S' = 1, shared by every segment).

    Pass 1 runs only when needed: a causal call with one segment starts from zero."""
    b, h, n, d = k.shape
    dv = v.shape[-1]
    tables = call.tables
    n_segs = num_segments(n, call.chunk, call.seg)
    tiles = 2 if tables.two else 1
    if call.causal and n_segs == 1:
        return torch.zeros(b * h, 1, tiles, tables.width, dv, dtype=torch.float32, device=k.device)
    local = torch.empty(b * h, n_segs, tiles, tables.width, dv, dtype=torch.float32, device=k.device)
    cfg = launch_config(tables.kind, d, dv, _capability(k), call.feature, _float32_gpu(k))
    grid = (b * h, triton.cdiv(dv, cfg.block_v), n_segs)
    lrpe_linear_state[grid](k, v, local, *call.common(n, h), *call.tail(), D=d, DV=dv, BV=cfg.block_v,
                            **call.constexprs(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if not call.causal:
        return local.sum(dim=1, keepdim=True)
    return _exclusive_prefix(local, reverse)


def _exclusive_prefix(local: Tensor, reverse: bool) -> Tensor:
    """Along dim 1: ``out[:, g]`` = the sum of ``local[:, g']`` over g' < g (g' > g when reverse); zero for the
    first segment (the last when reverse). One cumsum over S - 1 states, no further copies (forward)."""
    src = local.flip(1) if reverse else local
    out = torch.empty_like(src)
    out[:, 0].zero_()
    torch.cumsum(src[:, :-1], dim=1, out=out[:, 1:])
    return out.flip(1) if reverse else out


def _init_strides(init: Tensor) -> tuple[int, int]:
    """INIT's (bh, segment) strides in elements; segment stride 0 when one state serves every segment."""
    return init.stride(0), (init.stride(1) if init.shape[1] > 1 else 0)


def _launch_linear(q: Tensor, k: Tensor, v: Tensor, out: Tensor, init: Tensor, call: _Call, reverse: bool) -> None:
    b, h, n, d = q.shape
    dv = v.shape[-1]
    cfg = launch_config(call.tables.kind, d, dv, _capability(q), call.feature, _float32_gpu(q))
    grid = (b * h, triton.cdiv(dv, cfg.block_v), num_segments(n, call.chunk, call.seg))
    lrpe_linear_fwd[grid](q, k, v, out, init, *call.common(n, h), *_init_strides(init), *call.tail(), D=d, DV=dv,
                          BV=cfg.block_v, CAUSAL=call.causal, REVERSE=reverse, **call.constexprs(),
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _launch_grad(a: Tensor, b_: Tensor, xf: Tensor, xg: Tensor, dxg: Tensor, init: Tensor, call: _Call,
                 reverse: bool) -> None:
    b, h, n, d = xg.shape
    dv = a.shape[-1]
    cfg = launch_config(call.tables.kind, d, dv, _capability(xg), call.feature, _float32_gpu(xg))
    grid = (b * h, triton.cdiv(call.tables.width, cfg.block_w), num_segments(n, call.chunk, call.seg))
    lrpe_linear_bwd_qk[grid](a, b_, xf, xg, dxg, init, *call.common(n, h), *_init_strides(init), *call.tail(),
                             D=d, DV=dv, BW=cfg.block_w, CAUSAL=call.causal, REVERSE=reverse, **call.constexprs(),
                             num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def fused_lrpe_linear_attention(q: Tensor, k: Tensor, v: Tensor, positional: LRPE | None = None, *,
                                causal: bool = True, offset: int = 0, chunk_size: int = 64,
                                segment_chunks: int | None = None, feature_map: str = "elu1") -> Tensor:
    """phi (1 + elu, or none), then LRPE (or nothing), then causal or full linear attention without denominator.

    q, k: (B, H, N, D) projections; v: (B, H, N, DV); one dtype of DTYPES; D, DV in HEAD_DIMS; token n at
    position offset + n (offset >= 0). positional: None or an LRPE of width D. Its P, when not the identity
    (Householder, learned or not, odd-even), mixes all D columns, which the dq/dk kernel's blocks of feature
    columns cannot: P phi(q) and P phi(k) are computed in torch (float32, gradients through autograd, a
    learned P's included) and written once at width D, then the kernels apply Lambda^s with the identity map.
    segment_chunks: chunks per segment of the segment-parallel passes; None (the default) takes
    ``default_segment_chunks(N, chunk_size, B H x value blocks)`` (an override exists for tests and tuning),
    counted in the chunks the kernels run: float32 on a GPU runs C = 32 (16 for orthogonal on sm_90) whatever
    chunk_size says (``launch_config``; D = DV = 64 and the kinds of ``dispatch.FLOAT32_KINDS`` only).
    feature_map: "elu1" (phi = 1 + elu, applied in the kernels) or "identity" (phi(x) = x: q and k are
    features already mapped by the caller; the kernels apply only the LRPE transform).
    Returns (B, H, N, DV) in v's dtype. Raises ValueError for anything the kernels do not take.
    """
    if feature_map not in FEATURE_CODES:
        raise ValueError(f"feature_map must be one of {sorted(FEATURE_CODES)} for the fused kernels, "
                         f"got {feature_map!r}")
    check_supported(q, k, v, chunk_size, KIND_CODES["none" if positional is None else positional.kind])
    if positional is not None and positional.head_dim != q.shape[-1]:
        raise ValueError(f"positional head_dim {positional.head_dim} != D = {q.shape[-1]}")
    if positional is not None and positional.p_name != "identity":
        phi = elu1 if feature_map == "elu1" else (lambda x: x)
        q, k = (positional.p(phi(x.to(torch.float32))).to(x.dtype) for x in (q, k))
        feature_map = "identity"
    b, h, n, d = q.shape
    feature = FEATURE_CODES[feature_map]
    kind = KIND_CODES["none" if positional is None else positional.kind]
    cfg = launch_config(kind, d, v.shape[-1], _capability(q), feature, _float32_gpu(q))
    chunk_size = cfg.chunk or chunk_size
    tables = build_tables(positional, d, n, offset, chunk_size, q.device)
    if segment_chunks is None:
        segment_chunks = default_segment_chunks(n, chunk_size, b * h * triton.cdiv(v.shape[-1], cfg.block_v))
    if segment_chunks < 1:
        raise ValueError(f"segment_chunks must be >= 1, got {segment_chunks}")
    call = _Call(tables, causal, offset, chunk_size, segment_chunks, feature)
    return FusedLinearAttention.apply(q, k, v, call)
