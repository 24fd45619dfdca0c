"""The flash-attention packages' own kernels: FlashAttention-2, -3 (Hopper) and -4 (CuTe DSL).

Each exposes ``flash_attn_func(q, k, v, softmax_scale=None, causal=False, ...)`` on the (B, N, H, D) layout,
CUDA only; the core transposes (a view, no copy) and back. FA3 and FA4 return (out, lse) in some versions:
the output is the first element then. torch 2.11+ also has FA3/FA4 hooks
(``torch.nn.attention.activate_flash_attention_impl``) that route SDPA's flash backend to these same
packages: they make nothing available that the direct call does not, so they are only named in the reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from baselines.flash_common import BackendSpec, FlashCore, cuda_reason, import_module
from baselines.refusal import Refusal

# backend -> (module providing flash_attn_func, what it is, name of torch's hook for it or None)
_PACKAGES: dict[str, tuple[str, str, str | None]] = {
    "flash-attn2": ("flash_attn", "FlashAttention-2, pip flash-attn", None),
    "flash-attn3": ("flash_attn_interface", "FlashAttention-3, flash-attention/hopper", "FA3"),
    "flash-attn4": ("flash_attn.cute", "FlashAttention-4, flash-attention/flash_attn/cute", "FA4"),
}


def _hook_note(hook: str | None) -> str:
    listing = getattr(torch.nn.attention, "list_flash_attention_impls", None)
    if hook is None or listing is None or hook not in listing():
        return ""
    return f"; torch.nn.attention lists the {hook} hook, but activating it imports this same package"


def _load(backend: str) -> tuple[Callable[..., object] | None, str]:
    """(flash_attn_func, '<module> <version>') or (None, why not)."""
    module_name, what, hook = _PACKAGES[backend]
    module, why = import_module(module_name)
    if module is None:
        return None, f"{module_name} ({what}) not importable: {why}{_hook_note(hook)}"
    func = getattr(module, "flash_attn_func", None)
    if func is None:
        # a FlashAttention-4-only install leaves a bare flash_attn namespace without the FA2 function
        return None, f"{module_name} ({what}) has no flash_attn_func"
    version = getattr(module, "__version__", "unknown version")
    return func, f"{module_name} {version}"


class FlashAttnCore(FlashCore):
    """One flash-attention package's ``flash_attn_func``; see :class:`FlashCore`. Raises ImportError when
    the package does not import."""

    def __init__(self, backend: str, *, causal: bool, positional: nn.Module | None) -> None:
        super().__init__(causal=causal, positional=positional)
        self.backend = backend
        func, described = _load(backend)
        if func is None:
            raise ImportError(described)
        self._func = func
        self._described = described

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = self._func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=self.causal)
        if isinstance(out, tuple):
            out = out[0]
        return out.transpose(1, 2)

    @property
    def kernel(self) -> str:
        return f"{self._described} flash_attn_func"


def _requirement(backend: str) -> str | None:
    func, why = _load(backend)
    return why if func is None else cuda_reason()


# FlashAttention-2/3 check inputs in C++ (csrc/flash_attn/flash_api.cpp, hopper/flash_api.cpp) with
# TORCH_CHECK, a RuntimeError: "FlashAttention only supports Ampere GPUs or newer.", "... only support fp16 and
# bf16 data type", "... only supports head dimension at most 256", "bfloat16 is only supported on Ampere GPUs
# or newer". FlashAttention-4 (flash_attn/cute/interface.py) checks with asserts ("inputs must be float16 or
# bfloat16", "... only supports SM90/SM100") and NotImplementedError for what it has no kernel for.
_TORCH_CHECK = Refusal(RuntimeError, r"(?i)only supports?\b|is only supported|not supported|at most \d+")
_REFUSALS: dict[str, tuple[Refusal, ...]] = {
    "flash-attn2": (_TORCH_CHECK,),
    "flash-attn3": (_TORCH_CHECK,),
    "flash-attn4": (_TORCH_CHECK, Refusal(AssertionError, r"(?i)\bmust\b|only supports?\b|not supported"),
                    Refusal(NotImplementedError)),
}

SPECS: tuple[BackendSpec, ...] = tuple(
    BackendSpec(name, ("cuda",), partial(_requirement, name), partial(FlashAttnCore, name),
                refusals=_REFUSALS[name])
    for name in _PACKAGES
)
