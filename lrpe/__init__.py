"""LRPE: linear attention with Linearized Relative Positional Encoding (arXiv 2307.09270), in PyTorch.

- ``LRPE``: the unitary / orthogonal / permutation transforms ``Lambda^s P`` of feature-mapped q, k.
- ``linear_attention`` (quadratic oracle, recurrent, chunked), ``linear_attention_step`` (decoding),
  ``normalizer`` (the O(N D) denominator).
- ``LinearAttentionCore``: the suite's attention-core protocol (feature map, positional transform, attention).
- ``LinearAttention``: a full layer (projections, heads, output norm) for models.

Formulas and oracles: docs/math.md sections 1 and 2.
"""

from lrpe.attention import LinearAttentionState, linear_attention, linear_attention_step, normalizer
from lrpe.core import LinearAttentionCore
from lrpe.encoding import LRPE
from lrpe.feature_maps import FEATURE_MAPS, get_feature_map
from lrpe.layer import LinearAttention
from lrpe.pmatrix import P_CHOICES

__all__ = [
    "FEATURE_MAPS",
    "LRPE",
    "P_CHOICES",
    "LinearAttention",
    "LinearAttentionCore",
    "LinearAttentionState",
    "get_feature_map",
    "linear_attention",
    "linear_attention_step",
    "normalizer",
]
