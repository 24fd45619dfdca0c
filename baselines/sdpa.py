"""PyTorch ``scaled_dot_product_attention`` with one kernel forced: flash, memory-efficient, cuDNN or math.

Forcing is ``torch.nn.attention.sdpa_kernel([that backend])``: with the others switched off, SDPA either runs
that kernel or raises ("No available kernel"), warning each check that failed; it never falls back.
On CPU torch has a flash kernel (any float dtype, any head dim, D = Dv) and the math kernel; the
memory-efficient and cuDNN kernels exist for CUDA only. On CUDA, ``torch.nn.attention.
activate_flash_attention_impl("FA3" / "FA4")`` swaps the kernel behind the flash backend; :attr:`kernel`
names the one in use.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from baselines.flash_common import BackendSpec, FlashCore, cuda_reason
from baselines.refusal import Refusal

_KERNELS: dict[str, SDPBackend] = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
_DEVICES: dict[str, tuple[str, ...]] = {
    "sdpa-flash": ("cpu", "cuda"),
    "sdpa-efficient": ("cuda",),
    "sdpa-cudnn": ("cuda",),
    "sdpa-math": ("cpu", "cuda"),
}


class SDPACore(FlashCore):
    """``F.scaled_dot_product_attention`` under ``sdpa_kernel([one backend])``; see :class:`FlashCore`."""

    def __init__(self, backend: str, *, causal: bool, positional: nn.Module | None) -> None:
        super().__init__(causal=causal, positional=positional)
        self.backend = backend
        self._sdp = _KERNELS[backend]

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with sdpa_kernel([self._sdp]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)

    @property
    def kernel(self) -> str:
        text = f"torch {torch.__version__} SDPA {self._sdp.name}"
        current = getattr(torch.nn.attention, "current_flash_attention_impl", None)
        if self._sdp == SDPBackend.FLASH_ATTENTION and current is not None:
            text += f" (CUDA flash impl: {current() or 'built-in FA2'})"
        return text


def _requirement(backend: str) -> str | None:
    if "cpu" in _DEVICES[backend]:
        return None
    missing = cuda_reason()
    if missing is None and backend == "sdpa-cudnn" and not torch.backends.cudnn.is_available():
        return "needs cuDNN: torch.backends.cudnn.is_available() is False"
    return missing


# Forced by sdpa_kernel, SDPA warns each failed check of the kernel's constraints (sdp_utils) and raises
# RuntimeError "No available kernel. Aborting execution."; cuDNN's own heuristics may still refuse a config
# that passed them, as a "cuDNN Frontend error" at the call.
_REFUSALS: dict[str, tuple[Refusal, ...]] = {
    name: (Refusal(RuntimeError, r"No available kernel"),) for name in _KERNELS
}
_REFUSALS["sdpa-cudnn"] += (Refusal(RuntimeError, r"cuDNN Frontend error|No valid execution plans"),)

SPECS: tuple[BackendSpec, ...] = tuple(
    BackendSpec(name, _DEVICES[name], partial(_requirement, name), partial(SDPACore, name),
                refusals=_REFUSALS[name])
    for name in _KERNELS
)
