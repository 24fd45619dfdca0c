"""Choosing the fused Triton kernels for a ``LinearAttentionCore`` or ``lrpe.linear_attention`` call (impl
"auto" or "triton").

"auto" keeps the torch path (the oracle's chunked form) on CUDA until a GPU run has checked the kernels
(``AUTO_TAKES_FUSED``); once one has, it takes the kernels for CUDA tensors when Triton imports and the call is
one they compute (below), and otherwise falls back to the torch path. "triton" is forced: it runs the kernels
or raises ValueError with the reason, never falls back. Forced calls on CPU tensors run only when the kernels were
defined under the Triton interpreter (TRITON_INTERPRET=1 when ``lrpe.kernels.function`` was imported), which
is how the CPU tests use them.

The kernels compute: feature map 1 + elu, no qk_transform, positional "none" or an LRPE (theta not trained
through this call; a P other than identity runs in torch before the kernels, see
``fused_lrpe_linear_attention``), normalize=False, no state in or out, offset >= 0, one dtype of
bfloat16/float16/float32 for q, k, v on an sm_80+ GPU (float32 there only at D = DV = 64 and positional "none",
orthogonal or permutation: ``float32_reason`` below), D and DV in (64, 128), chunk_size 64 (16 and 32 too
under the interpreter).

``lrpe.linear_attention`` gets already feature-mapped q, k: its numerator runs the kernels with feature map
"identity" and no positional transform, under the same dtype, shape, chunk and no-state conditions; its
denominator (normalize=True) stays in torch. A core that the kernels refuse (say normalize=True, or a learned
theta) therefore still reaches them under "auto" through ``linear_attention`` on its transformed features.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch
from torch import Tensor, nn

from lrpe.attention import FORCED_FUSED
from lrpe.encoding import LRPE
from lrpe.feature_maps import elu1

FUSED_IMPLS: tuple[str, ...] = FORCED_FUSED
AUTO_TAKES_FUSED = False
"""Whether impl="auto" takes the fused kernels on CUDA. False until a GPU run has checked them: values and
gradients against the float64 oracle (tests/test_triton_kernels.py's CUDA tests, ``scripts/gpu_session.sh
selfcheck``) with the result recorded in docs/kernels.md. Until then "auto" keeps the torch chunked path on a
GPU and impl="triton" opts in. The kernels have only run under the Triton interpreter on CPU and been compiled
ahead of time for sm_90/sm_80."""
AUTO_REASON = ("impl='auto' keeps the torch path on CUDA: the fused kernels have not been checked on a GPU yet "
               "(lrpe.kernels.dispatch.AUTO_TAKES_FUSED; impl='triton' opts in)")
FUSED_HEAD_DIMS: tuple[int, ...] = (64, 128)
"""D and DV the kernels take: the ones compile_check covers (D = 16 orthogonal would make 8-wide dots)."""
FLOAT32_KINDS: tuple[str, ...] = ("none", "orthogonal", "permutation")
FLOAT32_HEAD_DIMS: tuple[int, ...] = (64,)
"""float32 inputs on a GPU: these positional kinds at D = DV in FLOAT32_HEAD_DIMS. Their 3xTF32 dots hold TF32 hi
and lo copies of every float32 operand tile; at C = 32 (16 for orthogonal on sm_90) these shapes compile without
spills for sm_80 and sm_90, while unitary (two D-wide tiles) and D = 128 spill in the causal pass-2 kernels at
every block tried, C = 16 included (docs/kernels.md, "float32 inputs")."""


def float32_reason(kind: str, head_dim: int, value_dim: int) -> str | None:
    """Why float32 inputs cannot run the kernels on a GPU for positional kind ``kind`` ("none" or an LRPE kind)
    and D, DV, or None when they can."""
    if kind not in FLOAT32_KINDS:
        return f"float32 on a GPU takes LRPE kinds {list(FLOAT32_KINDS)} (others spill registers), got {kind}"
    if head_dim not in FLOAT32_HEAD_DIMS or value_dim not in FLOAT32_HEAD_DIMS:
        return (f"float32 on a GPU takes D, DV in {FLOAT32_HEAD_DIMS} (wider ones spill registers), "
                f"got D={head_dim}, DV={value_dim}")
    return None


def triton_reason() -> str | None:
    """None when Triton can be imported, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


