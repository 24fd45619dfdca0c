"""Linear-attention core: the attention-core module protocol of the suite, with optional LRPE/RoPE/SPE.

Pipeline on already-projected q, k (B, H, N, D) and v (B, H, N, Dv):

    qk_transform (e.g. SPE; may change the width)  ->  feature map phi  ->  positional transform
    (LRPE or any module, e.g. RoPE)  ->  linear attention numerator  [ / denominator ]

An LRPE-permutation before the causal torch chunked numerator on a CPU, with no state, hands the numerator
frame-local features and the carry between frames instead (``LRPE.frame_pair``, docs/math.md section 2):
the same numerator at a fraction of the gathering.

With ``normalize=True`` the denominator is ``sum_{t<=s} phi(q_s) . phi(k_t) + eps`` computed on the
feature-mapped but positionally *untransformed* q, k (RoFormer Eq. 19): transformed scores can be negative,
so their sum can approach zero. The default, ``normalize=False``, is the LRPE paper's language model: no
denominator, and a normalisation of the output afterwards (``lrpe.layer.LinearAttention`` does that).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lrpe.attention import IMPLS, FrameCarry, LinearAttentionState, linear_attention, linear_attention_step
from lrpe.encoding import FRAME_ROWS, KINDS, LRPE
from lrpe.feature_maps import FeatureMap, get_feature_map
from lrpe.kernels.dispatch import FUSED_IMPLS, fused_attention

POSITIONAL_CHOICES: tuple[str, ...] = ("none", *KINDS)


def make_positional(positional: str | nn.Module, head_dim: int, *, p: str = "identity", theta: str = "fixed",
                    num_heads: int | None = None, seed: int = 0) -> nn.Module | None:
    """None for "none", an LRPE for a kind name, or the given module (forward(x, offset) -> x')."""
    if isinstance(positional, nn.Module):
        return positional
    if positional == "none":
        return None
    if positional in KINDS:
        return LRPE(positional, head_dim, p=p, theta=theta, num_heads=num_heads, seed=seed)
    allowed = list(POSITIONAL_CHOICES)
    raise ValueError(f"unknown positional {positional!r}; allowed: {allowed} or an nn.Module")


def encode_pair(positional: nn.Module, q: Tensor, k: Tensor, offset: int = 0, *, inplace: bool = False
                ) -> tuple[Tensor, Tensor]:
    """q, k (B, H, N, D) at positions offset + arange(N) -> (positional(q), positional(k)).

    Through ``forward_pair`` when the module has one (LRPE, RoPE: the phasors computed once for both, and
    ``inplace`` lets it overwrite q and k, which the caller then gives up), else two ``forward`` calls.
    Every attention core (linear, softmax, flash) calls its positional module through this, so no encoding
    gets engineering in one family that it lacks in another (docs/fairness.md).
    """
    if hasattr(positional, "forward_pair"):
        return positional.forward_pair(q, k, offset, inplace=inplace)
    return positional(q, offset), positional(k, offset)


class LinearAttentionCore(nn.Module):
    """Linear attention with a feature map and an optional positional transform.

    Args:
        head_dim: width of the features the positional transform sees (q's width, or qk_transform's output
            width when one is given); used to build an LRPE.
        num_heads: None shares LRPE parameters across heads; an int gives each head its own.
        feature_map: a name of ``lrpe.FEATURE_MAPS`` ("elu1" default) or a callable.
        positional: "none", "unitary", "orthogonal", "permutation" (an LRPE built with p, theta, seed,
            num_heads) or a module with ``forward(x, offset) -> x'`` (e.g. RoPE); one that also has
            ``forward_pair(q, k, offset, *, inplace) -> (q', k')`` (LRPE, RoPE) is called through it.
        p, theta: the LRPE's P matrix and theta mode (see ``lrpe.LRPE``).
        qk_transform: optional module with ``forward(q, k, offset) -> (q', k')`` applied before the feature
            map (e.g. SPE).
        normalize: divide by the denominator of the untransformed features plus ``eps`` (module docstring).
        causal, impl, chunk_size: as in ``lrpe.linear_attention``: "triton" forces the fused kernels of
            ``lrpe.kernels`` (feature map and LRPE inside them); "auto" takes them on CUDA only when
            ``lrpe.kernels.dispatch.AUTO_TAKES_FUSED`` is True (now False: it keeps the torch chunked path
            until a GPU run has checked the kernels), and otherwise the numerator's own "auto" choice;
            ``impl`` may also be an external kernel, a callable ``(q, k, v, *, causal) -> out`` on the
            transformed features computing the unnormalised numerator (e.g. flash-linear-attention's; the
            suite registers it as a backend).
        seed: seeds the LRPE's random parts (Householder v, permutation).

    forward(q, k, v, offset=0): q, k (B, H, N, D), v (B, H, N, Dv) -> (B, H, N, Dv) in v's dtype; token n is
    at position offset + n.
    """

    def __init__(self, head_dim: int, *, num_heads: int | None = None, feature_map: str | FeatureMap = "elu1",
                 positional: str | nn.Module = "none", p: str = "identity", theta: str = "fixed",
                 qk_transform: nn.Module | None = None, normalize: bool = False, eps: float = 1e-6,
                 causal: bool = True, impl: str | Callable[..., Tensor] = "chunked", chunk_size: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        if not callable(impl) and impl not in (*IMPLS, *FUSED_IMPLS):
            raise ValueError(f"unknown impl {impl!r}; allowed: {[*IMPLS, *FUSED_IMPLS]} or a kernel callable")
        if callable(impl) and normalize:
            raise ValueError("an external kernel impl computes the unnormalised numerator; use normalize=False")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.feature_map = get_feature_map(feature_map)
        self.positional = make_positional(positional, head_dim, p=p, theta=theta, num_heads=num_heads,
                                          seed=seed)
        self.qk_transform = qk_transform
        self.normalize, self.eps, self.causal = normalize, eps, causal
        self.impl, self.chunk_size = impl, chunk_size

    def extra_repr(self) -> str:
        name = getattr(self.feature_map, "__name__", repr(self.feature_map))
        impl = getattr(self.impl, "__name__", self.impl)
        return (f"feature_map={name}, normalize={self.normalize}, eps={self.eps}, causal={self.causal}, "
                f"impl={impl!r}, chunk_size={self.chunk_size}")

    def _features(self, q: Tensor, k: Tensor, offset: int, keep_untransformed: bool = True,
                  frames: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, FrameCarry | None]:
        """(phi(q), phi(k)) before and after the positional transform, each (B, H, N, width), and the
        ``FrameCarry`` when ``frames`` asked the LRPE for frame-local features (``LRPE.frame_pair``).

        Without ``keep_untransformed`` the first two are not used afterwards, so an LRPE may transform the
        feature maps in place when they are fresh temporaries outside autograd (inference)."""
        if self.qk_transform is not None:
            q, k = self.qk_transform(q, k, offset)
        qf, kf = self.feature_map(q), self.feature_map(k)
        if self.positional is None:
            return qf, kf, qf, kf, None
        if frames:
            return qf, kf, *self.positional.frame_pair(qf, kf, self._frame_rows())
        # LRPE and RoPE: Lambda^s computed once for q and k, and the same in-place licence for both, so that
        # neither encoding gets engineering the other lacks (docs/fairness.md).
        inplace = (not keep_untransformed and _fresh(qf, q) and _fresh(kf, k)
                   and not (torch.is_grad_enabled() and (qf.requires_grad or kf.requires_grad)))
        qp, kp = encode_pair(self.positional, qf, kf, offset, inplace=inplace)
        return qf, kf, qp, kp, None

    def _frame_rows(self) -> int:
        """The frame length: ``lrpe.encoding.FRAME_ROWS`` rounded to a multiple of the chunk size."""
        return self.chunk_size * max(1, FRAME_ROWS // self.chunk_size)

    def _takes_frames(self, q: Tensor, has_state: bool) -> bool:
        """Whether the numerator reads frame-local features (``lrpe.attention.FrameCarry``): an LRPE-permutation
        before the torch chunked causal numerator, stateless, on a CPU. Why a CPU: there the global features'
        position-dependent gather is the cost (docs/fairness.md); a GPU gathers at copy speed and keeps
        CUDA's cumsum, which the carries between frames would replace by a loop of small kernels."""
        return (isinstance(self.positional, LRPE) and self.positional.kind == "permutation"
                and self.impl in ("chunked", "auto") and self.causal and not has_state
                and q.device.type == "cpu")

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, offset: int, state: LinearAttentionState | None,
                return_state: bool) -> Tensor | tuple[Tensor, LinearAttentionState]:
        # The untransformed features feed the denominator and a state's k_sum; otherwise they are not needed.
        need_untransformed = self.normalize or return_state or state is not None
        if isinstance(self.impl, str) and self.impl in ("auto", *FUSED_IMPLS):
            # The fused Triton kernels (lrpe.kernels.dispatch): "auto" falls back to the torch path below.
            out = fused_attention(self, q, k, v, offset, has_state=state is not None or return_state)
            if out is not None:
                return out
        frames = self._takes_frames(q, state is not None or return_state)
        qf, kf, qp, kp, carry = self._features(q, k, offset, keep_untransformed=need_untransformed,
                                               frames=frames)
        if callable(self.impl):
            if state is not None or return_state:
                raise ValueError("prefill/step with state need a built-in impl, not an external kernel")
            return self.impl(qp, kp, v, causal=self.causal)
        den = (qf, kf) if need_untransformed else None
        del qf, kf  # not held through the numerator unless den holds them (frame-local features are new)
        return linear_attention(
            qp, kp, v, causal=self.causal, normalize=self.normalize, eps=self.eps, chunk_size=self.chunk_size,
            impl=self.impl, denominator_features=den, initial_state=state, return_state=return_state,
            frames=carry,
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, offset: int = 0) -> Tensor:
        return self._attend(q, k, v, offset, None, False)

    def prefill(self, q: Tensor, k: Tensor, v: Tensor, state: LinearAttentionState | None = None,
                offset: int = 0) -> tuple[Tensor, LinearAttentionState]:
        """Causal forward over a block that also returns the state after it (then continue with ``step``).

        ``state`` is the state of the tokens before this block (whose first token is at ``offset``); the
        state's k_sum sums the untransformed phi(k), which the denominator uses.
        """
        return self._attend(q, k, v, offset, state, True)

    def step(self, q: Tensor, k: Tensor, v: Tensor, state: LinearAttentionState | None = None,
             offset: int = 0) -> tuple[Tensor, LinearAttentionState]:
        """One decode step: q, k (B, H, D), v (B, H, Dv) of the token at position ``offset``.

        Returns (out (B, H, Dv) in v's dtype, new state). Looping over tokens with offset = 0, 1, 2, ...
        equals ``forward`` over the whole sequence (causal).
        """
        if not self.causal:
            raise ValueError("step decodes causally; this core has causal=False")
        qf, kf, qp, kp, _ = self._features(q[:, :, None], k[:, :, None], offset)
        return linear_attention_step(
            qp[:, :, 0], kp[:, :, 0], v, state, normalize=self.normalize, eps=self.eps,
            denominator_features=(qf[:, :, 0], kf[:, :, 0]),
        )


def _fresh(features: Tensor, source: Tensor) -> bool:
    """Whether the feature map made a new tensor (identity returns its input: that one is the caller's)."""
    return features.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()
