"""Linear attention on already feature-mapped q, k (docs/math.md section 1), in three forms that are one function.

- "quadratic": the oracle, ``O = ((Q K^T) * M) V`` with an explicit N x N score matrix.
- "recurrent": a token loop over the state ``S_s = S_{s-1} + k_s v_s^T``, ``o_s = q_s^T S_s`` (decoding).
- "chunked": chunks of C rows; inside a chunk the masked C x C scores, across chunks the prefix of per-chunk
  states. Time O(N C D + N D Dv), memory O(N D + (N/C) D Dv); no (N, D, Dv) tensor.
- "auto" (the default): "chunked", on CUDA too, until a GPU run has checked the fused kernels
  (``lrpe.kernels.dispatch.AUTO_TAKES_FUSED``); after that, the fused Triton kernels (``lrpe.kernels``, feature
  map "identity") for the numerator on CUDA tensors they take (bfloat16/float16 with Dk and Dv in 64/128,
  float32 at 64; chunk_size 64; no state), the denominator in torch, and "chunked" otherwise.
- "triton": opts in to those kernels now, or raises ValueError with the reason where they cannot run. The
  kernels feed their dots operands in the input dtype (float32 through 3xTF32) with float32 accumulation and
  state, as fla does; the torch forms compute in float32.

Shapes: q, k (B, H, N, Dk), v (B, H, N, Dv); Dk may differ from Dv. The causal mask keeps key t for query s
when t <= s. Normalised attention divides row s by ``sum_{t<=s} q_s . k_t + eps`` (all t when not causal);
a caller may name other features for that denominator (``denominator_features``, e.g. the positionally
untransformed ones of RoFormer Eq. 19). Work happens in float32 for float16/bfloat16/float32 inputs and in
float64 for float64 inputs (the "compute dtype"); outputs come back in v's dtype.

A ``LinearAttentionState`` carries what a causal pass has seen, so that a prefill with ``return_state=True``
followed by ``linear_attention_step`` calls equals one pass over the whole sequence.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lrpe.checks import check_qkv
from lrpe.rotation import angle_dtype

IMPLS: tuple[str, ...] = ("quadratic", "recurrent", "chunked", "auto")
FORCED_FUSED: tuple[str, ...] = ("triton",)
"""The impl names that force the fused kernels (``lrpe.kernels``), here and in ``LinearAttentionCore``."""


class LinearAttentionState(NamedTuple):
    """What a causal linear attention has accumulated over the tokens seen so far, in the compute dtype.

    kv: (B, H, Dk, Dv), ``sum_t k_t v_t^T``; k_sum: (B, H, Dd), ``sum_t`` of the denominator's key features
    (k itself unless ``denominator_features`` named others, so Dd may differ from Dk).
    """

    kv: Tensor
    k_sum: Tensor


def _check_options(impl: str, chunk_size: int, eps: float) -> None:
    if impl not in (*IMPLS, *FORCED_FUSED):
        raise ValueError(f"unknown impl {impl!r}; allowed: {[*IMPLS, *FORCED_FUSED]}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def _check_denominator_features(qd: Tensor, kd: Tensor, q: Tensor) -> None:
    """Denominator features must be (B, H, N, Dd) like q in everything but the width, one shape for both."""
    if qd.shape != kd.shape or qd.shape[:-1] != q.shape[:-1] or not qd.is_floating_point():
        raise ValueError(
            f"denominator_features must be two floating tensors of shape {(*q.shape[:-1], 'Dd')}, "
            f"got {qd.dtype} {tuple(qd.shape)} and {tuple(kd.shape)}"
        )


def _check_state(state: LinearAttentionState, q: Tensor, v: Tensor, kd: Tensor) -> None:
    """A state must match the (B, H) of q and the widths of q (Dk), v (Dv) and the denominator keys (Dd)."""
    lead = tuple(q.shape[:2])
    want_kv, want_sum = (*lead, q.shape[-1], v.shape[-1]), (*lead, kd.shape[-1])
    if tuple(state.kv.shape) != want_kv or tuple(state.k_sum.shape) != want_sum:
        raise ValueError(
            f"state must have kv {want_kv} and k_sum {want_sum}, "
            f"got kv {tuple(state.kv.shape)} and k_sum {tuple(state.k_sum.shape)}"
        )


def _check_frames(frames: FrameCarry, q: Tensor, impl: str, chunk_size: int, *, causal: bool, normalize: bool,
                  has_denominator: bool, has_state: bool) -> None:
    """Frame-local features have one numerator that reads them: the causal torch chunked form, stateless."""
    if impl not in ("chunked", "auto"):
        raise ValueError(f"frames need the torch chunked numerator; got impl={impl!r}, allowed: chunked, auto")
    if not causal or has_state:
        raise ValueError("frames need causal=True and no initial_state or return_state")
    if normalize and not has_denominator:
        raise ValueError("frames with normalize=True need denominator_features: frame-local q and k are not the "
                         "global features a denominator sums")
    if frames.rows < 1 or frames.rows % chunk_size:
        raise ValueError(f"frames.rows must be a positive multiple of chunk_size = {chunk_size}, "
                         f"got {frames.rows}")
    heads, dk = q.shape[1], q.shape[-1]
    for name, index in (("index", frames.index), ("inverse", frames.inverse)):
        if index.dtype != torch.long or index.shape not in ((dk,), (heads, dk)):
            raise ValueError(f"frames.{name} must be long of shape ({dk},) or ({heads}, {dk}), "
                             f"got {index.dtype} {tuple(index.shape)}")


def normalizer(q: Tensor, k: Tensor, *, causal: bool = True, k_sum: Tensor | None = None) -> Tensor:
    """The denominator without eps: ``sum_{t<=s} q_s . k_t`` (all t when not causal), shape (B, H, N).

    q, k: (B, H, N, D), any features (a caller may pass other features than the numerator's). ``k_sum``
    (B, H, D) adds the keys seen before this block (a state's k_sum). O(N D) time and memory through a
    cumulative sum; the result is in the compute dtype.
    """
    if q.shape != k.shape or q.dim() != 4:
        raise ValueError(f"q and k must both have shape (B, H, N, D), got {tuple(q.shape)}, {tuple(k.shape)}")
    compute = angle_dtype(q.dtype)
    q, k = q.to(compute), k.to(compute)
    keys = k.cumsum(-2) if causal else k.sum(-2, keepdim=True)
    if k_sum is not None:
        keys = keys + k_sum.to(compute)[..., None, :]
    return torch.linalg.vecdot(q, keys)


class FrameCarry(NamedTuple):
    """How a causal numerator reads features given frame by frame (``lrpe.LRPE.frame_pair``).

    An LRPE is ``Lambda^s`` with ``Lambda^(a + b) = Lambda^a Lambda^b``, so features ``Lambda^(s - b) x_s``
    relative to the first row b of their frame of ``rows`` tokens give every score inside a frame unchanged,
    and a state summed in the coordinates of frame b reaches those of frame b + rows through
    ``Lambda^(-rows)``. Here that map is a permutation of the state's Dk rows, ``S'[j] = S[index[j]]``: the
    features then need one position table of ``rows`` rows instead of one of N (docs/fairness.md).

    rows: the frame length, a multiple of the chunk size; index: (Dk,) shared or (H, Dk) per head, long;
    inverse: the inverse permutation of index (the backward's map).
    """

    rows: int
    index: Tensor
    inverse: Tensor


class _RowLoopCumsum(torch.autograd.Function):
    """In-place inclusive prefix sum over dim 1 of x (R, n, F), as n - 1 vectorised row additions; with a
    ``carry``, x's rows are (Dk, Dv) states and the sum entering every ``every``-th row is first permuted
    along Dk (``FrameCarry``; the index as ``_carried`` takes it), and ``back`` is the inverse permutation in
    the same form, for the backward.

    torch's CPU cumsum over a dimension that is not the innermost is not vectorised along the inner one and
    measured about 12 ns per element here (216 ms for the 64k-token states); adding whole rows of F values
    costs about one pass over memory instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, every: int = 0, carry: Tensor | None = None, back: Tensor | None = None
                ) -> Tensor:
        for i in range(1, x.shape[1]):
            if carry is not None and i % every == 0:
                x[:, i].add_(_carried(x, i - 1, carry))
            else:
                x[:, i].add_(x[:, i - 1])  # add_ on the view: no write-back copy as with +=
        ctx.mark_dirty(x)
        ctx.every, ctx.back = every, back
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        # The adjoint of an inclusive prefix sum is the reversed (suffix) sum; that of a carry, its inverse.
        grad = grad.clone(memory_format=torch.contiguous_format)
        for i in range(grad.shape[1] - 1, 0, -1):
            if ctx.back is not None and i % ctx.every == 0:
                grad[:, i - 1].add_(_carried(grad, i, ctx.back))
            else:
                grad[:, i - 1].add_(grad[:, i])
        return grad, None, None, None


def _carried(x: Tensor, i: int, carry: Tensor) -> Tensor:
    """Row i of x (R, n, Dk Dv), each of its R states permuted along Dk, as one ``index_select`` of whole Dv
    rows of x's flattened (R n Dk, Dv) stack: ``carry`` (R Dk,) holds ``r n Dk + index[r, j]`` for row i = 0.
    Returns (R, Dk Dv)."""
    r, _, f = x.shape
    dk = carry.numel() // r
    return x.view(-1, f // dk).index_select(0, carry + i * dk).view(r, f)


def _prefix_sum_(x: Tensor, frames: tuple[int, Tensor, Tensor] | None = None) -> Tensor:
    """Inclusive prefix sum over dim 1, in place. CUDA's cumsum is fast; the CPU one is not (see above).
    ``frames``: (chunks per frame, carry, inverse carry) as ``_RowLoopCumsum`` takes them (row loop on any
    device)."""
    if frames is not None:
        return _RowLoopCumsum.apply(x, *frames)
    return _RowLoopCumsum.apply(x) if x.device.type == "cpu" else x.cumsum_(1)


def _chunked_causal(q: Tensor, k: Tensor, v: Tensor, chunk: int, kv0: Tensor | None,
                    frames: FrameCarry | None = None) -> Tensor:
    """Causal numerator chunk by chunk, in the compute dtype; kv0 (B, H, Dk, Dv) is the prefix state or None;
    ``frames``: q and k are given frame by frame (``FrameCarry``), and the prefix of states is carried from
    frame to frame.

    Per chunk c: ``O_c = Q_c S_c^incl - strict_upper(Q_c K_c^T) V_c`` where S_c^incl is the inclusive prefix
    of the per-chunk states ``K_c^T V_c``. This equals docs/math.md's ``Q_c S_c^excl + tril(Q_c K_c^T) V_c``
    because ``Q_c (K_c^T V_c) = (Q_c K_c^T) V_c``; the inclusive prefix is used where it is built, with no
    shifted copy of the (N/C, Dk, Dv) states, and both products accumulate into one output buffer. The price
    is a subtraction of at most C terms per row, i.e. an error of a few C ulp of the chunk's partial sums
    (float32 at worst, since half inputs are computed in float32).
    """
    b, h, n, dk = q.shape
    dv = v.shape[-1]
    pad = -n % chunk
    if pad:
        # Zero rows: zero keys and values add nothing to any state; the padded queries are cut off below.
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    nc = (n + pad) // chunk
    qc, kc, vc = (t.reshape(b * h * nc, chunk, t.shape[-1]) for t in (q, k, v))
    carries = None if frames is None else (frames.rows // chunk, *(
        _carry_rows(index, b, h, nc) for index in (frames.index, frames.inverse)))
    # matmul keeps its inputs, not its output, for backward, so updating its output in place is safe.
    states = _prefix_sum_((kc.transpose(-1, -2) @ vc).view(b * h, nc, dk * dv), carries)
    del carries  # its indices, not held through the products below (a backward keeps what it needs)
    if kv0 is not None:
        states = states + kv0.reshape(b * h, 1, dk * dv)
    scores = (qc @ kc.transpose(-1, -2)).triu_(1)
    out = (qc @ states.view(b * h * nc, dk, dv)).baddbmm_(scores, vc, alpha=-1.0)
    out = out.view(b, h, nc * chunk, dv)
    return out[:, :, :n] if pad else out


def _carry_rows(index: Tensor, b: int, h: int, nc: int) -> Tensor:
    """A FrameCarry index (Dk,) or (H, Dk) as ``_carried`` takes it for states (B H, nc, Dk Dv):
    ``r nc Dk + index[r, j]`` for every state r = (batch, head), flattened to (B H Dk,)."""
    dk = index.shape[-1]
    per_row = index.expand(b, h, dk).reshape(b * h, dk)
    return (per_row + torch.arange(b * h, device=index.device)[:, None] * (nc * dk)).reshape(-1)


def _quadratic(q: Tensor, k: Tensor, v: Tensor, causal: bool, kv0: Tensor | None) -> Tensor:
    """Oracle numerator with explicit (B, H, N, N) scores."""
    scores = q @ k.transpose(-1, -2)
    if causal:
        n = q.shape[-2]
        scores = scores * torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    num = scores @ v
    return num if kv0 is None else num + q @ kv0


def _quadratic_den(qd: Tensor, kd: Tensor, causal: bool, k_sum0: Tensor | None) -> Tensor:
    """Oracle denominator: row sums of the explicit (masked) scores of the denominator features."""
    scores = qd @ kd.transpose(-1, -2)
    if causal:
        n = qd.shape[-2]
        scores = scores * torch.ones(n, n, dtype=torch.bool, device=qd.device).tril()
    den = scores.sum(-1)
    return den if k_sum0 is None else den + torch.linalg.vecdot(qd, k_sum0[..., None, :])


def _recurrent(q: Tensor, k: Tensor, v: Tensor, qd: Tensor, kd: Tensor, causal: bool,
               state: LinearAttentionState | None) -> tuple[Tensor, Tensor]:
    """Token loop over the running state: (numerator, denominator). Non-causal reads the final state."""
    b, h, n, dk = q.shape
    kv = q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state.kv
    k_sum = qd.new_zeros(b, h, qd.shape[-1]) if state is None else state.k_sum
    nums, dens = [], []
    for s in range(n):
        kv = kv + k[:, :, s, :, None] * v[:, :, s, None, :]
        k_sum = k_sum + kd[:, :, s]
        if causal:
            nums.append((q[:, :, s, None, :] @ kv)[:, :, 0])
            dens.append(torch.linalg.vecdot(qd[:, :, s], k_sum))
    if not causal:
        return q @ kv, torch.linalg.vecdot(qd, k_sum[:, :, None, :])
    return torch.stack(nums, dim=2), torch.stack(dens, dim=2)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, normalize: bool = False,
                     eps: float = 1e-6, chunk_size: int = 64, impl: str = "auto",
                     denominator_features: tuple[Tensor, Tensor] | None = None,
                     initial_state: LinearAttentionState | None = None,
                     return_state: bool = False, frames: FrameCarry | None = None,
                     ) -> Tensor | tuple[Tensor, LinearAttentionState]:
    """Linear attention on feature-mapped q, k (no feature map is applied here).

    Args:
        q, k: (B, H, N, Dk); v: (B, H, N, Dv); floating, one dtype and device, N >= 1.
        causal: mask key t > s out of row s.
        normalize: divide row s by ``sum_{t<=s} qd_s . kd_t + eps`` (all t when not causal), where (qd, kd)
            are ``denominator_features`` or (q, k).
        eps: added to the denominator, explicit so that a near-zero denominator stays visible.
        chunk_size: C of the chunked form.
        impl: "quadratic" (oracle), "recurrent" (token loop), "chunked", "auto" (chunked until a GPU run has
            checked the fused kernels; module docstring) or "triton" (the fused kernels, or ValueError).
        denominator_features: (qd, kd), each (B, H, N, Dd): the features the denominator (and a state's
            k_sum) uses instead of q, k, e.g. features without positional transform (RoFormer Eq. 19).
        initial_state: causal only: the state of the tokens before this block (prefill, then decode).
        return_state: causal only: also return the state after the last token.
        frames: q and k are given frame by frame (``FrameCarry``, from ``lrpe.LRPE.frame_pair``): causal,
            impl "chunked" or "auto" (then the torch chunked form), no state, and with ``normalize`` the
            ``denominator_features`` (q and k are not global features).

    Returns:
        (B, H, N, Dv) in v's dtype; with return_state, ``(out, LinearAttentionState)``.
    """
    check_qkv(q, k, v)
    _check_options(impl, chunk_size, eps)
    if not causal and (initial_state is not None or return_state):
        raise ValueError("initial_state and return_state need causal=True (a state is a causal prefix)")
    qd, kd = (q, k) if denominator_features is None else denominator_features
    _check_denominator_features(qd, kd, q)
    if initial_state is not None:
        _check_state(initial_state, q, v, kd)
    if frames is not None:
        _check_frames(frames, q, impl, chunk_size, causal=causal, normalize=normalize,
                      has_denominator=denominator_features is not None,
                      has_state=initial_state is not None or return_state)
        impl = "chunked"
    compute = angle_dtype(q.dtype)
    out_dtype = v.dtype
    if impl in ("auto", *FORCED_FUSED):
        from lrpe.kernels.dispatch import fused_numerator

        num = fused_numerator(q, k, v, causal=causal, chunk_size=chunk_size, forced=impl != "auto",
                              has_state=initial_state is not None or return_state)
        if num is not None:
            if normalize:
                den = normalizer(qd.to(compute), kd.to(compute), causal=causal)
                num = num.to(compute) / (den + eps)[..., None]
            return num.to(out_dtype)
    q, k, v = (t.to(compute) for t in (q, k, v))
    qd, kd = (q, k) if denominator_features is None else (qd.to(compute), kd.to(compute))
    state = None if initial_state is None else LinearAttentionState(*(t.to(compute) for t in initial_state))
    kv0, k_sum0 = (None, None) if state is None else state
    if impl == "recurrent":
        num, den = _recurrent(q, k, v, qd, kd, causal, state)
    elif impl == "quadratic":
        num = _quadratic(q, k, v, causal, kv0)
        den = _quadratic_den(qd, kd, causal, k_sum0) if normalize else None
    else:
        num = (_chunked_causal(q, k, v, chunk_size, kv0, frames) if causal
               else q @ (k.transpose(-1, -2) @ v))
        den = normalizer(qd, kd, causal=causal, k_sum=k_sum0) if normalize else None
    if normalize:
        num = num / (den + eps)[..., None]
    out = num.to(out_dtype)
    if not return_state:
        return out
    kv, k_sum = k.transpose(-1, -2) @ v, kd.sum(-2)
    if state is not None:
        kv, k_sum = kv + kv0, k_sum + k_sum0
    return out, LinearAttentionState(kv, k_sum)


def linear_attention_step(q: Tensor, k: Tensor, v: Tensor, state: LinearAttentionState | None = None, *,
                          normalize: bool = False, eps: float = 1e-6,
                          denominator_features: tuple[Tensor, Tensor] | None = None,
                          ) -> tuple[Tensor, LinearAttentionState]:
    """One causal decode step: add (k, v) to the state, then read it with q.

    q, k: (B, H, Dk); v: (B, H, Dv); state None (nothing seen yet) or a LinearAttentionState;
    denominator_features: optional (qd, kd), each (B, H, Dd), as in ``linear_attention``. Returns
    (out (B, H, Dv) in v's dtype, the new state in the compute dtype). A loop over the tokens of a sequence
    equals ``linear_attention(..., causal=True)`` on it.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3 or not t.is_floating_point():
            raise ValueError(f"{name} must be floating with shape (B, H, D), got {t.dtype} {tuple(t.shape)}")
    if q.shape != k.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"q, k must be (B, H, Dk) and v (B, H, Dv) with one (B, H), got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    qd, kd = (q, k) if denominator_features is None else denominator_features
    _check_denominator_features(qd, kd, q)
    compute = angle_dtype(q.dtype)
    qc, kc, vc, qd, kd = (t.to(compute) for t in (q, k, v, qd, kd))
    kv = kc[..., :, None] * vc[..., None, :]
    k_sum = kd
    if state is not None:
        _check_state(state, q, v, kd)
        kv, k_sum = kv + state.kv.to(compute), k_sum + state.k_sum.to(compute)
    out = (qc[..., None, :] @ kv)[..., 0, :]
    if normalize:
        out = out / (torch.linalg.vecdot(qd, k_sum) + eps)[..., None]
    return out.to(v.dtype), LinearAttentionState(kv, k_sum)