def fused_availability() -> str | None:
    """None when the fused kernels can run here (Triton and a CUDA GPU), else why not (a registry probe)."""
    reason = triton_reason()
    if reason:
        return reason
    if not torch.cuda.is_available():
        return "the fused Triton kernels need a CUDA GPU (on CPU only the interpreter runs them, for tests)"
    return None


def _interpreting() -> bool:
    """Whether the kernels are (or, not yet imported, will be) defined under the Triton interpreter."""
    function = sys.modules.get("lrpe.kernels.function")
    if function is not None:
        return function.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _placement_reason(q: Tensor, *, forced: bool) -> str | None:
    """Why the kernels cannot run on q's device here (CUDA, or CPU under a forced interpreted call), or None;
    an unforced ("auto") call on CUDA is refused while ``AUTO_TAKES_FUSED`` is False."""
    if q.device.type != "cuda" and not (forced and _interpreting() and q.device.type == "cpu"):
        return f"the fused kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU), got device {q.device}"
    if not forced and not AUTO_TAKES_FUSED:
        return AUTO_REASON
    return triton_reason()


def _shape_reason(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, kind: str = "none") -> str | None:
    from lrpe.kernels.function import check_supported
    from lrpe.kernels.tables import KIND_CODES

    try:
        check_supported(q, k, v, chunk_size, KIND_CODES[kind])
    except ValueError as exc:
        return str(exc)
    return None


def unsupported_reason(core: nn.Module, q: Tensor, k: Tensor, v: Tensor, offset: int, *, has_state: bool,
                       forced: bool) -> str | None:
    """Why the fused kernels cannot compute this call of ``core`` (a LinearAttentionCore), or None."""
    reason = _placement_reason(q, forced=forced)
    if reason:
        return reason
    if core.feature_map is not elu1:
        return f"the fused kernels apply 1 + elu; feature map {getattr(core.feature_map, '__name__', '?')!r}"
    if core.qk_transform is not None:
        return "the fused kernels take no qk_transform (e.g. SPE)"
    if core.normalize:
        return "the fused kernels compute the unnormalised numerator; normalize=True is not fused"
    if has_state:
        return "prefill/step with a state are not fused"
    pos = core.positional
    if pos is not None and not isinstance(pos, LRPE):
        return f"the fused kernels take an LRPE or no positional module, got {type(pos).__name__}"
    theta = getattr(pos, "theta", None)  # the permutation kind has none
    if isinstance(theta, nn.Parameter) and theta.requires_grad and torch.is_grad_enabled():
        return "a learned theta needs its gradient, which the fused kernels do not compute"
    if offset < 0:
        return f"the fused kernels take offset >= 0, got {offset}"
    return _shape_reason(q, k, v, core.chunk_size, "none" if pos is None else pos.kind)


def fused_numerator(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, chunk_size: int, has_state: bool,
                    forced: bool) -> Tensor | None:
    """``lrpe.linear_attention``'s numerator ``sum_t (q_s . k_t) v_t`` on feature-mapped q, k by the fused
    kernels (feature map "identity", no positional transform), or None when they cannot compute it and the
    call is not forced; raises ValueError with the reason when forced (impl="triton")."""
    reason = _placement_reason(q, forced=forced)
    if reason is None and has_state:
        reason = "initial_state / return_state are not fused"
    if reason is None:
        reason = _shape_reason(q, k, v, chunk_size)
    if reason is not None:
        if forced:
            raise ValueError(f"impl='triton': {reason}")
        return None
    from lrpe.kernels.function import fused_lrpe_linear_attention

    return fused_lrpe_linear_attention(q, k, v, None, causal=causal, chunk_size=chunk_size, feature_map="identity")


def fused_attention(core: nn.Module, q: Tensor, k: Tensor, v: Tensor, offset: int, *, has_state: bool
                    ) -> Tensor | None:
    """The fused kernels' output for this call, or None when impl is "auto" and they cannot compute it.

    Raises ValueError with the reason when impl is "triton" (forced) and they cannot."""
    forced = core.impl in FUSED_IMPLS
    reason = unsupported_reason(core, q, k, v, offset, has_state=has_state, forced=forced)
    if reason is not None:
        if forced:
            raise ValueError(f"impl='triton': {reason}")
        return None
    from lrpe.kernels.function import fused_lrpe_linear_attention

    return fused_lrpe_linear_attention(q, k, v, core.positional, causal=core.causal, offset=offset,
                                       chunk_size=core.chunk_size)
