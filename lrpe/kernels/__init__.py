"""Fused Triton kernels for LRPE linear attention (issue 10); see docs/kernels.md.

Whether the kernels run compiled or in the Triton interpreter is decided when they are defined, i.e. by
TRITON_INTERPRET when ``lrpe.kernels.function`` is first imported. This package therefore imports nothing
of Triton itself: ``lrpe.kernels.dispatch`` (imported by ``lrpe.core``) loads the kernels only on first use,
and ``from lrpe.kernels.function import fused_lrpe_linear_attention`` is the direct entry point.
"""
