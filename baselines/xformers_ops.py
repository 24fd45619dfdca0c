"""xformers ``memory_efficient_attention`` with its operator forced, one backend per operator family.

xformers dispatches among its operators unless ``op=(FwOp, BwOp)`` is given; given, it raises (listing the
reasons) when that operator cannot take the input. The families load separately: the CUTLASS and flash
operators live in xformers' compiled extension (which fails to load when the wheel was built for another
torch or CUDA, as seen on the H100), the ``triton_splitk`` one is Triton code and may run where they do not.
``triton_splitk`` is a split-K (decoding-oriented) kernel without a backward operator and without a plain
causal mask; xformers' own reasons say so per config. Layout is (B, N, H, D): the core transposes views.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from baselines.flash_common import BackendSpec, FlashCore, cuda_reason, first_lines, import_module
from baselines.refusal import Refusal, Unsupported

# backend -> module of xformers.ops.fmha holding the operator pair (FwOp, BwOp)
_FAMILIES: dict[str, str] = {
    "xformers-cutlass": "cutlass",
    "xformers-flash": "flash",
    "xformers-flash3": "flash3",
    "xformers-triton": "triton_splitk",
}


def _load(backend: str) -> tuple[tuple[type, type | None] | None, str]:
    """((FwOp, BwOp or None), 'xformers <version> <op name>') or (None, why not)."""
    family = _FAMILIES[backend]
    module, why = import_module(f"xformers.ops.fmha.{family}")
    if module is None:
        return None, f"xformers.ops.fmha.{family} not importable: {why}"
    xformers = import_module("xformers")[0]
    version = getattr(xformers, "__version__", "unknown version")
    fw_op = module.FwOp
    if not fw_op.is_available():
        load_error = getattr(import_module("xformers._cpp_lib")[0], "_cpp_library_load_exception", None)
        detail = f": {first_lines(str(load_error), lines=3)}" if load_error is not None else ""
        return None, f"xformers {version}: operator {fw_op.NAME} is not loaded{detail}"
    return (fw_op, getattr(module, "BwOp", None)), f"xformers {version} {fw_op.NAME}"


class XformersCore(FlashCore):
    """``xformers.ops.memory_efficient_attention`` with one operator family; see :class:`FlashCore`.
    Raises ImportError when the operator does not load."""

    def __init__(self, backend: str, *, causal: bool, positional: nn.Module | None) -> None:
        super().__init__(causal=causal, positional=positional)
        self.backend = backend
        ops, described = _load(backend)
        if ops is None:
            raise ImportError(described)
        from xformers.ops import LowerTriangularMask, memory_efficient_attention

        self._op = ops
        self._described = described
        self._attention = memory_efficient_attention
        self._bias = LowerTriangularMask() if causal else None

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self._op[1] is None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            # without a backward operator of its own, xformers would pick one for the backward
            raise Unsupported(f"{self._described} has no backward operator; {self.backend} is forward-only")
        out = self._attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=self._bias, op=self._op
        )
        return out.transpose(1, 2)

    @property
    def kernel(self) -> str:
        return f"{self._described} memory_efficient_attention"


def _requirement(backend: str) -> str | None:
    ops, why = _load(backend)
    return why if ops is None else cuda_reason()


# Given an operator, memory_efficient_attention checks it against the inputs
# (xformers/ops/fmha/dispatch.py _ensure_op_supports_or_raise) and raises ValueError "Operator
# `memory_efficient_attention` does not support inputs: ... is not supported because: ..."; its dispatcher
# raises NotImplementedError "No operator found for ..." when it has to choose and nothing fits.
_REFUSALS: tuple[Refusal, ...] = (Refusal(ValueError, r"does not support inputs"),
                                  Refusal(NotImplementedError, r"No operator found|not supported"))

SPECS: tuple[BackendSpec, ...] = tuple(
    BackendSpec(name, ("cuda",), partial(_requirement, name), partial(XformersCore, name), refusals=_REFUSALS)
    for name in _FAMILIES
)
