"""Fused Triton kernels for LRPE linear attention (issue 10); see docs/kernels.md.

Import this package only where Triton is wanted: whether its kernels run compiled or in the Triton
interpreter is decided when they are defined, by TRITON_INTERPRET at import time (``lrpe.kernels.dispatch``
imports it lazily for that reason).
"""

from lrpe.kernels.function import FusedLinearAttention, fused_lrpe_linear_attention

__all__ = ["FusedLinearAttention", "fused_lrpe_linear_attention"]
